// CPU kernel of the depthwise 3x3 convolution (padding 1, stride 1 or 2),
// with optional bias and ReLU: the ShuffleNet unit's middle layer, BatchNorm
// folded in.
//
// NCHW: each task computes a band of output rows of one channel plane flat,
// one vector spanning a stretch of output pixels in row-major order, from a
// widened copy of the band's input rows that makes every tap one offset
// (details below).
//
// channels_last: vectors run along C. Each output pixel is the sum of nine
// taps of contiguous channel vectors times per-channel weight vectors; a tap
// outside the image reads a zero vector instead.
//
// Other strides are made dense in the suggested format. Dtypes other than
// float32, float64 and bfloat16 run the stock ATen convolution.
#include "../validation.h"
#include "accumulator_copy.h"
#include "parallel.h"
#include "simd.h"
#include "stock_computation.h"
#include "window3x3.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

constexpr const char* kOp = "depthwise_conv3x3 (CPU)";
constexpr int kTaps = 9;

// Output pixels per thread at least: below this, waking a second thread costs
// more than it saves.
constexpr int64_t kMinPixelsPerThread = 4096;
// Widened input rows of one NCHW task stay in L1.
constexpr int64_t kBandBytes = 16 * 1024;

template <typename T>
struct DepthwiseParams : Window3x3Shape {
  const T* x;
  const acc_t<T>* weight;  // [C][9]
  const acc_t<T>* bias;    // [C], or null
  T* y;
  bool relu;
};

template <typename V>
inline V activate(V v, bool relu) {
  // Keeps NaN, as F.relu does.
  return relu ? (v < 0 ? V{} : v) : v;
}

// One channel's nine tap weights and bias, broadcast to vectors.
template <typename T>
struct ChannelWeights {
  vec_t<T> tap[kTaps];
  vec_t<T> bias;

  ChannelWeights(const DepthwiseParams<T>& p, int64_t c) {
    for (int t = 0; t < kTaps; ++t) tap[t] = vec_t<T>{} + p.weight[c * kTaps + t];
    bias = vec_t<T>{} + (p.bias ? p.bias[c] : acc_t<T>(0));
  }
};

template <typename T>
using lane_mask_t = decltype(vec_t<T>{} < vec_t<T>{});

// The NCHW output vector at flat position q of a band (below). Kernel row kh reads its centre
// tap at centre[kh] + q and its left and right taps at side[kh] + q - 1 and side[kh] + q + 1
// (stride 1: one source, centre = side) or side[kh] + q (stride 2: the centre reads the even
// column phase, the sides the odd one). The left (right) taps read zero in the lanes where
// not_first (not_last) is clear: output pixels at the first (last) column of a row, whose
// neighbour would wrap into the next row. Stride 2's right taps never wrap.
template <typename T, int kStride>
inline vec_t<T> output_vector(const acc_t<T>* const centre[3], const acc_t<T>* const side[3], int64_t q,
                              const ChannelWeights<T>& w, bool relu, lane_mask_t<T> not_first,
                              lane_mask_t<T> not_last) {
  using V = vec_t<T>;
  // One accumulator per kernel row: three short FMA chains instead of one long one.
  V acc[3];
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    V left, middle, right;
    std::memcpy(&left, side[kh] + q - 1, sizeof left);
    std::memcpy(&middle, centre[kh] + q, sizeof middle);
    std::memcpy(&right, side[kh] + q + (kStride == 1 ? 1 : 0), sizeof right);
    left = not_first ? left : V{};
    if constexpr (kStride == 1) right = not_last ? right : V{};
    acc[kh] = (kh == 0 ? w.bias : V{}) + w.tap[kh * 3] * left;
    acc[kh] += w.tap[kh * 3 + 1] * middle;
    acc[kh] += w.tap[kh * 3 + 2] * right;
  }
  return activate(acc[0] + acc[1] + acc[2], relu);
}

// ---------------------------------------------------------------- NCHW

