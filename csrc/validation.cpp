#include "validation.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace shufflenet_ops {
namespace {

void check_activation(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": expected ", name,
                    " to be a 4-D tensor (N, C, H, W), got a ", t.dim(), "-D tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": expected ", name,
                   " to be a floating-point tensor, got ", t.scalar_type());
}

void check_matches(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                   const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": expected ", name,
                   " to have the same dtype as ", ref_name, " (", ref.scalar_type(), "), got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": expected ", name,
                    " to be on the same device as ", ref_name, " (", ref.device(), "), got ",
                    t.device());
}

// bias, when given: like x, of shape [channels]; `shape` names that dimension.
void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x,
                int64_t channels, const char* shape) {
  if (!bias.has_value()) return;
  check_matches(op, "bias", *bias, "x", x);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == channels, op, ": expected bias of shape ",
                    shape, " = [", channels, "], got ", bias->sizes());
}

void check_groups(const char* op, const char* name, int64_t groups, const char* what,
                  int64_t channels) {
  TORCH_CHECK_VALUE(groups > 0, op, ": expected ", name, " to be a positive integer, got ",
                    groups);
  TORCH_CHECK_VALUE(channels % groups == 0, op, ": expected ", name, " (", groups,
                    ") to divide the ", what, " (", channels, ")");
}

// The weight is [C_out, C_in / groups, 1, 1] or its 2-D form [C_out, C_in / groups].
void check_weight(const char* op, const at::Tensor& weight) {
  const bool is_4d_pointwise = weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1;
  TORCH_CHECK_VALUE(is_4d_pointwise || weight.dim() == 2, op,
                    ": expected weight of shape [C_out, C_in / groups, 1, 1] or "
                    "[C_out, C_in / groups], got ",
                    weight.sizes());
}

// A convolution needs at least one output channel per group (stock conv2d
// rejects C_out = 0 as well); its input channels may be none, an empty sum.
void check_out_channels(const char* op, const char* name, int64_t out_channels, int64_t groups) {
  TORCH_CHECK_VALUE(out_channels > 0, op, ": expected ", name, " (C_out = ", out_channels,
                    ") to be a positive multiple of groups (", groups, ")");
}

void check_shuffles(const char* op, ConvProblem& p) {
  check_groups(op, "groups", p.groups, "input channels", p.in_channels);
  check_groups(op, "groups", p.groups, "output channels", p.out_channels);
  check_groups(op, "input_shuffle", p.input_shuffle, "input channels", p.in_channels);
  check_groups(op, "output_shuffle", p.output_shuffle, "output channels", p.out_channels);
}

}  // namespace

void check_channel_shuffle(const at::Tensor& x, int64_t groups) {
  constexpr const char* op = "channel_shuffle";
  TORCH_CHECK_VALUE(x.dim() >= 3, op, ": expected x to have at least 3 dimensions (N, C, *), got ",
                    x.dim());
  check_groups(op, "groups", groups, "channels of x", x.size(1));
}

ConvProblem check_pointwise_group_conv(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t groups,
                                       int64_t input_shuffle, int64_t output_shuffle,
                                       const std::optional<at::Tensor>& residual) {
  constexpr const char* op = "pointwise_group_conv";
  check_activation(op, "x", x);
  check_matches(op, "weight", weight, "x", x);
  check_weight(op, weight);
  ConvProblem p{x.size(0), x.size(1), weight.size(0), x.size(2), x.size(3),
                groups, input_shuffle, output_shuffle};
  check_shuffles(op, p);
  check_out_channels(op, "weight.size(0)", p.out_channels, groups);
  TORCH_CHECK_VALUE(weight.size(1) * groups == p.in_channels, op, ": expected weight.size(1) (",
                    weight.size(1), ") to equal C_in / groups (", p.in_channels, " / ", groups,
                    ")");
  check_bias(op, bias, x, p.out_channels, "[C_out]");
  if (residual.has_value()) {
    check_residual(op, *residual, x, {p.batch, p.out_channels, p.height, p.width});
  }
  return p;
}

void check_residual(const char* op, const at::Tensor& residual, const at::Tensor& x,
                    c10::IntArrayRef output_sizes, bool any_floating_dtype) {
  if (any_floating_dtype) {
    TORCH_CHECK_TYPE(at::isFloatingType(residual.scalar_type()), op,
                     ": expected residual to be a floating-point tensor, got ", residual.scalar_type());
    TORCH_CHECK_VALUE(residual.device() == x.device(), op, ": expected residual to be on the same device as x (",
                      x.device(), "), got ", residual.device());
  } else {
    check_matches(op, "residual", residual, "x", x);
  }
  TORCH_CHECK_VALUE(residual.sizes() == output_sizes, op, ": expected residual of the output's shape [N, C_out, H, W] = ",
                    output_sizes, ", got ", residual.sizes());
}

