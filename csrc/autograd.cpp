// Autograd of every op, compiled and registered for every device: a Python
// autograd kernel costs microseconds per call even where no graph is recorded
// (inference), as much as a depthwise conv of a late ShuffleNet stage.
//
// The kernels work as PyTorch's generated ones for ATen ops do: they record a
// backward node of their own (not a torch::autograd::Function, which torch.func
// refuses) and attach forward-mode tangents, so reverse mode, forward mode,
// torch.func's grad / vjp / jvp and compiled autograd all see these ops as they
// see an ATen op.
//
// In the op families (op_families.h) every derivative calls the family's ops
// from the top of the dispatcher, and those have autograd of their own, so
// derivatives are differentiable again. The conv and its two gradients are
// bilinear, so the derivatives of each are the other two ops:
//   y  = conv(x, W)           dL/dx = grad_input(g, W),   dL/dW = grad_weight(g, x)
//   gx = grad_input(g, W)     dL/dg = conv(u, W),          dL/dW = grad_weight(g, u)
//   gW = grad_weight(g, x)    dL/dg = conv(x, U),          dL/dx = grad_input(g, U)
// with u, U the incoming gradients; the shuffles ride along unchanged. The
// tangent of a bilinear op is the op applied to one tangent and the other
// primal, summed over both.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>
#include <torch/library.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "op_families.h"
#include "shuffle_tensor.h"

namespace shufflenet_ops {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// ---------------------------------------------------------------- backward nodes

// The backward node of one op call: the tensors its derivative needs, the op's
// integer arguments and sizes, and the derivative itself.
class BackwardNode : public Node {
 public:
  using Derivative = variable_list (*)(BackwardNode& node, const variable_list& grads);

  BackwardNode(const char* name, Derivative derivative) : name_(name), derivative_(derivative) {}

  variable_list apply(variable_list&& grads) override { return derivative_(*this, grads); }
  std::string name() const override { return name_; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (SavedVariable& v : saved_) v.reset_data();
  }

  // Compiled autograd traces apply() with the saved tensors and sizes swapped
  // for its proxies; the ops it calls have fake kernels.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(std::string(name_));
    for (size_t i = 0; i < saved_.size(); ++i) args.collect(saved_[i], saved_is_output_[i]);
    args.collect(ints);
    args.collect(sizes);
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& swap) override {
    for (SavedVariable& v : saved_) swap.before(v);
    for (c10::SymInt& s : sizes) swap.before(s);
    variable_list result = apply(variable_list(grads));
    for (SavedVariable& v : saved_) swap.after(v);
    for (c10::SymInt& s : sizes) swap.after(s);
    return result;
  }

  // An undefined tensor is kept as one, so saved(i) is always the i-th save.
  void save(const at::Tensor& t) {
    saved_.emplace_back(t, /*is_output=*/false);
    saved_is_output_.push_back(false);
  }
  // After set_history: the node keeps its own output without a reference cycle.
  void save_output(const at::Tensor& t) {
    saved_.emplace_back(t, /*is_output=*/true);
    saved_is_output_.push_back(true);
  }
  at::Tensor saved(size_t i) {
    return saved_is_output_[i] ? saved_[i].unpack(getptr()) : saved_[i].unpack();
  }
  // Whether this backward pass wants the gradient of the op's i-th tensor input.
  bool wants(size_t i) const { return task_should_compute_output(i); }

  std::vector<int64_t> ints;
  std::vector<c10::SymInt> sizes;

 private:
  const char* name_;
  Derivative derivative_;
  std::vector<SavedVariable> saved_;
  std::vector<bool> saved_is_output_;
};

// torch 2.13 holds autograd nodes in intrusive pointers, earlier releases in
// shared pointers; getptr() names the one in use.
using NodePtr = decltype(std::declval<Node&>().getptr());