// Each task computes a band of output rows of one channel plane flat: vector i
// holds the band's output pixels i * L ... i * L + L - 1 in row-major order
// (spanning rows when the image is narrower than a vector, none left idle at a
// row's end), and each tap reads its source at one flat offset from the output
// position. The sources are the band's input rows widened into a buffer with
// the row above and below (zero at the image's edge): as they are at stride 1;
// split into their four (row, column) parity phases, each of the output's
// width, at stride 2. A tap stepping one column left (or right) would wrap into
// the neighbouring row at a row's first (last) column; a lane mask per vector,
// the same for every band, zeroes those reads.
template <typename T>
struct BandPlan {
  int64_t rows;     // output rows per band
  int64_t bands;    // per plane
  int64_t lead;     // elements of each source before the band's first output row
  int64_t span;     // elements of each source
  int sources;
  // Per vector of a band: lanes whose output column is not the first / not the last.
  std::vector<lane_mask_t<T>> not_first_column, not_last_column;

  explicit BandPlan(const Window3x3Shape& s) {
    constexpr int L = kLanes<T>;
    const int64_t w = s.out_w;
    sources = s.stride == 1 ? 1 : 4;
    // One row back and one element more (the left tap of the first pixel); at stride 1 as far
    // ahead, and the last vector reaches up to L - 1 past the band.
    lead = w + 1;
    const int64_t extra = lead + L + w + 1;
    const int64_t budget = kBandBytes / static_cast<int64_t>(sizeof(acc_t<T>)) / sources;
    rows = std::clamp<int64_t>((budget - extra) / std::max<int64_t>(w, 1), 1, s.out_h);
    bands = (s.out_h + rows - 1) / rows;
    const int64_t vectors = (rows * w + L - 1) / L;
    span = lead + vectors * L + w + 1;
    not_first_column.resize(vectors);
    not_last_column.resize(vectors);
    // The column is counted, not computed as a remainder: a division per lane costs
    // microseconds at 28x28, on the critical path before the threads start.
    int64_t column = 0;
    for (int64_t i = 0; i < vectors; ++i) {
      for (int lane = 0; lane < L; ++lane) {
        not_first_column[i][lane] = column != 0 ? -1 : 0;
        not_last_column[i][lane] = column != w - 1 ? -1 : 0;
        if (++column == w) column = 0;
      }
    }
  }
};

// count elements from src to dst, widened to the accumulation type.
template <typename T>
void widen(const T* src, int64_t count, acc_t<T>* dst) {
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  int64_t i = 0;
  for (; i + L <= count; i += L) {
    const V v = load_vec(src + i);
    std::memcpy(dst + i, &v, sizeof v);
  }
  if (i < count) store_vec_partial<acc_t<T>>(dst + i, load_vec_partial(src + i, count - i), count - i);
}

// An input row's even and odd columns, widened (an odd column past the row is zero).
template <typename T>
void split_columns(const T* row, int64_t in_w, acc_t<T>* even, acc_t<T>* odd) {
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  for (int64_t i = 0; i < in_w; i += 2 * L) {
    const int64_t count = std::min<int64_t>(2 * L, in_w - i);
    const V low = count >= L ? load_vec(row + i) : load_vec_partial(row + i, count);
    const V high = count == 2 * L ? load_vec(row + i + L)
                   : count > L    ? load_vec_partial(row + i + L, count - L)
                                  : V{};
    const int64_t pairs = (count + 1) / 2;
    store_vec_partial<acc_t<T>>(even + i / 2, every_other_lane<0>(low, high), pairs);
    store_vec_partial<acc_t<T>>(odd + i / 2, every_other_lane<1>(low, high), pairs);
  }
}

