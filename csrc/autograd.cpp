// Autograd of every op, compiled and registered for every device: a Python
// autograd kernel costs microseconds per call even where no graph is recorded
// (inference), as much as a depthwise conv of a late ShuffleNet stage.
//
// In the op families (op_families.h) every backward calls the family's ops
// from the top of the dispatcher, and the backward ops have autograd of their
// own, so gradients are differentiable again (double backward). The conv and
// its two gradients are bilinear, so the derivatives of each are the other two
// ops:
//   y  = conv(x, W)           dL/dx = grad_input(g, W),   dL/dW = grad_weight(g, x)
//   gx = grad_input(g, W)     dL/dg = conv(u, W),          dL/dW = grad_weight(g, u)
//   gW = grad_weight(g, x)    dL/dg = conv(x, U),          dL/dx = grad_input(g, U)
// with u, U the incoming gradients; the shuffles ride along unchanged.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <tuple>

#include "op_families.h"

namespace shufflenet_ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* prefix, const char* name) {
  const std::string qualified = std::string("shufflenet_ops::") + prefix + name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<Signature>();
}

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

// groups, input_shuffle and output_shuffle of a conv, kept for its backward.
struct ConvLayout {
  int64_t groups;
  int64_t input_shuffle;
  int64_t output_shuffle;

  void save(AutogradContext* ctx) const {
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["input_shuffle"] = input_shuffle;
    ctx->saved_data["output_shuffle"] = output_shuffle;
  }

  static ConvLayout load(AutogradContext* ctx) {
    return {ctx->saved_data["groups"].toInt(), ctx->saved_data["input_shuffle"].toInt(),
            ctx->saved_data["output_shuffle"].toInt()};
  }
};

template <typename Family>
at::Tensor conv(const at::Tensor& x, const at::Tensor& weight, const ConvLayout& l) {
  return FamilyOps<Family>::get().conv.call(x, weight, std::nullopt, l.groups, l.input_shuffle,
                                            l.output_shuffle, false, std::nullopt);
}

template <typename Family>
at::Tensor grad_input(const at::Tensor& grad_out, const at::Tensor& weight, const ConvLayout& l) {
  return FamilyOps<Family>::get().grad_input.call(grad_out, weight, l.groups, l.input_shuffle,
                                                  l.output_shuffle);
}

// In the weight's own shape: the op returns [C_out, C_in / groups, 1, 1] and
// the weight may be its 2-D form.
template <typename Family>
at::Tensor grad_weight(const at::Tensor& grad_out, const at::Tensor& x, const ConvLayout& l,
                       const at::Tensor& weight) {
  return FamilyOps<Family>::get()
      .grad_weight.call(grad_out, x, l.groups, l.input_shuffle, l.output_shuffle)
      .view(weight.sizes());
}

template <typename Family>
class ChannelShuffle : public torch::autograd::Function<ChannelShuffle<Family>> {
 public:
  using Signature = typename FamilyOps<Family>::Shuffle;
  static const auto& op() { return FamilyOps<Family>::get().channel_shuffle; }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t groups) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["groups"] = groups;
    return op().call(x, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& grad = grads[0];
    // The inverse of a shuffle with g groups is the shuffle with C / g groups.
    const int64_t groups = grad.size(1) / ctx->saved_data["groups"].toInt();
    return {op().call(grad, groups), at::Tensor()};
  }
};

