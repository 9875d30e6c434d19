// The tiled GEMM behind the pointwise group convolution and its gradients.
//
// Every pass is, per group j, C[r, c] = sum_d A[r, d] * B[d, c] whose operands
// and result live at gathered addresses: A[r, d] = a[a_row(r) + a_depth(d)],
// B[d, c] = b[b_depth(d) + b_col(c)], C[r, c] -> out_row(r) + out_col(c). The
// channel shuffles and the NCHW / channels_last strides are folded into these
// offset functions, which a Problem (forward, grad_input, grad_weight) defines
// and the kernel evaluates once per tile row, column and depth step into
// shared-memory tables, so the inner loops do no index arithmetic.
//
// One block of kGemmThreads computes a kTileRows x kTileCols tile of one group:
// fp16 / bf16 on the tensor cores (WMMA, float accumulation), float and double
// with CUDA-core FMA in their own precision. The block walks the tiles in a
// grid-stride loop, so any number of tiles fits one launch.
#pragma once

#include "dtypes.cuh"

#include <mma.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace shufflenet_ops::cuda {

constexpr int kGemmThreads = 128;
constexpr int kTileCols = 64;

// Tensor-core fp16 and bf16 fragments need sm_80; older targets take the FMA path.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
constexpr bool kTensorCoresAvailable = false;
#else
constexpr bool kTensorCoresAvailable = true;
#endif

// The tile rows: the smallest of 16, 32 and 64 that covers `rows`, so narrow
// groups (ShuffleNet's have 12 to 100 channels) waste little arithmetic.
template <typename Body>
cudaError_t dispatch_tile_rows(int64_t rows, Body&& body) {
  if (rows <= 16) return body(std::integral_constant<int, 16>{});
  if (rows <= 32) return body(std::integral_constant<int, 32>{});
  return body(std::integral_constant<int, 64>{});
}

// Where tile t sits: its row tile varies fastest (tiles that share the B
// operand run together), then its column tile, group and reduction slice.
struct TileGrid {
  int64_t row_tiles = 0;
  int64_t col_tiles = 0;
  int64_t groups = 0;
  int64_t slices = 1;
  int tile_rows = 0;

  __host__ __device__ int64_t tiles() const { return row_tiles * col_tiles * groups * slices; }
};

struct TileCoord {
  int64_t group;
  int64_t row0;
  int64_t col0;
  int64_t slice;
};

__device__ __forceinline__ TileCoord tile_coord(const TileGrid& grid, int64_t t) {
  TileCoord tc;
  tc.row0 = (t % grid.row_tiles) * grid.tile_rows;
  t /= grid.row_tiles;
  tc.col0 = (t % grid.col_tiles) * kTileCols;
  t /= grid.col_tiles;
  tc.group = t % grid.groups;
  tc.slice = t / grid.groups;
  return tc;
}

template <typename T, int BM>
struct TileShape {
  static constexpr bool kTensorCore = Element<T>::kTensorCore;
  static constexpr int kRows = BM;
  static constexpr int kCols = kTileCols;
  static constexpr int kDepth = kTensorCore ? 32 : 16;
  // Row pitches in elements. WMMA needs 16-byte multiples; the FMA path pads by
  // one element so column-wise shared-memory accesses spread over the banks.
  static constexpr int kAPitch = kDepth + (kTensorCore ? 8 : 1);
  static constexpr int kBPitch = kCols + (kTensorCore ? 8 : 1);
  static constexpr int kCPitch = kCols + (sizeof(acc_t<T>) == 4 ? 4 : 1);
  static constexpr int kOperandBytes = (kRows * kAPitch + kDepth * kBPitch) * sizeof(T);
  static constexpr int kResultBytes = kRows * kCPitch * sizeof(acc_t<T>);
  static constexpr int kBytes = kOperandBytes > kResultBytes ? kOperandBytes : kResultBytes;
};

