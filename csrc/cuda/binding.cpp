// CUDA registrations of the shufflenet_ops kernels. Each op validates with the
// shared checks (csrc/validation.h), makes its operands dense in the
// activation's memory format, and launches the torch-free kernels
// (csrc/cuda/*.cu) on the current CUDA stream, checking every launch.
#include "../validation.h"
#include "launch.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace shufflenet_ops::cuda {
namespace {

DType kernel_dtype(const char* op, const at::Tensor& t) {
  check_dtype_supported(op, t, {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16});
  switch (t.scalar_type()) {
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

// The kernels accumulate fp16 / bf16 / float in float and double in double.
at::ScalarType accumulation_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

cudaStream_t current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void check_launch(cudaError_t status) { C10_CUDA_CHECK(status); }

ConvShape conv_shape(const ConvProblem& p, at::MemoryFormat format) {
  ConvShape shape;
  shape.batch = p.batch;
  shape.in_channels = p.in_channels;
  shape.out_channels = p.out_channels;
  shape.pixels = p.pixels();
  shape.groups = p.groups;
  shape.input_shuffle = p.input_shuffle;
  shape.output_shuffle = p.output_shuffle;
  shape.channels_last = format == at::MemoryFormat::ChannelsLast;
  return shape;
}

at::Tensor channel_shuffle_cuda(const at::Tensor& x_in, int64_t groups) {
  check_channel_shuffle(x_in, groups);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat format = x_in.suggest_memory_format();
  at::Tensor y = at::empty(x_in.sizes(), x_in.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous(format);
  const int64_t batch = x.size(0), channels = x.size(1);
  const int64_t inner = x.numel() / (batch * channels);
  ChannelShuffleParams params;
  // Contiguous: rows of `inner` elements per (n, c). Channels-last (2-D or 3-D):
  // the channels of each pixel are the innermost run.
  const bool channels_innermost = format != at::MemoryFormat::Contiguous;
  params.outer = channels_innermost ? batch * inner : batch;
  params.channels = channels;
  params.inner = channels_innermost ? 1 : inner;
  params.groups = groups;
  params.element_size = x.element_size();
  params.x = x.const_data_ptr();
  params.y = y.mutable_data_ptr();
  check_launch(launch_channel_shuffle(params, current_stream(x)));
  return y;
}

at::Tensor pointwise_group_conv_cuda(const at::Tensor& x_in, const at::Tensor& weight_in,
                                     const std::optional<at::Tensor>& bias_in, int64_t groups,
                                     int64_t input_shuffle, int64_t output_shuffle, bool relu,
                                     const std::optional<at::Tensor>& residual_in) {
  const ConvProblem p = check_pointwise_group_conv(x_in, weight_in, bias_in, groups, input_shuffle,
                                                   output_shuffle, residual_in);
  const DType dtype = kernel_dtype("pointwise_group_conv (CUDA)", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::MemoryFormat format = x_in.suggest_memory_format();
  at::Tensor y = at::empty({p.batch, p.out_channels, p.height, p.width},
                           x_in.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  // Read at the output's offsets, so dense in the output's layout.
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous(format) : at::Tensor();
  ForwardParams params;
  params.shape = conv_shape(p, format);
  params.x = x.const_data_ptr();
  params.weight = weight.const_data_ptr();
  params.bias = bias.defined() ? bias.const_data_ptr() : nullptr;
  params.residual = residual.defined() ? residual.const_data_ptr() : nullptr;
  params.y = y.mutable_data_ptr();
  params.relu = relu;
  check_launch(launch_pointwise_group_conv(params, dtype, current_stream(x)));
  return y;
}

at::Tensor grad_input_cuda(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                           int64_t groups, int64_t input_shuffle, int64_t output_shuffle) {
  const ConvProblem p =
      check_grad_input(grad_out_in, weight_in, groups, input_shuffle, output_shuffle);
  const DType dtype = kernel_dtype("pointwise_group_conv_grad_input (CUDA)", grad_out_in);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::MemoryFormat format = grad_out_in.suggest_memory_format();
  at::Tensor grad_x = at::empty({p.batch, p.in_channels, p.height, p.width},
                                grad_out_in.options().memory_format(format));
  if (grad_x.numel() == 0) return grad_x;
  const at::Tensor grad_out = grad_out_in.contiguous(format);
  const at::Tensor weight = weight_in.contiguous();
  GradInputParams params;
  params.shape = conv_shape(p, format);
  params.grad_out = grad_out.const_data_ptr();
  params.weight = weight.const_data_ptr();
  params.grad_x = grad_x.mutable_data_ptr();
  check_launch(launch_grad_input(params, dtype, current_stream(grad_out)));
  return grad_x;
}

at::Tensor grad_weight_cuda(const at::Tensor& grad_out_in, const at::Tensor& x_in, int64_t groups,
                            int64_t input_shuffle, int64_t output_shuffle) {
  const ConvProblem p = check_grad_weight(grad_out_in, x_in, groups, input_shuffle, output_shuffle);
  const DType dtype = kernel_dtype("pointwise_group_conv_grad_weight (CUDA)", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t K = p.in_per_group();
  at::Tensor grad_weight = at::empty({p.out_channels, K, 1, 1}, x_in.options());
  if (grad_weight.numel() == 0) return grad_weight;
  const int64_t total_pixels = p.batch * p.pixels();
  if (total_pixels == 0) return grad_weight.zero_();
  // Both operands in one layout, chosen by x, the larger of the two.
  const at::MemoryFormat format = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor grad_out = grad_out_in.contiguous(format);
  const ReductionSplit split = reduction_split(total_pixels, grad_weight.numel());
  const at::Tensor workspace = at::empty({split.slices, p.out_channels, K},
                                         x.options().dtype(accumulation_type(x)));
  GradWeightParams params;
  params.shape = conv_shape(p, format);
  params.grad_out = grad_out.const_data_ptr();
  params.x = x.const_data_ptr();
  params.workspace = workspace.data_ptr();
  params.grad_weight = grad_weight.mutable_data_ptr();
  params.slices = split.slices;
  params.pixels_per_slice = split.pixels_per_slice;
  check_launch(launch_grad_weight(params, dtype, current_stream(x)));
  return grad_weight;
}

at::Tensor grad_bias_cuda(const at::Tensor& grad_out_in, int64_t output_shuffle) {
  check_grad_bias(grad_out_in, output_shuffle);
  const DType dtype = kernel_dtype("pointwise_group_conv_grad_bias (CUDA)", grad_out_in);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const int64_t batch = grad_out_in.size(0), channels = grad_out_in.size(1);
  const int64_t pixels = grad_out_in.size(2) * grad_out_in.size(3);
  at::Tensor grad_bias = at::empty({channels}, grad_out_in.options());
  if (channels == 0) return grad_bias;
  if (batch * pixels == 0) return grad_bias.zero_();
  const at::MemoryFormat format = grad_out_in.suggest_memory_format();
  const at::Tensor grad_out = grad_out_in.contiguous(format);
  const ReductionSplit split = reduction_split(batch * pixels, channels);
  const at::Tensor workspace =
      at::empty({split.slices, channels}, grad_out.options().dtype(accumulation_type(grad_out)));
  GradBiasParams params;
  params.batch = batch;
  params.channels = channels;
  params.pixels = pixels;
  params.output_shuffle = output_shuffle;
  params.channels_last = format == at::MemoryFormat::ChannelsLast;
  params.grad_out = grad_out.const_data_ptr();
  params.workspace = workspace.data_ptr();
  params.grad_bias = grad_bias.mutable_data_ptr();
  params.slices = split.slices;
  params.pixels_per_slice = split.pixels_per_slice;
  check_launch(launch_grad_bias(params, dtype, current_stream(grad_out)));
  return grad_bias;
}

}  // namespace
}  // namespace shufflenet_ops::cuda

TORCH_LIBRARY_IMPL(shufflenet_ops, CUDA, m) {
  m.impl("channel_shuffle", &shufflenet_ops::cuda::channel_shuffle_cuda);
  m.impl("pointwise_group_conv", &shufflenet_ops::cuda::pointwise_group_conv_cuda);
  m.impl("pointwise_group_conv_grad_input", &shufflenet_ops::cuda::grad_input_cuda);
  m.impl("pointwise_group_conv_grad_weight", &shufflenet_ops::cuda::grad_weight_cuda);
  m.impl("pointwise_group_conv_grad_bias", &shufflenet_ops::cuda::grad_bias_cuda);
}