template <typename Family>
class PointwiseGroupConv : public torch::autograd::Function<PointwiseGroupConv<Family>> {
 public:
  using Signature = typename FamilyOps<Family>::Conv;
  static const auto& op() { return FamilyOps<Family>::get().conv; }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t groups,
                            int64_t input_shuffle, int64_t output_shuffle, bool relu,
                            const std::optional<at::Tensor>& residual) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op().call(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual);
    // With the ReLU, the output is its mask for the backward.
    ctx->save_for_backward({x, weight, relu ? y : at::Tensor()});
    ConvLayout{groups, input_shuffle, output_shuffle}.save(ctx);
    // needs_input_grad counts the tensors given: bias is input 2 when given,
    // the residual the one after.
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["has_residual"] = residual.has_value() && residual->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &relu_output = saved[2];
    const ConvLayout l = ConvLayout::load(ctx);
    at::Tensor grad = grads[0];
    if (relu_output.defined()) {
      grad = at::threshold_backward(grad, relu_output, 0);
    }
    at::Tensor grad_x, grad_w, grad_b;
    if (ctx->needs_input_grad(0)) {
      grad_x = grad_input<Family>(grad, weight, l);
    }
    if (ctx->needs_input_grad(1)) {
      grad_w = grad_weight<Family>(grad, x, l, weight);
    }
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    if (has_bias && ctx->needs_input_grad(2)) {
      grad_b = FamilyOps<Family>::get().grad_bias.call(grad, l.output_shuffle);
    }
    // The residual is added at the output: its gradient is the output's, masked.
    at::Tensor grad_residual;
    if (ctx->saved_data["has_residual"].toBool() && ctx->needs_input_grad(has_bias ? 3 : 2)) {
      grad_residual = grad;
    }
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), grad_residual};
  }
};

template <typename Family>
class GradInput : public torch::autograd::Function<GradInput<Family>> {
 public:
  using Signature = typename FamilyOps<Family>::ConvGrad;
  static const auto& op() { return FamilyOps<Family>::get().grad_input; }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out,
                            const at::Tensor& weight, int64_t groups, int64_t input_shuffle,
                            int64_t output_shuffle) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const ConvLayout l{groups, input_shuffle, output_shuffle};
    ctx->save_for_backward({grad_out, weight});
    l.save(ctx);
    return grad_input<Family>(grad_out, weight, l);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_out = saved[0], &weight = saved[1], &u = grads[0];
    const ConvLayout l = ConvLayout::load(ctx);
    at::Tensor d_grad_out, d_weight;
    if (ctx->needs_input_grad(0)) {
      d_grad_out = conv<Family>(u, weight, l);
    }
    if (ctx->needs_input_grad(1)) {
      d_weight = grad_weight<Family>(grad_out, u, l, weight);
    }
    return {d_grad_out, d_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <typename Family>
class GradWeight : public torch::autograd::Function<GradWeight<Family>> {
 public:
  using Signature = typename FamilyOps<Family>::ConvGrad;
  static const auto& op() { return FamilyOps<Family>::get().grad_weight; }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out, const at::Tensor& x,
                            int64_t groups, int64_t input_shuffle, int64_t output_shuffle) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const ConvLayout l{groups, input_shuffle, output_shuffle};
    ctx->save_for_backward({grad_out, x});
    l.save(ctx);
    return op().call(grad_out, x, groups, input_shuffle, output_shuffle);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_out = saved[0], &x = saved[1], &u = grads[0];
    const ConvLayout l = ConvLayout::load(ctx);
    at::Tensor d_grad_out, d_x;
    if (ctx->needs_input_grad(0)) {
      d_grad_out = conv<Family>(x, u, l);
    }
    if (ctx->needs_input_grad(1)) {
      d_x = grad_input<Family>(grad_out, u, l);
    }
    return {d_grad_out, d_x, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// grad_bias[c] sums grad_out over the channel that conv channel c lands on
// after the output shuffle; its derivative spreads u[c] back over that channel.
template <typename Family>
class GradBias : public torch::autograd::Function<GradBias<Family>> {
 public:
  using Signature = typename FamilyOps<Family>::BiasGrad;
  static const auto& op() { return FamilyOps<Family>::get().grad_bias; }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& grad_out,
                            int64_t output_shuffle) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->saved_data["grad_out_sizes"] = grad_out.sizes();
    ctx->saved_data["output_shuffle"] = output_shuffle;
    return op().call(grad_out, output_shuffle);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor& u = grads[0];
    const int64_t shuffle = ctx->saved_data["output_shuffle"].toInt();
    const int64_t channels = u.size(0);
    // The channel shuffle of a vector: view (shuffle, C / shuffle), transpose, flatten.
    const at::Tensor shuffled = u.view({shuffle, channels / shuffle}).t().reshape({channels});
    const auto sizes = ctx->saved_data["grad_out_sizes"].toIntVector();
    return {shuffled.view({1, channels, 1, 1}).expand(sizes), at::Tensor()};
  }
};

