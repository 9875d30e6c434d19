// Argument checks shared by every compiled backend (CPU and CUDA), so a
// registered op called directly through torch.ops rejects bad input before any
// kernel indexes memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>
#include <optional>

namespace shufflenet_ops {

// The sizes of one pointwise group convolution.
struct ConvProblem {
  int64_t batch = 0;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t groups = 1;
  int64_t input_shuffle = 1;
  int64_t output_shuffle = 1;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t pixels() const { return height * width; }
};

void check_channel_shuffle(const at::Tensor& x, int64_t groups);

ConvProblem check_pointwise_group_conv(const at::Tensor& x, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, int64_t groups,
                                       int64_t input_shuffle, int64_t output_shuffle,
                                       const std::optional<at::Tensor>& residual);

// A residual added to a conv's output of `output_sizes`: of that shape, on x's
// device, and in x's dtype unless `any_floating_dtype` (under autocast, where
// the sum is taken in the promoted dtype, as conv2d(...) + residual is).
void check_residual(const char* op, const at::Tensor& residual, const at::Tensor& x,
                    c10::IntArrayRef output_sizes, bool any_floating_dtype = false);

ConvProblem check_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t groups,
                             int64_t input_shuffle, int64_t output_shuffle);

ConvProblem check_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, int64_t groups,
                              int64_t input_shuffle, int64_t output_shuffle);

void check_grad_bias(const at::Tensor& grad_out, int64_t output_shuffle);

// x [N, C, H, W], weight [C, 1, 3, 3], bias [C] or none, stride 1 or 2.
void check_depthwise_conv3x3(const at::Tensor& x, const at::Tensor& weight,
                             const std::optional<at::Tensor>& bias, int64_t stride);

// x [N, C, H, W] floating point, stride 1 or 2.
void check_pool3x3(const at::Tensor& x, int64_t stride);

// x [N, C_in, H, W] with H, W > 0, weight [C_out, C_in, 3, 3], bias [C_out] or none.
void check_stem_conv3x3_maxpool(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias);

// Each backend states the dtypes its kernels implement.
void check_dtype_supported(const char* op, const at::Tensor& t,
                           std::initializer_list<at::ScalarType> supported);

// Where neither the op's kernel nor stock ATen computes t's dtype on t's device:
// a TypeError that names the dtype and what to do; `cause` is ATen's message.
[[noreturn]] void reject_uncomputable_dtype(const char* op, const at::Tensor& t, const char* cause);

}  // namespace shufflenet_ops