// CUDA-core tile math: 8 x 16 threads, each owning (BM / 8) x 4 results at
// rows ty + 8 i and columns tx + 16 j (strided, so a warp's shared loads of B
// hit consecutive banks and its loads of A are broadcasts).
template <typename T, int BM>
struct FmaTileMath {
  using S = TileShape<T, BM>;
  using Acc = acc_t<T>;
  static constexpr int kRowsPerThread = BM / 8;
  static constexpr int kColsPerThread = kTileCols / 16;
  Acc acc[kRowsPerThread][kColsPerThread];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j) acc[i][j] = Acc(0);
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int d = 0; d < S::kDepth; ++d) {
      Acc a[kRowsPerThread], b[kColsPerThread];
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i)
        a[i] = Element<T>::to_acc(As[(ty + 8 * i) * S::kAPitch + d]);
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j)
        b[j] = Element<T>::to_acc(Bs[d * S::kBPitch + tx + 16 * j]);
#pragma unroll
      for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
        for (int j = 0; j < kColsPerThread; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
  }

  __device__ __forceinline__ void store(Acc* Cs) const {
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
    for (int i = 0; i < kRowsPerThread; ++i)
#pragma unroll
      for (int j = 0; j < kColsPerThread; ++j)
        Cs[(ty + 8 * i) * S::kCPitch + tx + 16 * j] = acc[i][j];
  }
};

// Tensor-core tile math: warp w owns columns [16 w, 16 w + 16) and all BM rows,
// as BM / 16 accumulator fragments of 16 x 16 floats.
template <typename T, int BM>
struct WmmaTileMath {
  using S = TileShape<T, BM>;
  static constexpr int kFragments = BM / 16;
  static_assert(kGemmThreads / 32 * 16 == kTileCols, "one warp per 16 tile columns");
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[kFragments];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < kFragments; ++i) nvcuda::wmma::fill_fragment(acc[i], 0.0f);
  }

  __device__ __forceinline__ void step(const T* As, const T* Bs) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int k = 0; k < S::kDepth; k += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
      wmma::load_matrix_sync(b, Bs + k * S::kBPitch + warp * 16, S::kBPitch);
#pragma unroll
      for (int i = 0; i < kFragments; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, As + i * 16 * S::kAPitch + k, S::kAPitch);
        wmma::mma_sync(acc[i], a, b, acc[i]);
      }
    }
  }

  __device__ __forceinline__ void store(float* Cs) const {
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int i = 0; i < kFragments; ++i)
      nvcuda::wmma::store_matrix_sync(Cs + i * 16 * S::kCPitch + warp * 16, acc[i], S::kCPitch,
                                      nvcuda::wmma::mem_row_major);
  }
};

template <typename T, int BM>
using TileMath = std::conditional_t<Element<T>::kTensorCore && kTensorCoresAvailable,
                                    WmmaTileMath<T, BM>, FmaTileMath<T, BM>>;