// A template, so that only the branch of the torch in use is compiled.
template <typename T = BackwardNode>
auto make_node(const char* name, BackwardNode::Derivative derivative) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    return std::make_shared<T>(name, derivative);
  } else {
    return c10::make_intrusive<T>(name, derivative);
  }
}
using BackwardNodePtr = decltype(make_node(nullptr, nullptr));

// The backward node of a call with these tensor inputs (edges in their order,
// an absent optional keeping its place), or null when no graph is recorded.
template <typename... Inputs>
BackwardNodePtr backward_node(const char* name, BackwardNode::Derivative derivative, const Inputs&... inputs) {
  if (!torch::autograd::compute_requires_grad(inputs...)) return nullptr;
  auto node = make_node(name, derivative);
  node->set_next_edges(torch::autograd::collect_next_edges(inputs...));
  return node;
}

// ---------------------------------------------------------------- forward-mode helpers

at::Tensor tangent(const at::Tensor& t) { return t.defined() ? t._fw_grad(/*level=*/0) : at::Tensor(); }
at::Tensor tangent(const std::optional<at::Tensor>& t) { return t.has_value() ? tangent(*t) : at::Tensor(); }

template <typename... Inputs>
bool has_tangent(const Inputs&... inputs) {
  return (tangent(inputs).defined() || ...);
}

// The value of a dual tensor without its tangent: tangent formulas use it so
// that they do not differentiate themselves.
at::Tensor primal(const at::Tensor& t) { return tangent(t).defined() ? t._fw_primal(0) : t; }
std::optional<at::Tensor> primal(const std::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  return primal(*t);
}

std::optional<at::Tensor> optional_if_defined(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

at::Tensor add_defined(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined()) return b;
  if (!b.defined()) return a;
  return a + b;
}

void set_tangent(const at::Tensor& output, const at::Tensor& t) {
  if (t.defined()) output._set_fw_grad(t, /*level=*/0, /*is_inplace_op=*/false);
}

// The relu's derivative: the gradient or tangent where the output is positive
// (all of it where no relu ran: relu_output undefined).
at::Tensor relu_mask(const at::Tensor& t, const at::Tensor& relu_output) {
  return t.defined() && relu_output.defined() ? at::threshold_backward(t, relu_output, 0) : t;
}

// A per-channel vector's gradient or tangent spread over an activation of
// `sizes` (a view), its channels first shuffled by `shuffle`.
at::Tensor broadcast_channels(const at::Tensor& v, c10::SymIntArrayRef sizes, int64_t shuffle = 1) {
  std::vector<c10::SymInt> shape(sizes.size(), 1);
  shape[1] = v.sym_size(0);
  return shuffle_channels(v.view_symint(shape), shuffle).expand_symint(sizes);
}

// ---------------------------------------------------------------- the op families

// The ops of one family, looked up once.
template <typename Family>
struct FamilyOps {
  using Shuffle = at::Tensor(const at::Tensor&, int64_t);
  using Conv = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                          int64_t, int64_t, int64_t, bool, const std::optional<at::Tensor>&);
  using ConvGrad = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t);
  using BiasGrad = at::Tensor(const at::Tensor&, int64_t);

  c10::TypedOperatorHandle<Shuffle> channel_shuffle = find_op<Shuffle>(Family::prefix, "channel_shuffle");
  c10::TypedOperatorHandle<Conv> conv = find_op<Conv>(Family::prefix, "pointwise_group_conv");
  c10::TypedOperatorHandle<ConvGrad> grad_input =
      find_op<ConvGrad>(Family::prefix, "pointwise_group_conv_grad_input");
  c10::TypedOperatorHandle<ConvGrad> grad_weight =
      find_op<ConvGrad>(Family::prefix, "pointwise_group_conv_grad_weight");
  c10::TypedOperatorHandle<BiasGrad> grad_bias =
      find_op<BiasGrad>(Family::prefix, "pointwise_group_conv_grad_bias");

  static const FamilyOps& get() {
    static const FamilyOps ops;
    return ops;
  }
};

// groups, input_shuffle and output_shuffle of a conv, kept in a node's ints.
struct ConvLayout {
  int64_t groups;
  int64_t input_shuffle;
  int64_t output_shuffle;