ConvProblem check_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                             int64_t input_shuffle, int64_t output_shuffle) {
  constexpr const char* op = "pointwise_group_conv_grad_input";
  check_activation(op, "grad_out", grad_out);
  check_matches(op, "weight", weight, "grad_out", grad_out);
  check_weight(op, weight);
  TORCH_CHECK_VALUE(groups > 0, op, ": expected groups to be a positive integer, got ", groups);
  ConvProblem p{grad_out.size(0), weight.size(1) * groups, weight.size(0), grad_out.size(2),
                grad_out.size(3), groups, input_shuffle, output_shuffle};
  check_shuffles(op, p);
  check_out_channels(op, "weight.size(0)", p.out_channels, groups);
  TORCH_CHECK_VALUE(grad_out.size(1) == p.out_channels, op, ": expected grad_out.size(1) (",
                    grad_out.size(1), ") to equal weight.size(0) (", p.out_channels, ")");
  return p;
}

ConvProblem check_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                              int64_t input_shuffle, int64_t output_shuffle) {
  constexpr const char* op = "pointwise_group_conv_grad_weight";
  check_activation(op, "grad_out", grad_out);
  check_activation(op, "x", x);
  check_matches(op, "x", x, "grad_out", grad_out);
  ConvProblem p{x.size(0), x.size(1), grad_out.size(1), x.size(2), x.size(3),
                groups, input_shuffle, output_shuffle};
  check_shuffles(op, p);
  check_out_channels(op, "grad_out.size(1)", p.out_channels, groups);
  const bool same_pixels = grad_out.size(0) == x.size(0) && grad_out.size(2) == x.size(2) &&
                           grad_out.size(3) == x.size(3);
  TORCH_CHECK_VALUE(same_pixels, op, ": expected grad_out (", grad_out.sizes(),
                    ") and x (", x.sizes(), ") to agree in N, H and W");
  return p;
}

void check_grad_bias(const at::Tensor& grad_out, int64_t output_shuffle) {
  constexpr const char* op = "pointwise_group_conv_grad_bias";
  check_activation(op, "grad_out", grad_out);
  check_groups(op, "output_shuffle", output_shuffle, "output channels", grad_out.size(1));
}

void check_depthwise_conv3x3(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t stride) {
  constexpr const char* op = "depthwise_conv3x3";
  check_activation(op, "x", x);
  check_matches(op, "weight", weight, "x", x);
  const int64_t channels = x.size(1);
  const bool weight_ok = weight.dim() == 4 && weight.size(0) == channels && weight.size(1) == 1 &&
                         weight.size(2) == 3 && weight.size(3) == 3;
  TORCH_CHECK_VALUE(weight_ok, op, ": expected weight of shape [C, 1, 3, 3] = [", channels,
                    ", 1, 3, 3], got ", weight.sizes());
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": expected stride to be 1 or 2, got ", stride);
  check_bias(op, bias, x, channels, "[C]");
}

void check_pool3x3(const at::Tensor& x, int64_t stride) {
  constexpr const char* op = "pool3x3";
  check_activation(op, "x", x);
  TORCH_CHECK_VALUE(stride == 1 || stride == 2, op, ": expected stride to be 1 or 2, got ", stride);
}

void check_stem_conv3x3_maxpool(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "stem_conv3x3_maxpool";
  check_activation(op, "x", x);
  TORCH_CHECK_VALUE(x.size(2) > 0 && x.size(3) > 0, op,
                    ": expected x to have a positive height and width, got ", x.sizes());
  check_matches(op, "weight", weight, "x", x);
  const bool weight_ok = weight.dim() == 4 && weight.size(1) == x.size(1) && weight.size(2) == 3 &&
                         weight.size(3) == 3;
  TORCH_CHECK_VALUE(weight_ok, op, ": expected weight of shape [C_out, C_in, 3, 3] with C_in = ",
                    x.size(1), ", got ", weight.sizes());
  check_bias(op, bias, x, weight.size(0), "[C_out]");
}

void check_dtype_supported(const char* op, const at::Tensor& t,
                           std::initializer_list<at::ScalarType> supported) {
  for (at::ScalarType s : supported) {
    if (t.scalar_type() == s) return;
  }
  std::ostringstream names;
  const char* sep = "";
  for (at::ScalarType s : supported) {
    names << sep << s;
    sep = ", ";
  }
  TORCH_CHECK_TYPE(false, op, ": this backend supports dtypes {", names.str(), "} on ",
                   t.device().type(), ", got ", t.scalar_type(),
                   "; convert the tensors to one of these dtypes");
}

void reject_uncomputable_dtype(const char* op, const at::Tensor& t, const char* cause) {
  TORCH_CHECK_TYPE(false, op, ": dtype ", t.scalar_type(), " is computed neither by this kernel nor by PyTorch's own ",
                   t.device().type(), " operators (", cause,
                   "); convert the tensors to float32, float64, bfloat16 or float16 first");
  // TORCH_CHECK_TYPE(false, ...) always throws; this tells the compiler so.
  __builtin_unreachable();
}

}  // namespace shufflenet_ops