// Fills the sources of output rows [oh0, oh1) of one plane. Source s starts at
// buffer + s * span; its row r (r = -1 the row above) at + lead + r * out_w.
template <typename T>
void fill_band(const DepthwiseParams<T>& p, const BandPlan<T>& plan, const T* x_plane, int64_t oh0,
               int64_t oh1, acc_t<T>* buffer) {
  using A = acc_t<T>;
  const int64_t w = p.out_w;
  const auto row = [&](int source, int64_t r) { return buffer + source * plan.span + plan.lead + r * w; };
  if (p.stride == 1) {
    for (int64_t ih = oh0 - 1; ih <= oh1; ih += oh1 - oh0 + 1) {  // the rows above and below
      if (ih < 0 || ih >= p.in_h) {
        std::fill(row(0, ih - oh0), row(0, ih - oh0) + w, A(0));
      } else {
        widen(x_plane + ih * w, w, row(0, ih - oh0));
      }
    }
    widen(x_plane + oh0 * w, (oh1 - oh0) * w, row(0, 0));
    return;
  }
  // Sources: even input rows (even, odd columns), odd input rows (even, odd columns). Kernel
  // row 0 of output row oh reads odd input row 2 oh - 1, row -1 of the odd-row phases.
  for (int64_t oh = oh0 - 1; oh < oh1; ++oh) {
    const int64_t r = oh - oh0;
    if (oh >= oh0) split_columns(x_plane + 2 * oh * p.in_w, p.in_w, row(0, r), row(1, r));
    if (oh >= 0 && 2 * oh + 1 < p.in_h) {
      split_columns(x_plane + (2 * oh + 1) * p.in_w, p.in_w, row(2, r), row(3, r));
    } else {
      std::fill(row(2, r), row(2, r) + w, A(0));
      std::fill(row(3, r), row(3, r) + w, A(0));
    }
  }
}

template <typename T, int kStride>
void forward_nchw(const DepthwiseParams<T>& p) {
  using A = acc_t<T>;
  constexpr int L = kLanes<T>;
  const BandPlan<T> plan(p);
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w, w = p.out_w;
  const int64_t grain = grain_for(plan.rows * w, kMinPixelsPerThread);
  at::parallel_for(0, p.batch * p.channels * plan.bands, grain, [&](int64_t begin, int64_t end) {
    // What no band writes (the margins past the last vector) stays zero.
    std::vector<A> buffer(plan.sources * plan.span, A(0));
    const auto source = [&](int s, int64_t r) { return buffer.data() + s * plan.span + plan.lead + r * w; };
    const A* centre[3];
    const A* side[3];
    for (int kh = 0; kh < 3; ++kh) {
      if (kStride == 1) {
        centre[kh] = side[kh] = source(0, kh - 1);
      } else {
        const int phase = kh == 1 ? 0 : 2;
        centre[kh] = source(phase, kh == 0 ? -1 : 0);
        side[kh] = source(phase + 1, kh == 0 ? -1 : 0);
      }
    }
    const lane_mask_t<T>* not_first = plan.not_first_column.data();
    const lane_mask_t<T>* not_last = plan.not_last_column.data();
    const bool relu = p.relu;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / plan.bands;
      const int64_t oh0 = task % plan.bands * plan.rows, oh1 = std::min(p.out_h, oh0 + plan.rows);
      fill_band(p, plan, p.x + plane * in_plane, oh0, oh1, buffer.data());
      const ChannelWeights<T> weights(p, plane % p.channels);
      T* y_band = p.y + plane * out_plane + oh0 * w;
      const int64_t pixels = (oh1 - oh0) * w;
      for (int64_t q = 0, i = 0; q < pixels; q += L, ++i) {
        const vec_t<T> out = output_vector<T, kStride>(centre, side, q, weights, relu, not_first[i], not_last[i]);
        if (q + L <= pixels) {
          store_vec(y_band + q, out);
        } else {
          store_vec_partial(y_band + q, out, pixels - q);
        }
      }
    }
  });
}

// ---------------------------------------------------------------- channels_last

template <typename T, bool kPartial>
void forward_channels_last_block(const DepthwiseParams<T>& p, const acc_t<T>* packed_weight,
                                 const acc_t<T>* packed_bias, const T* zeros, const T* rows[3],
                                 int64_t c0, T* y_row) {
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  const int64_t C = p.channels;
  const int64_t weight_stride = round_up(C, L);
  V wv[kTaps];
  for (int t = 0; t < kTaps; ++t) std::memcpy(&wv[t], packed_weight + t * weight_stride + c0, sizeof(V));
  V bias;
  std::memcpy(&bias, packed_bias + c0, sizeof bias);
  for (int64_t ow = 0; ow < p.out_w; ++ow) {
    V acc = bias;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t iw = p.stride * ow - 1 + kw;
      const bool column_inside = iw >= 0 && iw < p.in_w;
#pragma GCC unroll 3
      for (int kh = 0; kh < 3; ++kh) {
        const T* src = column_inside && rows[kh] ? rows[kh] + iw * C + c0 : zeros;
        const V in = kPartial ? load_vec_partial(src, C) : load_vec(src);
        acc += wv[kh * 3 + kw] * in;
      }
    }
    acc = activate(acc, p.relu);
    if (kPartial) {
      store_vec_partial(y_row + ow * C + c0, acc, C);
    } else {
      store_vec(y_row + ow * C + c0, acc);
    }
  }
}