  void save(BackwardNode& node) const { node.ints = {groups, input_shuffle, output_shuffle}; }
  static ConvLayout load(const BackwardNode& node) { return {node.ints[0], node.ints[1], node.ints[2]}; }
};

template <typename Family>
at::Tensor conv(const at::Tensor& x, const at::Tensor& weight, const ConvLayout& l,
                const std::optional<at::Tensor>& bias = std::nullopt) {
  return FamilyOps<Family>::get().conv.call(x, weight, bias, l.groups, l.input_shuffle, l.output_shuffle, false,
                                            std::nullopt);
}

template <typename Family>
at::Tensor grad_input(const at::Tensor& grad_out, const at::Tensor& weight, const ConvLayout& l) {
  return FamilyOps<Family>::get().grad_input.call(grad_out, weight, l.groups, l.input_shuffle, l.output_shuffle);
}

// In the weight's own shape: the op returns [C_out, C_in / groups, 1, 1] and
// the weight may be its 2-D form.
template <typename Family>
at::Tensor grad_weight(const at::Tensor& grad_out, const at::Tensor& x, const ConvLayout& l,
                       const at::Tensor& weight) {
  return FamilyOps<Family>::get()
      .grad_weight.call(grad_out, x, l.groups, l.input_shuffle, l.output_shuffle)
      .view_symint(weight.sym_sizes());
}

template <typename Family>
at::Tensor grad_bias(const at::Tensor& grad_out, int64_t output_shuffle) {
  return FamilyOps<Family>::get().grad_bias.call(grad_out, output_shuffle);
}

template <typename Family>
struct ChannelShuffle {
  using Signature = typename FamilyOps<Family>::Shuffle;

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor& grad = grads[0];
    if (!grad.defined() || !node.wants(0)) return {at::Tensor()};
    return {FamilyOps<Family>::get().channel_shuffle.call(grad, inverse_shuffle_groups(grad, node.ints[0]))};
  }

  static at::Tensor run(const at::Tensor& x, int64_t groups) {
    const auto& op = FamilyOps<Family>::get().channel_shuffle;
    auto node = backward_node("ChannelShuffleBackward", &backward, x);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op.call(x, groups);
    }
    if (node) {
      node->ints = {groups};
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(x)) set_tangent(y, op.call(tangent(x), groups));
    return y;
  }
};

// Tensor inputs: x, weight, bias, residual.
template <typename Family>
struct PointwiseGroupConv {
  using Signature = typename FamilyOps<Family>::Conv;

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor x = node.saved(0), weight = node.saved(1), relu_output = node.saved(2);
    const ConvLayout l = ConvLayout::load(node);
    const at::Tensor grad = relu_mask(grads[0], relu_output);
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    at::Tensor grad_x, grad_w, grad_b, grad_residual;
    if (node.wants(0)) grad_x = grad_input<Family>(grad, weight, l);
    if (node.wants(1)) grad_w = grad_weight<Family>(grad, x, l, weight);
    if (node.wants(2)) grad_b = grad_bias<Family>(grad, l.output_shuffle);
    // The residual is added at the output: its gradient is the output's, masked.
    if (node.wants(3)) grad_residual = grad;
    return {grad_x, grad_w, grad_b, grad_residual};
  }

  static at::Tensor tangent_of(const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const ConvLayout& l, bool relu,
                               const std::optional<at::Tensor>& residual) {
    const at::Tensor tx = tangent(x), tw = tangent(weight), tb = tangent(bias);
    at::Tensor t;
    // The bias tangent rides on the first conv that runs, as the bias does.
    if (tx.defined()) t = conv<Family>(tx, primal(weight), l, optional_if_defined(tb));
    if (tw.defined()) {
      t = add_defined(t, conv<Family>(primal(x), tw, l, tx.defined() ? std::nullopt : optional_if_defined(tb)));
    }
    if (!t.defined() && tb.defined()) t = broadcast_channels(tb, y.sym_sizes(), l.output_shuffle);
    t = add_defined(t, tangent(residual));
    return relu ? relu_mask(t, y) : t;
  }

  static at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t groups, int64_t input_shuffle, int64_t output_shuffle, bool relu,
                        const std::optional<at::Tensor>& residual) {
    auto node = backward_node("PointwiseGroupConvBackward", &backward, x, weight, bias, residual);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = FamilyOps<Family>::get().conv.call(x, weight, bias, groups, input_shuffle, output_shuffle, relu,
                                             residual);
    }
    const ConvLayout l{groups, input_shuffle, output_shuffle};
    if (node) {
      node->save(x);
      node->save(weight);
      l.save(*node);
      torch::autograd::set_history(y, node);
      // With the ReLU, the output is its mask for the backward.
      if (relu) node->save_output(y); else node->save(at::Tensor());
    }
    if (has_tangent(x, weight, bias, residual)) set_tangent(y, tangent_of(y, x, weight, bias, l, relu, residual));
    return y;
  }
};

