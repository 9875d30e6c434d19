// CUDA grad_bias of the fused pointwise group convolution, deterministic: each
// block sums one pixel slice of its channels with a fixed thread-to-element map
// and a fixed tree, and a second kernel adds the slices in order.
#include "../kernels/shuffle_index.h"
#include "dtypes.cuh"
#include "launch.h"

#include <algorithm>

namespace shufflenet_ops::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChannelLanes = 32;                     // channels_last: channels per block
constexpr int kPixelLanes = kThreads / kChannelLanes;  // channels_last: pixels in flight

__device__ __forceinline__ void slice_range(const GradBiasParams& p, int64_t slice,
                                            int64_t& begin, int64_t& end) {
  const int64_t total = p.batch * p.pixels;
  begin = std::min(total, slice * p.pixels_per_slice);
  end = std::min(total, begin + p.pixels_per_slice);
}

// NCHW: block (channel, slice); the threads stride over the slice's pixels.
template <typename T>
__global__ void __launch_bounds__(kThreads) partial_sums_nchw_kernel(const GradBiasParams p) {
  using Acc = acc_t<T>;
  __shared__ Acc lane_sums[kThreads];
  const T* grad_out = static_cast<const T*>(p.grad_out);
  Acc* partial = static_cast<Acc*>(p.workspace);
  const int64_t blocks = p.channels * p.slices;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t c = b % p.channels, slice = b / p.channels;
    int64_t begin, end;
    slice_range(p, slice, begin, end);
    Acc sum = Acc(0);
    if (begin < end) {  // else there are no pixels, and no division by zero below
      int64_t q = begin + threadIdx.x;
      int64_t n = q / p.pixels, pixel = q - n * p.pixels;
      const int64_t n_step = kThreads / p.pixels, pixel_step = kThreads % p.pixels;
      for (; q < end; q += kThreads) {
        sum += Element<T>::to_acc(grad_out[(n * p.channels + c) * p.pixels + pixel]);
        n += n_step;
        pixel += pixel_step;
        if (pixel >= p.pixels) {
          pixel -= p.pixels;
          ++n;
        }
      }
    }
    lane_sums[threadIdx.x] = sum;
    __syncthreads();
    for (int width = kThreads / 2; width > 0; width /= 2) {
      if (threadIdx.x < width) lane_sums[threadIdx.x] += lane_sums[threadIdx.x + width];
      __syncthreads();
    }
    if (threadIdx.x == 0) partial[slice * p.channels + c] = lane_sums[0];
    __syncthreads();
  }
}

// channels_last: block (32-channel tile, slice); a warp reads 32 adjacent
// channels of one pixel.
template <typename T>
__global__ void __launch_bounds__(kThreads) partial_sums_channels_last_kernel(
    const GradBiasParams p) {
  using Acc = acc_t<T>;
  __shared__ Acc lane_sums[kPixelLanes][kChannelLanes];
  const T* grad_out = static_cast<const T*>(p.grad_out);
  Acc* partial = static_cast<Acc*>(p.workspace);
  const int lane = threadIdx.x % kChannelLanes, row = threadIdx.x / kChannelLanes;
  const int64_t channel_tiles = (p.channels + kChannelLanes - 1) / kChannelLanes;
  const int64_t blocks = channel_tiles * p.slices;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t c = (b % channel_tiles) * kChannelLanes + lane, slice = b / channel_tiles;
    int64_t begin, end;
    slice_range(p, slice, begin, end);
    Acc sum = Acc(0);
    if (c < p.channels) {
      for (int64_t q = begin + row; q < end; q += kPixelLanes)
        sum += Element<T>::to_acc(grad_out[q * p.channels + c]);
    }
    lane_sums[row][lane] = sum;
    __syncthreads();
    if (row == 0 && c < p.channels) {
      Acc total = Acc(0);
      for (int r = 0; r < kPixelLanes; ++r) total += lane_sums[r][lane];
      partial[slice * p.channels + c] = total;
    }
    __syncthreads();
  }
}

// grad_bias[conv channel] = sum over slices, in order, of the partial sums of
// the grad_out channel it was shuffled to.
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_slices_kernel(const GradBiasParams p) {
  using Acc = acc_t<T>;
  const Acc* partial = static_cast<const Acc*>(p.workspace);
  T* grad_bias = static_cast<T*>(p.grad_bias);
  for (int64_t c = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; c < p.channels;
       c += int64_t{gridDim.x} * blockDim.x) {
    const int64_t physical = shuffle_destination_channel(c, p.output_shuffle, p.channels);
    Acc sum = Acc(0);
    for (int64_t s = 0; s < p.slices; ++s) sum += partial[s * p.channels + physical];
    grad_bias[c] = Element<T>::from_acc(sum);
  }
}

unsigned grid_size(int64_t blocks) {
  return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 30));
}

template <typename T>
cudaError_t launch_typed(const GradBiasParams& p, cudaStream_t stream) {
  if (p.channels == 0) return cudaSuccess;
  if (p.channels_last) {
    const int64_t channel_tiles = (p.channels + kChannelLanes - 1) / kChannelLanes;
    partial_sums_channels_last_kernel<T>
        <<<grid_size(channel_tiles * p.slices), kThreads, 0, stream>>>(p);
  } else {
    partial_sums_nchw_kernel<T><<<grid_size(p.channels * p.slices), kThreads, 0, stream>>>(p);
  }
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  sum_slices_kernel<T><<<grid_size((p.channels + kThreads - 1) / kThreads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_grad_bias(const GradBiasParams& params, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto element) {
    return launch_typed<decltype(element)>(params, stream);
  });
}

}  // namespace shufflenet_ops::cuda