template <typename T>
void forward_channels_last(const DepthwiseParams<T>& p) {
  using A = acc_t<T>;
  constexpr int L = kLanes<T>;
  const int64_t C = p.channels;
  // Weights transposed to [9][C padded], bias padded: the per-channel vectors.
  const int64_t weight_stride = round_up(C, L);
  std::vector<A> packed_weight(kTaps * weight_stride, A(0)), packed_bias(weight_stride, A(0));
  for (int64_t c = 0; c < C; ++c) {
    for (int t = 0; t < kTaps; ++t) packed_weight[t * weight_stride + c] = p.weight[c * kTaps + t];
    // The sum starts at +0, as in the NCHW path and the GEMM kernels: a sum of
    // zeros is then +0.0 whatever their signs (a bias of -0.0 included), as
    // ATen's channels_last convolution gives it.
    if (p.bias) packed_bias[c] = p.bias[c] + A(0);
  }
  const std::vector<T> zeros(std::max<int64_t>(C, L), T(0));
  // Channel vectors: full ones, the last overlapping its neighbour when C is
  // not a multiple of the width (its channels are recomputed identically).
  std::vector<int64_t> block_starts;
  for (int64_t c0 = 0; c0 + L <= C; c0 += L) block_starts.push_back(c0);
  if (C >= L && C % L) block_starts.push_back(C - L);
  const bool partial = C < L;
  const int64_t grain = grain_for(p.out_w, kMinPixelsPerThread);
  at::parallel_for(0, p.batch * p.out_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.out_h, oh = task % p.out_h;
      const T* rows[3];
      for (int kh = 0; kh < 3; ++kh) {
        const int64_t ih = p.stride * oh - 1 + kh;
        rows[kh] = ih >= 0 && ih < p.in_h ? p.x + (n * p.in_h + ih) * p.in_w * C : nullptr;
      }
      T* y_row = p.y + task * p.out_w * C;
      if (partial) {
        forward_channels_last_block<T, true>(p, packed_weight.data(), packed_bias.data(),
                                             zeros.data(), rows, 0, y_row);
        continue;
      }
      for (int64_t c0 : block_starts)
        forward_channels_last_block<T, false>(p, packed_weight.data(), packed_bias.data(),
                                              zeros.data(), rows, c0, y_row);
    }
  });
}

// ---------------------------------------------------------------- binding

at::Tensor depthwise_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, int64_t stride, bool relu) {
  check_depthwise_conv3x3(x_in, weight, bias, stride);
  const Window3x3Problem problem = window3x3_problem(x_in, stride);
  const at::Tensor& x = problem.x;
  const at::Tensor& y = problem.y;
  if (y.numel() == 0) return y;
  if (!has_vectorized_kernel(x)) {
    // reference.depthwise_conv3x3
    return stock_computation(kOp, x, problem.format, [&] {
      const at::Tensor conv = at::conv2d(x, weight, bias, {stride, stride}, {1, 1}, {1, 1}, x.size(1));
      return relu ? at::relu(conv) : conv;
    });
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "depthwise_conv3x3_cpu", [&] {
    const std::vector<acc_t<scalar_t>> w = accumulator_copy<scalar_t>(weight);
    const std::vector<acc_t<scalar_t>> b = accumulator_copy<scalar_t>(bias);
    const DepthwiseParams<scalar_t> p{problem.shape, x.const_data_ptr<scalar_t>(), w.data(),
                                      b.empty() ? nullptr : b.data(), y.mutable_data_ptr<scalar_t>(), relu};
    if (problem.format == at::MemoryFormat::ChannelsLast) {
      forward_channels_last(p);
    } else if (stride == 1) {
      forward_nchw<scalar_t, 1>(p);
    } else {
      forward_nchw<scalar_t, 2>(p);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("depthwise_conv3x3", &depthwise_conv3x3_cpu); }

}  // namespace shufflenet_ops::cpu