// Tensor inputs: grad_out, weight.
template <typename Family>
struct GradInput {
  using Signature = typename FamilyOps<Family>::ConvGrad;

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor grad_out = node.saved(0), weight = node.saved(1);
    const at::Tensor& u = grads[0];
    const ConvLayout l = ConvLayout::load(node);
    at::Tensor d_grad_out, d_weight;
    if (u.defined() && node.wants(0)) d_grad_out = conv<Family>(u, weight, l);
    if (u.defined() && node.wants(1)) d_weight = grad_weight<Family>(grad_out, u, l, weight);
    return {d_grad_out, d_weight};
  }

  static at::Tensor run(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                        int64_t input_shuffle, int64_t output_shuffle) {
    const ConvLayout l{groups, input_shuffle, output_shuffle};
    auto node = backward_node("PointwiseGroupConvGradInputBackward", &backward, grad_out, weight);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = grad_input<Family>(grad_out, weight, l);
    }
    if (node) {
      node->save(grad_out);
      node->save(weight);
      l.save(*node);
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(grad_out, weight)) {
      const at::Tensor tg = tangent(grad_out), tw = tangent(weight);
      set_tangent(y, add_defined(tg.defined() ? grad_input<Family>(tg, primal(weight), l) : tg,
                                 tw.defined() ? grad_input<Family>(primal(grad_out), tw, l) : tw));
    }
    return y;
  }
};

// Tensor inputs: grad_out, x.
template <typename Family>
struct GradWeight {
  using Signature = typename FamilyOps<Family>::ConvGrad;

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor grad_out = node.saved(0), x = node.saved(1);
    const at::Tensor& u = grads[0];
    const ConvLayout l = ConvLayout::load(node);
    at::Tensor d_grad_out, d_x;
    if (u.defined() && node.wants(0)) d_grad_out = conv<Family>(x, u, l);
    if (u.defined() && node.wants(1)) d_x = grad_input<Family>(grad_out, u, l);
    return {d_grad_out, d_x};
  }

  static at::Tensor run(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups, int64_t input_shuffle,
                        int64_t output_shuffle) {
    const auto& op = FamilyOps<Family>::get().grad_weight;
    const ConvLayout l{groups, input_shuffle, output_shuffle};
    auto node = backward_node("PointwiseGroupConvGradWeightBackward", &backward, grad_out, x);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op.call(grad_out, x, groups, input_shuffle, output_shuffle);
    }
    if (node) {
      node->save(grad_out);
      node->save(x);
      l.save(*node);
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(grad_out, x)) {
      const at::Tensor tg = tangent(grad_out), tx = tangent(x);
      set_tangent(y, add_defined(tg.defined() ? op.call(tg, primal(x), groups, input_shuffle, output_shuffle) : tg,
                                 tx.defined() ? op.call(primal(grad_out), tx, groups, input_shuffle, output_shuffle)
                                              : tx));
    }
    return y;
  }
};

