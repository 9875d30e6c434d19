// CUDA grad_weight of the fused pointwise group convolution, deterministic:
// per group j and pixel slice s,
//   partial[s, j M + m, k] = sum_{q in slice s} grad_out[out_channel(j M + m), q] x[in_channel(j K + k), q]
// as a gathered GEMM whose reduction runs over pixels, then a second kernel adds
// the slices in order. No atomics: the bits depend on the sizes alone.
#include "../kernels/shuffle_index.h"
#include "gathered_gemm.cuh"
#include "launch.h"

namespace shufflenet_ops::cuda {
namespace {

template <typename T_, bool kChannelsLast>
struct GradWeightProblem {
  using T = T_;
  using Acc = acc_t<T>;
  // NCHW rows are pixel runs of one channel; channels_last rows are channel runs of one pixel.
  static constexpr bool kADepthFast = !kChannelsLast;
  static constexpr bool kBDepthFast = !kChannelsLast;
  static constexpr bool kStoreRowFast = false;  // the workspace is [slice][C_out][K]

  TileGrid grid;
  ConvShape shape;
  ActivationIndex<kChannelsLast> in, out;
  int64_t K, M, pixels_per_slice;
  const T* a;  // grad_out
  const T* b;  // x
  Acc* workspace;

  __host__ __device__ int64_t rows() const { return M; }
  __host__ __device__ int64_t cols() const { return K; }
  __device__ void depth_range(const TileCoord& tc, int64_t& begin, int64_t& end) const {
    const int64_t total = shape.batch * shape.pixels;
    begin = std::min(total, tc.slice * pixels_per_slice);
    end = std::min(total, begin + pixels_per_slice);
  }
  __device__ int64_t a_row(const TileCoord& tc, int64_t m) const {
    return out.channel_offset(
        shuffle_destination_channel(tc.group * M + m, shape.output_shuffle, shape.out_channels));
  }
  __device__ int64_t a_depth(const TileCoord&, int64_t q) const { return out.pixel_offset(q); }
  __device__ int64_t b_depth(const TileCoord&, int64_t q) const { return in.pixel_offset(q); }
  __device__ int64_t b_col(const TileCoord& tc, int64_t k) const {
    return in.channel_offset(
        shuffle_source_channel(tc.group * K + k, shape.input_shuffle, shape.in_channels));
  }
  __device__ int64_t out_row(const TileCoord& tc, int64_t m) const {
    return (tc.slice * shape.out_channels + tc.group * M + m) * K;
  }
  __device__ int64_t out_col(const TileCoord&, int64_t k) const { return k; }
  __device__ void store(const TileCoord&, int64_t, int64_t offset, Acc v) const {
    workspace[offset] = v;
  }
};

// grad_weight[i] = sum over s, in order, of partial[s, i].
template <typename T>
__global__ void __launch_bounds__(256) sum_slices_kernel(const GradWeightParams p) {
  using Acc = acc_t<T>;
  const int64_t size = p.shape.out_channels * (p.shape.in_channels / p.shape.groups);
  const Acc* partial = static_cast<const Acc*>(p.workspace);
  T* out = static_cast<T*>(p.grad_weight);
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < size;
       i += int64_t{gridDim.x} * blockDim.x) {
    Acc sum = Acc(0);
    for (int64_t s = 0; s < p.slices; ++s) sum += partial[s * size + i];
    out[i] = Element<T>::from_acc(sum);
  }
}

template <typename T, bool kChannelsLast>
cudaError_t launch_typed(const GradWeightParams& p, cudaStream_t stream) {
  GradWeightProblem<T, kChannelsLast> problem{};
  problem.shape = p.shape;
  problem.in = {p.shape.in_channels, p.shape.pixels};
  problem.out = {p.shape.out_channels, p.shape.pixels};
  problem.K = p.shape.in_channels / p.shape.groups;
  problem.M = p.shape.out_channels / p.shape.groups;
  problem.pixels_per_slice = p.pixels_per_slice;
  problem.grid.groups = p.shape.groups;
  problem.grid.slices = p.slices;
  problem.a = static_cast<const T*>(p.grad_out);
  problem.b = static_cast<const T*>(p.x);
  problem.workspace = static_cast<acc_t<T>*>(p.workspace);
  const cudaError_t status = dispatch_tile_rows(problem.M, [&](auto rows) {
    return launch_gathered_gemm<GradWeightProblem<T, kChannelsLast>, decltype(rows)::value>(
        problem, stream);
  });
  if (status != cudaSuccess) return status;
  const int64_t size = problem.M * p.shape.groups * problem.K;
  if (size == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((size + 255) / 256, 65535));
  sum_slices_kernel<T><<<blocks, 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_grad_weight(const GradWeightParams& params, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto element) {
    using T = decltype(element);
    return params.shape.channels_last ? launch_typed<T, true>(params, stream)
                                      : launch_typed<T, false>(params, stream);
  });
}

}  // namespace shufflenet_ops::cuda
