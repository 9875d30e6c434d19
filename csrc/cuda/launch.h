// Host entry points of the CUDA kernels: torch-free, so the binding is the only
// file that sees both torch and CUDA. Each enqueues its kernels on `stream` and
// returns the launch status (cudaGetLastError after every launch).
#pragma once

#include "params.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

namespace shufflenet_ops::cuda {

cudaError_t launch_channel_shuffle(const ChannelShuffleParams& params, cudaStream_t stream);
cudaError_t launch_pointwise_group_conv(const ForwardParams& params, DType dtype,
                                        cudaStream_t stream);
cudaError_t launch_grad_input(const GradInputParams& params, DType dtype, cudaStream_t stream);
cudaError_t launch_grad_weight(const GradWeightParams& params, DType dtype, cudaStream_t stream);
cudaError_t launch_grad_bias(const GradBiasParams& params, DType dtype, cudaStream_t stream);

// How grad_weight and grad_bias split their reduction over N * H * W into
// pixel slices: a function of the sizes alone (never of the device), so the
// summation order, and with it every bit of the result, is fixed. Slices give
// the grid enough blocks; the [slices, outputs] workspace stays under 2^22
// elements.
struct ReductionSplit {
  int64_t slices;
  int64_t pixels_per_slice;
};

inline ReductionSplit reduction_split(int64_t total_pixels, int64_t outputs) {
  constexpr int64_t kPixelsPerSlice = 2048;
  constexpr int64_t kMaxSlices = 256;
  constexpr int64_t kMaxWorkspaceElements = int64_t{1} << 22;
  int64_t slices = (total_pixels + kPixelsPerSlice - 1) / kPixelsPerSlice;
  slices = std::min({slices, kMaxSlices, kMaxWorkspaceElements / std::max<int64_t>(outputs, 1)});
  slices = std::max<int64_t>(slices, 1);
  const int64_t per_slice = (total_pixels + slices - 1) / slices;
  return {slices, std::max<int64_t>(per_slice, 1)};
}

}  // namespace shufflenet_ops::cuda