// grad_bias[c] sums grad_out over the channel that conv channel c lands on
// after the output shuffle; its derivative spreads u[c] back over that channel.
template <typename Family>
struct GradBias {
  using Signature = typename FamilyOps<Family>::BiasGrad;

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor& u = grads[0];
    if (!u.defined() || !node.wants(0)) return {at::Tensor()};
    return {broadcast_channels(u, node.sizes, node.ints[0])};
  }

  static at::Tensor run(const at::Tensor& grad_out, int64_t output_shuffle) {
    auto node = backward_node("PointwiseGroupConvGradBiasBackward", &backward, grad_out);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = grad_bias<Family>(grad_out, output_shuffle);
    }
    if (node) {
      node->ints = {output_shuffle};
      node->sizes = grad_out.sym_sizes().vec();
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(grad_out)) set_tangent(y, grad_bias<Family>(tangent(grad_out), output_shuffle));
    return y;
  }
};

// ---------------------------------------------------------------- ops differentiated by ATen
//
// The depthwise conv, the 3x3 pooling and the stem have native forward kernels
// only; their derivatives run on stock ATen ops (and so are differentiable
// again). Reduced precision is differentiated in float32: ATen's
// reduced-precision CPU convolution backward can return garbage for windows
// that hang over the border (seen for bfloat16, stride 2, a 1x1 input).

at::ScalarType derivative_compute_type(at::ScalarType type) {
  return type == at::kBFloat16 || type == at::kHalf ? at::kFloat : type;
}

at::Tensor to_type_or_undefined(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(type) : t;
}

constexpr int64_t kWindow = 3;
const std::array<int64_t, 2> kWindow2d{kWindow, kWindow}, kOnes{1, 1}, kZeros{0, 0};

// The derivative of a max pooling: the gradient or tangent at each window's
// maximum (ATen's choice of index, NaN included).
at::Tensor max_pool_indices(const at::Tensor& x, int64_t stride) {
  const std::array<int64_t, 2> strides{stride, stride};
  return std::get<1>(at::max_pool2d_with_indices(x, kWindow2d, strides, kOnes, kOnes, false));
}

// (reshape, not flatten: vmap has a batching rule for the first only.)
at::Tensor gather_at_indices(const at::Tensor& t, const at::Tensor& indices) {
  const std::vector<c10::SymInt> planes{t.sym_size(0), t.sym_size(1), -1};
  return t.reshape_symint(planes).gather(2, indices.reshape_symint(planes)).view_symint(indices.sym_sizes());
}

struct DepthwiseConv3x3 {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "depthwise_conv3x3");
    return handle;
  }

  // Tensor inputs: x, weight, bias.
  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor x = node.saved(0), weight = node.saved(1), relu_output = node.saved(2);
    const at::Tensor grad = relu_mask(grads[0], relu_output);
    at::Tensor grad_x, grad_weight, grad_bias;
    if (!grad.defined()) return {grad_x, grad_weight, grad_bias};
    const int64_t stride = node.ints[0];
    const bool want_x = node.wants(0), want_weight = node.wants(1);
    if (want_x || want_weight) {
      const at::ScalarType compute = derivative_compute_type(x.scalar_type());
      const std::array<int64_t, 2> strides{stride, stride};
      // The symint overload: the group count is x's channel count, symbolic under torch.compile.
      std::tie(grad_x, grad_weight, std::ignore) = at::convolution_backward_symint(
          grad.to(compute), x.to(compute), weight.to(compute), std::nullopt, c10::fromIntArrayRefSlow(strides),
          c10::fromIntArrayRefSlow(kOnes), c10::fromIntArrayRefSlow(kOnes), false, c10::fromIntArrayRefSlow(kZeros),
          x.sym_size(1), {want_x, want_weight, false});
      grad_x = to_type_or_undefined(grad_x, x.scalar_type());
      grad_weight = to_type_or_undefined(grad_weight, weight.scalar_type());
    }
    if (node.wants(2)) grad_bias = grad.sum({0, 2, 3});
    return {grad_x, grad_weight, grad_bias};
  }

  static at::Tensor tangent_of(const at::Tensor& y, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, int64_t stride, bool relu) {
    const at::Tensor tx = tangent(x), tw = tangent(weight), tb = tangent(bias);
    at::Tensor t;
    if (tx.defined()) t = op().call(tx, primal(weight), optional_if_defined(tb), stride, false);
    if (tw.defined()) {
      t = add_defined(t, op().call(primal(x), tw, tx.defined() ? std::nullopt : optional_if_defined(tb), stride, false));
    }
    if (!t.defined()) t = broadcast_channels(tb, y.sym_sizes());
    return relu ? relu_mask(t, y) : t;
  }

  static at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t stride, bool relu) {
    auto node = backward_node("DepthwiseConv3x3Backward", &backward, x, weight, bias);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op().call(x, weight, bias, stride, relu);
    }
    if (node) {
      node->save(x);
      node->save(weight);
      node->ints = {stride};
      torch::autograd::set_history(y, node);
      if (relu) node->save_output(y); else node->save(at::Tensor());
    }
    if (has_tangent(x, weight, bias)) set_tangent(y, tangent_of(y, x, weight, bias, stride, relu));
    return y;
  }
};