// Problem interface (see the .cu file of each pass):
//   using T; TileGrid grid; const T* a; const T* b;
//   kADepthFast / kBDepthFast: whether the operand is contiguous along the
//     reduction index (else along rows of A / columns of B), which sets the
//     order in which a warp's threads load it, for coalescing;
//   kStoreRowFast: whether the result is contiguous along rows;
//   rows(), cols(), depth_range(tc, begin, end), a_row, a_depth, b_depth, b_col,
//   out_row, out_col, and store(tc, row, offset, value).
template <typename Problem, int BM>
__global__ void __launch_bounds__(kGemmThreads, 1) gathered_gemm_kernel(const Problem problem) {
  using T = typename Problem::T;
  using Acc = acc_t<T>;
  using S = TileShape<T, BM>;
  constexpr int BN = S::kCols, BK = S::kDepth;

  __shared__ __align__(128) unsigned char stage[S::kBytes];
  __shared__ int64_t a_row[BM], out_row[BM], b_col[BN], out_col[BN], a_depth[BK], b_depth[BK];
  T* As = reinterpret_cast<T*>(stage);
  T* Bs = As + BM * S::kAPitch;
  Acc* Cs = reinterpret_cast<Acc*>(stage);

  const int tid = threadIdx.x;
  const T zero = Element<T>::from_acc(Acc(0));
  const int64_t rows = problem.rows(), cols = problem.cols(), tiles = problem.grid.tiles();

  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const TileCoord tc = tile_coord(problem.grid, t);
    const int rows_valid = static_cast<int>(std::min<int64_t>(BM, rows - tc.row0));
    const int cols_valid = static_cast<int>(std::min<int64_t>(BN, cols - tc.col0));
    __syncthreads();  // the previous tile's epilogue has read the tables and Cs
    for (int i = tid; i < rows_valid; i += kGemmThreads) {
      a_row[i] = problem.a_row(tc, tc.row0 + i);
      out_row[i] = problem.out_row(tc, tc.row0 + i);
    }
    for (int i = tid; i < cols_valid; i += kGemmThreads) {
      b_col[i] = problem.b_col(tc, tc.col0 + i);
      out_col[i] = problem.out_col(tc, tc.col0 + i);
    }
    int64_t depth_begin, depth_end;
    problem.depth_range(tc, depth_begin, depth_end);

    TileMath<T, BM> math;
    math.zero();
    for (int64_t d0 = depth_begin; d0 < depth_end; d0 += BK) {
      const int depth_valid = static_cast<int>(std::min<int64_t>(BK, depth_end - d0));
      if (tid < depth_valid) {
        a_depth[tid] = problem.a_depth(tc, d0 + tid);
        b_depth[tid] = problem.b_depth(tc, d0 + tid);
      }
      __syncthreads();  // tables written; every warp is done with the last step's tiles
#pragma unroll 4
      for (int e = tid; e < BM * BK; e += kGemmThreads) {
        const int r = Problem::kADepthFast ? e / BK : e % BM;
        const int d = Problem::kADepthFast ? e % BK : e / BM;
        As[r * S::kAPitch + d] =
            (r < rows_valid && d < depth_valid) ? problem.a[a_row[r] + a_depth[d]] : zero;
      }
#pragma unroll 4
      for (int e = tid; e < BK * BN; e += kGemmThreads) {
        const int d = Problem::kBDepthFast ? e % BK : e / BN;
        const int c = Problem::kBDepthFast ? e / BK : e % BN;
        Bs[d * S::kBPitch + c] =
            (d < depth_valid && c < cols_valid) ? problem.b[b_depth[d] + b_col[c]] : zero;
      }
      __syncthreads();
      math.step(As, Bs);
    }
    __syncthreads();  // Cs overlays the operand tiles
    math.store(Cs);
    __syncthreads();
    for (int e = tid; e < BM * BN; e += kGemmThreads) {
      const int r = Problem::kStoreRowFast ? e % BM : e / BN;
      const int c = Problem::kStoreRowFast ? e / BM : e % BN;
      if (r < rows_valid && c < cols_valid)
        problem.store(tc, tc.row0 + r, out_row[r] + out_col[c], Cs[r * S::kCPitch + c]);
    }
  }
}

// Sets the tile grid of `problem` for BM-row tiles and launches the kernel.
template <typename Problem, int BM>
cudaError_t launch_gathered_gemm(Problem problem, cudaStream_t stream) {
  problem.grid.tile_rows = BM;
  problem.grid.row_tiles = (problem.rows() + BM - 1) / BM;
  problem.grid.col_tiles = (problem.cols() + kTileCols - 1) / kTileCols;
  const int64_t tiles = problem.grid.tiles();
  if (tiles == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(tiles, int64_t{1} << 30));
  gathered_gemm_kernel<Problem, BM><<<blocks, kGemmThreads, 0, stream>>>(problem);
  return cudaGetLastError();
}

// Channel and pixel offsets of a dense NCHW or channels_last activation.
template <bool kChannelsLast>
struct ActivationIndex {
  int64_t channels;
  int64_t pixels;  // H * W

  __host__ __device__ int64_t channel_offset(int64_t c) const {
    return kChannelsLast ? c : c * pixels;
  }
  // Offset of pixel q of the flattened N * H * W.
  __host__ __device__ int64_t pixel_offset(int64_t q) const {
    if (kChannelsLast) return q * channels;
    const int64_t n = q / pixels;
    return n * pixels * channels + (q - n * pixels);
  }
};

}  // namespace shufflenet_ops::cuda
