// Torch-free parameter structs of the CUDA kernels. The binding fills them from
// validated tensors; every kernel takes exactly one of them by value.
#pragma once

#include <cstdint>

namespace shufflenet_ops::cuda {

// The element types the kernels implement (the binding maps at::ScalarType).
enum class DType { kFloat32, kFloat64, kFloat16, kBFloat16 };

// Sizes of one pointwise group convolution. Activations are dense NCHW or dense
// channels_last; `channels_last` says which, for every activation of the call.
struct ConvShape {
  int64_t batch = 0;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t pixels = 0;  // H * W
  int64_t groups = 1;
  int64_t input_shuffle = 1;
  int64_t output_shuffle = 1;
  bool channels_last = false;
};

// y = act(channel_shuffle(conv(channel_shuffle(x, input_shuffle)) + bias, output_shuffle) + residual).
struct ForwardParams {
  ConvShape shape;
  const void* x = nullptr;         // [N, C_in, H, W]
  const void* weight = nullptr;    // [C_out, C_in / groups], dense
  const void* bias = nullptr;      // [C_out] or null
  const void* residual = nullptr;  // [N, C_out, H, W], same layout as y, or null
  void* y = nullptr;               // [N, C_out, H, W], same layout as x
  bool relu = false;
};

// grad_x for grad_out at the (shuffled) output.
struct GradInputParams {
  ConvShape shape;
  const void* grad_out = nullptr;  // [N, C_out, H, W]
  const void* weight = nullptr;    // [C_out, C_in / groups], dense
  void* grad_x = nullptr;          // [N, C_in, H, W], same layout as grad_out
};

// grad_weight, reduced over N * H * W in `slices` fixed pixel ranges whose
// partial sums land in `workspace` ([slices, C_out, C_in / groups] of the
// accumulation type: float, or double for float64) and are then added in slice
// order, so the result is bitwise reproducible.
struct GradWeightParams {
  ConvShape shape;
  const void* grad_out = nullptr;  // [N, C_out, H, W]
  const void* x = nullptr;         // [N, C_in, H, W], same layout as grad_out
  void* workspace = nullptr;
  void* grad_weight = nullptr;  // [C_out, C_in / groups], dense
  int64_t slices = 1;
  int64_t pixels_per_slice = 0;
};

// grad_bias[c] = sum of grad_out over N, H, W at the channel that conv channel
// c was shuffled to; reduced like grad_weight, through a [slices, C] workspace.
struct GradBiasParams {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t pixels = 0;
  int64_t output_shuffle = 1;
  bool channels_last = false;
  const void* grad_out = nullptr;
  void* workspace = nullptr;
  void* grad_bias = nullptr;  // [C]
  int64_t slices = 1;
  int64_t pixels_per_slice = 0;
};

// y[o, c, i] = x[o, shuffle_source_channel(c), i] over a dense [outer, C, inner]
// view (NCHW: outer = N, inner = H * W; channels_last: outer = N * H * W, inner = 1).
struct ChannelShuffleParams {
  int64_t outer = 0;
  int64_t channels = 0;
  int64_t inner = 0;
  int64_t groups = 1;
  int64_t element_size = 0;  // bytes: 1, 2, 4, 8 or 16 (a byte copy of any dtype)
  const void* x = nullptr;
  void* y = nullptr;
};

}  // namespace shufflenet_ops::cuda
