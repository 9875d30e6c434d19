// Autocast: under torch.autocast the convolutions run in the autocast dtype,
// as conv2d does (its "lower precision" list), with their float32 weights cast
// on the way in. The channel shuffle and the pooling are not listed, as
// channel_shuffle and max_pool2d are not: they run in their input's dtype.
// The backward ops are not listed either (nor is convolution_backward): a
// backward pass receives tensors already in the forward's dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <string>

#include "op_families.h"
#include "validation.h"

namespace shufflenet_ops {
namespace {

using ConvSignature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t,
                                 int64_t, int64_t, bool, const std::optional<at::Tensor>&);

template <typename Family>
struct PointwiseGroupConvOp {
  using Signature = ConvSignature;
  static std::string name() { return std::string(Family::prefix) + "pointwise_group_conv"; }
};

struct DepthwiseConv3x3Op {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool);
  static std::string name() { return "depthwise_conv3x3"; }
};

struct StemConv3x3MaxPoolOp {
  using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&);
  static std::string name() { return "stem_conv3x3_maxpool"; }
};

// The dispatch key of Device's autocast, excluded while the op runs below it.
template <c10::DeviceType Device>
struct BelowAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{at::autocast::get_autocast_dispatch_key_from_device_type(Device)};
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(Device);
};

template <c10::DeviceType Device, typename Op, typename Signature = typename Op::Signature>
struct Autocast;

template <c10::DeviceType Device, typename Op, typename... Args>
struct Autocast<Device, Op, at::Tensor(Args...)> {
  // Looked up at the first call: the schemas are defined in another
  // translation unit, whose registration may run after this one's.
  static const c10::TypedOperatorHandle<at::Tensor(Args...)>& op() {
    static const auto handle = find_op<at::Tensor(Args...)>("", Op::name().c_str());
    return handle;
  }

  static at::Tensor run(Args... args) {
    const BelowAutocast<Device> below;
    // cached_cast casts the floating-point tensors on Device and passes the rest through.
    return op().call(at::autocast::cached_cast(below.dtype, args, Device)...);
  }
};

// The conv's residual is added after the convolution, and stock autocast does
// not cast an addition: a residual in another floating dtype (a float32 one,
// say) is added in the promoted dtype, as conv2d(...) + residual would be.
template <c10::DeviceType Device, typename Family>
struct Autocast<Device, PointwiseGroupConvOp<Family>, ConvSignature> {
  static at::Tensor run(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        int64_t groups, int64_t input_shuffle, int64_t output_shuffle, bool relu,
                        const std::optional<at::Tensor>& residual) {
    static const auto op = find_op<ConvSignature>("", PointwiseGroupConvOp<Family>::name().c_str());
    const BelowAutocast<Device> below;
    const auto cast = [&](const auto& t) { return at::autocast::cached_cast(below.dtype, t, Device); };
    const at::Tensor cast_x = cast(x);
    if (!residual || !residual->defined() || residual->scalar_type() == cast_x.scalar_type()) {
      return op.call(cast_x, cast(weight), cast(bias), groups, input_shuffle, output_shuffle, relu, residual);
    }
    at::Tensor y = op.call(cast_x, cast(weight), cast(bias), groups, input_shuffle, output_shuffle, false, std::nullopt);
    check_residual(PointwiseGroupConvOp<Family>::name().c_str(), *residual, x, y.sizes(), /*any_floating_dtype=*/true);
    y = y + *residual;
    return relu ? at::relu(y) : y;
  }
};

template <c10::DeviceType Device, typename Op>
void register_autocast(torch::Library& m) {
  m.impl(Op::name().c_str(), &Autocast<Device, Op>::run);
}

template <c10::DeviceType Device>
void register_all(torch::Library& m) {
  register_autocast<Device, PointwiseGroupConvOp<NativeFamily>>(m);
  register_autocast<Device, PointwiseGroupConvOp<TritonFamily>>(m);
  register_autocast<Device, DepthwiseConv3x3Op>(m);
  register_autocast<Device, StemConv3x3MaxPoolOp>(m);
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, AutocastCPU, m) { register_all<c10::DeviceType::CPU>(m); }
TORCH_LIBRARY_IMPL(shufflenet_ops, AutocastCUDA, m) { register_all<c10::DeviceType::CUDA>(m); }

}  // namespace shufflenet_ops