struct Pool3x3 {
  using Signature = at::Tensor(const at::Tensor&, int64_t, bool);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "pool3x3");
    return handle;
  }

  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor x = node.saved(0);
    const at::Tensor& grad = grads[0];
    if (!grad.defined() || !node.wants(0)) return {at::Tensor()};
    // ATen's pooling refuses empty channels or images; their gradient is empty too.
    if (x.sym_numel() == 0) return {at::zeros_like(x)};
    const int64_t stride = node.ints[0];
    const std::array<int64_t, 2> strides{stride, stride};
    if (node.ints[1]) {
      return {at::avg_pool2d_backward(grad, x, kWindow2d, strides, kOnes, false, true, std::nullopt)};
    }
    // The forward keeps no indices: recomputing them here costs a training step
    // one more pooling pass, and saves inference from computing them at all.
    return {at::max_pool2d_with_indices_backward(grad, x, kWindow2d, strides, kOnes, kOnes, false,
                                                 max_pool_indices(x, stride))};
  }

  static at::Tensor run(const at::Tensor& x, int64_t stride, bool average) {
    auto node = backward_node("Pool3x3Backward", &backward, x);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op().call(x, stride, average);
    }
    if (node) {
      node->save(x);
      node->ints = {stride, average};
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(x)) {
      const at::Tensor tx = tangent(x);
      if (average) {
        set_tangent(y, op().call(tx, stride, true));
      } else {
        set_tangent(y, x.sym_numel() == 0 ? at::zeros_like(y) : gather_at_indices(tx, max_pool_indices(primal(x), stride)));
      }
    }
    return y;
  }
};