// ---------------------------------------------------------------- ops differentiated by ATen
//
// The depthwise conv, the 3x3 pooling and the stem have native forward kernels
// only; their backward runs on stock ATen ops (and so is differentiable again).
// Reduced precision is differentiated in float32: ATen's reduced-precision CPU
// convolution backward can return garbage for windows that hang over the
// border (seen for bfloat16, stride 2, a 1x1 input).

at::ScalarType backward_compute_type(at::ScalarType type) {
  return type == at::kBFloat16 || type == at::kHalf ? at::kFloat : type;
}

at::Tensor to_type_or_undefined(const at::Tensor& t, at::ScalarType type) {
  return t.defined() ? t.to(type) : t;
}

constexpr int64_t kWindow = 3;

class DepthwiseConv3x3 : public torch::autograd::Function<DepthwiseConv3x3> {
 public:
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                               bool);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "depthwise_conv3x3");
    return handle;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t stride, bool relu) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = op().call(x, weight, bias, stride, relu);
    ctx->save_for_backward({x, weight, relu ? y : at::Tensor()});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &relu_output = saved[2];
    at::Tensor grad = grads[0];
    if (relu_output.defined()) {
      grad = at::threshold_backward(grad, relu_output, 0);
    }
    const int64_t stride = ctx->saved_data["stride"].toInt();
    const bool want_x = ctx->needs_input_grad(0), want_weight = ctx->needs_input_grad(1);
    at::Tensor grad_x, grad_weight, grad_bias;
    if (want_x || want_weight) {
      const at::ScalarType compute = backward_compute_type(x.scalar_type());
      const std::array<int64_t, 2> strides{stride, stride}, ones{1, 1}, zeros{0, 0};
      // The symint overload: the group count is x's channel count, symbolic under torch.compile.
      std::tie(grad_x, grad_weight, std::ignore) = at::convolution_backward_symint(
          grad.to(compute), x.to(compute), weight.to(compute), std::nullopt, c10::fromIntArrayRefSlow(strides),
          c10::fromIntArrayRefSlow(ones), c10::fromIntArrayRefSlow(ones), false, c10::fromIntArrayRefSlow(zeros),
          x.sym_size(1), {want_x, want_weight, false});
      grad_x = to_type_or_undefined(grad_x, x.scalar_type());
      grad_weight = to_type_or_undefined(grad_weight, weight.scalar_type());
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      grad_bias = grad.sum({0, 2, 3});
    }
    return {grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor()};
  }
};

class Pool3x3 : public torch::autograd::Function<Pool3x3> {
 public:
  using Signature = at::Tensor(const at::Tensor&, int64_t, bool);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "pool3x3");
    return handle;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t stride, bool average) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["average"] = average;
    return op().call(x, stride, average);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor x = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grads[0];
    // ATen's pooling refuses empty channels or images; their gradient is empty too.
    if (x.sym_numel() == 0) return {at::zeros_like(x), at::Tensor(), at::Tensor()};
    const int64_t stride = ctx->saved_data["stride"].toInt();
    const std::array<int64_t, 2> window{kWindow, kWindow}, strides{stride, stride}, padding{1, 1},
        dilation{1, 1};
    if (ctx->saved_data["average"].toBool()) {
      return {at::avg_pool2d_backward(grad, x, window, strides, padding, false, true, std::nullopt), at::Tensor(),
              at::Tensor()};
    }
    // The forward keeps no indices: recomputing them here costs a training step
    // one more pooling pass, and saves inference from computing them at all.
    const at::Tensor indices = std::get<1>(at::max_pool2d_with_indices(x, window, strides, padding, dilation, false));
    return {at::max_pool2d_with_indices_backward(grad, x, window, strides, padding, dilation, false, indices),
            at::Tensor(), at::Tensor()};
  }
};

