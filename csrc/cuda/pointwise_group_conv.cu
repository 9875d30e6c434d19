// CUDA forward of the fused pointwise group convolution: per group j,
// y[c] = act(bias[j M + m] + sum_k w[j M + m, k] x[in_channel(j K + k)] + residual[c])
// at c = out_channel(j M + m), with both channel shuffles folded into the
// gathered addressing.
#include "../kernels/shuffle_index.h"
#include "gathered_gemm.cuh"
#include "launch.h"

namespace shufflenet_ops::cuda {
namespace {

template <typename T_, bool kChannelsLast>
struct ForwardProblem {
  using T = T_;
  using Acc = acc_t<T>;
  static constexpr bool kADepthFast = true;  // weight rows are contiguous over k
  static constexpr bool kBDepthFast = kChannelsLast;
  static constexpr bool kStoreRowFast = kChannelsLast;

  TileGrid grid;
  ConvShape shape;
  ActivationIndex<kChannelsLast> in, out;
  int64_t K, M;
  const T* a;  // weight
  const T* b;  // x
  const T* bias;
  const T* residual;  // laid out like y
  T* y;
  bool relu;

  __host__ __device__ int64_t rows() const { return M; }
  __host__ __device__ int64_t cols() const { return shape.batch * shape.pixels; }
  __device__ void depth_range(const TileCoord&, int64_t& begin, int64_t& end) const {
    begin = 0;
    end = K;
  }
  __device__ int64_t a_row(const TileCoord& tc, int64_t m) const { return (tc.group * M + m) * K; }
  __device__ int64_t a_depth(const TileCoord&, int64_t k) const { return k; }
  __device__ int64_t b_depth(const TileCoord& tc, int64_t k) const {
    return in.channel_offset(
        shuffle_source_channel(tc.group * K + k, shape.input_shuffle, shape.in_channels));
  }
  __device__ int64_t b_col(const TileCoord&, int64_t q) const { return in.pixel_offset(q); }
  __device__ int64_t out_row(const TileCoord& tc, int64_t m) const {
    return out.channel_offset(
        shuffle_destination_channel(tc.group * M + m, shape.output_shuffle, shape.out_channels));
  }
  __device__ int64_t out_col(const TileCoord&, int64_t q) const { return out.pixel_offset(q); }
  __device__ void store(const TileCoord& tc, int64_t m, int64_t offset, Acc v) const {
    if (bias != nullptr) v += Element<T>::to_acc(bias[tc.group * M + m]);
    if (residual != nullptr) v += Element<T>::to_acc(residual[offset]);
    if (relu && v < Acc(0)) v = Acc(0);  // NaN passes through, as in F.relu
    y[offset] = Element<T>::from_acc(v);
  }
};

template <typename T, bool kChannelsLast>
cudaError_t launch_typed(const ForwardParams& p, cudaStream_t stream) {
  ForwardProblem<T, kChannelsLast> problem{};
  problem.shape = p.shape;
  problem.in = {p.shape.in_channels, p.shape.pixels};
  problem.out = {p.shape.out_channels, p.shape.pixels};
  problem.K = p.shape.in_channels / p.shape.groups;
  problem.M = p.shape.out_channels / p.shape.groups;
  problem.grid.groups = p.shape.groups;
  problem.a = static_cast<const T*>(p.weight);
  problem.b = static_cast<const T*>(p.x);
  problem.bias = static_cast<const T*>(p.bias);
  problem.residual = static_cast<const T*>(p.residual);
  problem.y = static_cast<T*>(p.y);
  problem.relu = p.relu;
  return dispatch_tile_rows(problem.M, [&](auto rows) {
    return launch_gathered_gemm<ForwardProblem<T, kChannelsLast>, decltype(rows)::value>(problem,
                                                                                        stream);
  });
}

}  // namespace

cudaError_t launch_pointwise_group_conv(const ForwardParams& params, DType dtype,
                                        cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto element) {
    using T = decltype(element);
    return params.shape.channels_last ? launch_typed<T, true>(params, stream)
                                      : launch_typed<T, false>(params, stream);
  });
}

}  // namespace shufflenet_ops::cuda