struct StemConv3x3MaxPool {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "stem_conv3x3_maxpool");
    return handle;
  }

  static constexpr int64_t kStride = 2;

  // relu(conv(x)) in the derivatives' compute type: the forward keeps neither
  // the convolution's output nor the pooling's indices, so a training step
  // recomputes them, and inference never stores them.
  static at::Tensor activation(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    const std::array<int64_t, 2> stride{kStride, kStride};
    return at::relu(at::convolution(x, weight, bias, stride, kOnes, kOnes, false, kZeros, 1));
  }

  // Tensor inputs: x, weight, bias.
  static variable_list backward(BackwardNode& node, const variable_list& grads) {
    const at::Tensor x = node.saved(0), weight = node.saved(1), bias = node.saved(2);
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const at::ScalarType compute = derivative_compute_type(x.scalar_type());
    const at::Tensor x_c = x.to(compute), weight_c = weight.to(compute);
    const at::Tensor act = activation(x_c, weight_c, to_type_or_undefined(bias, compute));
    const std::array<int64_t, 2> stride{kStride, kStride};
    at::Tensor grad = at::max_pool2d_with_indices_backward(grads[0].to(compute), act, kWindow2d, stride, kOnes,
                                                           kOnes, false, max_pool_indices(act, kStride));
    grad = at::threshold_backward(grad, act, 0);
    const bool has_bias = bias.defined();
    at::OptionalSymIntArrayRef bias_sizes;
    if (has_bias) bias_sizes = bias.sym_sizes();
    // The symint overload: the bias size may be symbolic under torch.compile.
    auto [grad_x, grad_weight, grad_bias] = at::convolution_backward_symint(
        grad, x_c, weight_c, bias_sizes, c10::fromIntArrayRefSlow(stride), c10::fromIntArrayRefSlow(kOnes),
        c10::fromIntArrayRefSlow(kOnes), false, c10::fromIntArrayRefSlow(kZeros), 1,
        {node.wants(0), node.wants(1), has_bias && node.wants(2)});
    // x, weight and bias share a dtype.
    return {to_type_or_undefined(grad_x, x.scalar_type()), to_type_or_undefined(grad_weight, x.scalar_type()),
            to_type_or_undefined(grad_bias, x.scalar_type())};
  }

  static at::Tensor tangent_of(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    const at::ScalarType compute = derivative_compute_type(x.scalar_type());
    const at::Tensor x_c = primal(x).to(compute), weight_c = primal(weight).to(compute);
    const std::optional<at::Tensor> bias_p = primal(bias);
    const at::Tensor act = activation(x_c, weight_c, bias_p ? bias_p->to(compute) : at::Tensor());
    const at::Tensor tx = tangent(x), tw = tangent(weight), tb = tangent(bias);
    const std::array<int64_t, 2> stride{kStride, kStride};
    const auto conv = [&](const at::Tensor& input, const at::Tensor& w) {
      return at::convolution(input.to(compute), w.to(compute), at::Tensor(), stride, kOnes, kOnes, false, kZeros, 1);
    };
    at::Tensor t;
    if (tx.defined()) t = conv(tx, weight_c);
    if (tw.defined()) t = add_defined(t, conv(x_c, tw));
    if (tb.defined()) t = t.defined() ? t + tb.to(compute).view({1, -1, 1, 1}) : broadcast_channels(tb.to(compute), act.sym_sizes());
    return gather_at_indices(relu_mask(t, act), max_pool_indices(act, kStride)).to(x.scalar_type());
  }

  static at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    auto node = backward_node("StemConv3x3MaxPoolBackward", &backward, x, weight, bias);
    at::Tensor y;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      y = op().call(x, weight, bias);
    }
    if (node) {
      node->save(x);
      node->save(weight);
      node->save(bias.value_or(at::Tensor()));
      torch::autograd::set_history(y, node);
    }
    if (has_tangent(x, weight, bias)) set_tangent(y, tangent_of(x, weight, bias));
    return y;
  }
};

template <typename Family>
void register_family(torch::Library& m) {
  const auto name = [](const char* op) { return std::string(Family::prefix) + op; };
  m.impl(name("channel_shuffle").c_str(), &ChannelShuffle<Family>::run);
  m.impl(name("pointwise_group_conv").c_str(), &PointwiseGroupConv<Family>::run);
  m.impl(name("pointwise_group_conv_grad_input").c_str(), &GradInput<Family>::run);
  m.impl(name("pointwise_group_conv_grad_weight").c_str(), &GradWeight<Family>::run);
  m.impl(name("pointwise_group_conv_grad_bias").c_str(), &GradBias<Family>::run);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, Autograd, m) {
  register_family<NativeFamily>(m);
  register_family<TritonFamily>(m);
  m.impl("depthwise_conv3x3", &DepthwiseConv3x3::run);
  m.impl("pool3x3", &Pool3x3::run);
  m.impl("stem_conv3x3_maxpool", &StemConv3x3MaxPool::run);
}

}  // namespace shufflenet_ops