class StemConv3x3MaxPool : public torch::autograd::Function<StemConv3x3MaxPool> {
 public:
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  static const auto& op() {
    static const auto handle = find_op<Signature>("", "stem_conv3x3_maxpool");
    return handle;
  }

  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({x, weight, bias.value_or(at::Tensor())});
    return op().call(x, weight, bias);
  }

  // The forward keeps neither the convolution's output nor the pooling's
  // indices: a training step recomputes them here, and inference never stores them.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const at::ScalarType compute = backward_compute_type(x.scalar_type());
    const at::Tensor x_c = x.to(compute), weight_c = weight.to(compute);
    const std::array<int64_t, 2> window{kWindow, kWindow}, stride{2, 2}, padding{1, 1}, dilation{1, 1},
        output_padding{0, 0};
    const at::Tensor activation = at::relu(at::convolution(x_c, weight_c, to_type_or_undefined(bias, compute),
                                                           stride, padding, dilation, false, output_padding, 1));
    const at::Tensor indices =
        std::get<1>(at::max_pool2d_with_indices(activation, window, stride, padding, dilation, false));
    at::Tensor grad = at::max_pool2d_with_indices_backward(grads[0].to(compute), activation, window, stride,
                                                           padding, dilation, false, indices);
    grad = at::threshold_backward(grad, activation, 0);
    const bool has_bias = bias.defined();
    at::OptionalSymIntArrayRef bias_sizes;
    if (has_bias) bias_sizes = bias.sym_sizes();
    // The symint overload: the bias size may be symbolic under torch.compile.
    auto [grad_x, grad_weight, grad_bias] = at::convolution_backward_symint(
        grad, x_c, weight_c, bias_sizes, c10::fromIntArrayRefSlow(stride), c10::fromIntArrayRefSlow(padding),
        c10::fromIntArrayRefSlow(dilation), false, c10::fromIntArrayRefSlow(output_padding), 1,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), has_bias && ctx->needs_input_grad(2)});
    // x, weight and bias share a dtype.
    return {to_type_or_undefined(grad_x, x.scalar_type()), to_type_or_undefined(grad_weight, x.scalar_type()),
            to_type_or_undefined(grad_bias, x.scalar_type())};
  }
};

template <typename NotATensor>
bool requires_grad(const NotATensor&) {
  return false;
}
bool requires_grad(const at::Tensor& t) { return t.requires_grad(); }
bool requires_grad(const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); }

// Without a graph to record, the op is called directly, which spares the
// autograd node and its saved state.
template <typename... Tensors>
bool records_graph(const Tensors&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

// The Autograd kernel of the op that `Function` differentiates.
template <typename Function, typename Signature = typename Function::Signature>
struct AutogradKernel;

template <typename Function, typename... Args>
struct AutogradKernel<Function, at::Tensor(Args...)> {
  static at::Tensor run(Args... args) {
    if (!records_graph(args...)) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      return Function::op().call(args...);
    }
    return Function::apply(args...);
  }
};

template <typename Family>
void register_family(torch::Library& m) {
  const auto name = [](const char* op) { return std::string(Family::prefix) + op; };
  m.impl(name("channel_shuffle").c_str(), &AutogradKernel<ChannelShuffle<Family>>::run);
  m.impl(name("pointwise_group_conv").c_str(), &AutogradKernel<PointwiseGroupConv<Family>>::run);
  m.impl(name("pointwise_group_conv_grad_input").c_str(), &AutogradKernel<GradInput<Family>>::run);
  m.impl(name("pointwise_group_conv_grad_weight").c_str(), &AutogradKernel<GradWeight<Family>>::run);
  m.impl(name("pointwise_group_conv_grad_bias").c_str(), &AutogradKernel<GradBias<Family>>::run);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, Autograd, m) {
  register_family<NativeFamily>(m);
  register_family<TritonFamily>(m);
  m.impl("depthwise_conv3x3", &AutogradKernel<DepthwiseConv3x3>::run);
  m.impl("pool3x3", &AutogradKernel<Pool3x3>::run);
  m.impl("stem_conv3x3_maxpool", &AutogradKernel<StemConv3x3MaxPool>::run);
}

}  // namespace shufflenet_ops
