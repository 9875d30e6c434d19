// CPU kernel of the depthwise 3x3 convolution (padding 1, stride 1 or 2),
// with optional bias and ReLU: the ShuffleNet unit's middle layer, BatchNorm
// folded in.
//
// NCHW: vectors run along W. Each task widens a band of input rows of one
// channel plane into a zero-bordered float buffer (the conv padding, and for
// stride 2 the even and odd columns split apart), so every output vector is
// nine unaligned contiguous loads from that buffer, borders and stride 2
// included.
//
// NCHW images narrower than a vector: each plane is computed flat, one vector
// spanning several output rows, from copies that make every tap one offset.
//
// channels_last: vectors run along C. Each output pixel is the sum of nine
// taps of contiguous channel vectors times per-channel weight vectors; a tap
// outside the image reads a zero vector instead.
//
// Other strides are made dense in the suggested format.
#include "../validation.h"
#include "accumulator_copy.h"
#include "parallel.h"
#include "simd.h"
#include "window3x3.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
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

// The output vector whose tap t starts at taps[t] + q, in a widened (accumulation-type) buffer.
template <typename T>
inline vec_t<T> output_vector(const acc_t<T>* const taps[kTaps], int64_t q, const ChannelWeights<T>& w,
                              bool relu) {
  using V = vec_t<T>;
  // One accumulator per kernel row: three short FMA chains instead of one long one.
  V acc[3];
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    acc[kh] = kh == 0 ? w.bias : V{};
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      V in;
      std::memcpy(&in, taps[kh * 3 + kw] + q, sizeof in);
      acc[kh] += w.tap[kh * 3 + kw] * in;
    }
  }
  return activate(acc[0] + acc[1] + acc[2], relu);
}

// ---------------------------------------------------------------- NCHW

// Widened row layout: stride 1 holds padded columns 0 .. W+1 (column c is
// input column c - 1); stride 2 holds the even padded columns, then from
// `half` on the odd ones, so output column o reads even[o], odd[o], even[o + 1].
struct RowLayout {
  int64_t half;    // length of one column phase
  int64_t length;  // whole row
  int64_t tap_offset[3];

  RowLayout(int64_t out_w, int64_t stride, int64_t lanes) {
    half = round_up(out_w, lanes) + lanes;
    if (stride == 1) {
      length = half;
      tap_offset[0] = 0, tap_offset[1] = 1, tap_offset[2] = 2;
    } else {
      length = 2 * half;
      tap_offset[0] = 0, tap_offset[1] = half, tap_offset[2] = 1;
    }
  }
};

// Writes only the positions that hold input values: the task's band buffer is
// zeroed once, so the padding columns stay zero for every plane.
template <typename T>
void widen_row(const T* src, int64_t in_w, int64_t stride, const RowLayout& layout, acc_t<T>* dst) {
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  if (stride == 1) {
    // Vector copies and a short scalar tail: narrow rows cost no library calls.
    int64_t i = 0;
    for (; i + L <= in_w; i += L) {
      const V v = load_vec(src + i);
      std::memcpy(dst + 1 + i, &v, sizeof v);
    }
    for (; i < in_w; ++i) dst[1 + i] = load_scalar(src + i);
    return;
  }
  // Padded column 2j is input column 2j - 1; padded column 2j + 1 is input column 2j.
  acc_t<T>* even = dst;
  acc_t<T>* odd = dst + layout.half;
  for (int64_t j = 1; j < in_w / 2 + 1; ++j) even[j] = load_scalar(src + 2 * j - 1);
  for (int64_t j = 0; j < (in_w + 1) / 2; ++j) odd[j] = load_scalar(src + 2 * j);
}

template <typename T>
void forward_nchw(const DepthwiseParams<T>& p) {
  using A = acc_t<T>;
  constexpr int L = kLanes<T>;
  const RowLayout layout(p.out_w, p.stride, L);
  // Output rows per task: their input rows fit the band buffer.
  const int64_t band_rows = std::clamp<int64_t>(
      kBandBytes / (layout.length * static_cast<int64_t>(sizeof(A)) * p.stride), 1, p.out_h);
  const int64_t bands = (p.out_h + band_rows - 1) / band_rows;
  const int64_t pixels_per_task = band_rows * p.out_w;
  const int64_t grain = grain_for(pixels_per_task, kMinPixelsPerThread);
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  at::parallel_for(0, p.batch * p.channels * bands, grain, [&](int64_t begin, int64_t end) {
    const int64_t max_rows = p.stride * (band_rows - 1) + 3;
    std::vector<A> band(max_rows * layout.length, A(0));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands, c = plane % p.channels;
      const int64_t oh0 = task % bands * band_rows, oh1 = std::min(p.out_h, oh0 + band_rows);
      // Padded row r is input row r - 1.
      const int64_t r0 = p.stride * oh0, r1 = p.stride * (oh1 - 1) + 3;
      const T* x_plane = p.x + plane * in_plane;
      for (int64_t r = r0; r < r1; ++r) {
        A* dst = band.data() + (r - r0) * layout.length;
        const int64_t ih = r - 1;
        if (ih < 0 || ih >= p.in_h) {
          // An earlier task may have left input values in this row.
          std::fill(dst, dst + layout.length, A(0));
        } else {
          widen_row(x_plane + ih * p.in_w, p.in_w, p.stride, layout, dst);
        }
      }
      const ChannelWeights<T> weights(p, c);
      T* y_plane = p.y + plane * out_plane;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const A* taps[kTaps];
        for (int kh = 0; kh < 3; ++kh)
          for (int kw = 0; kw < 3; ++kw)
            taps[kh * 3 + kw] = band.data() + (p.stride * oh + kh - r0) * layout.length + layout.tap_offset[kw];
        T* y_row = y_plane + oh * p.out_w;
        // Rows are at least a vector wide here; a ragged last vector overlaps its
        // neighbour and rewrites identical values.
        for (int64_t ow = 0; ow < p.out_w; ow += L) {
          const int64_t start = std::min(ow, p.out_w - L);
          store_vec(y_row + start, output_vector(taps, start, weights, p.relu));
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
    if (p.bias) packed_bias[c] = p.bias[c];
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

// ---------------------------------------------------------------- NCHW, narrow

// NCHW images narrower than a vector (the 14x14 and 7x7 stages) would leave
// most lanes of a row vector idle. Here each plane is computed flat: one vector
// spans several output rows, and each tap reads its source at one flat offset.
// A stride-2 plane is first split into its (row, column) parity phases, each of
// the output's size. A tap that steps one column left or right reads a copy in
// which the column it would wrap into is zero; zero margins around every copy
// are the padding rows.
struct FlatTaps {
  int sources;            // source copies per plane
  int source[kTaps];      // which copy tap t reads
  int64_t offset[kTaps];  // at which flat offset from the output position

  FlatTaps(int64_t stride, int64_t out_w) {
    for (int kh = 0; kh < 3; ++kh) {
      for (int kw = 0; kw < 3; ++kw) {
        const int t = kh * 3 + kw;
        if (stride == 1) {
          // Copies: 0 as is, 1 without its last column (read one column left), 2 without its first.
          source[t] = kw == 1 ? 0 : kw == 0 ? 1 : 2;
          offset[t] = (kh - 1) * out_w + (kw - 1);
        } else {
          // Input row 2 * oh + kh - 1: kh = 1 is the even-row phase at oh, kh = 0 and 2 the odd one
          // at oh - 1 and oh; likewise for columns. Copies per row phase: 0 even columns, 1 odd
          // columns without the last, 2 odd columns.
          const int row_phase = kh == 1 ? 0 : 1, column_copy = kw == 1 ? 0 : kw == 0 ? 1 : 2;
          source[t] = row_phase * 3 + column_copy;
          offset[t] = (kh == 0 ? -out_w : 0) + (kw == 0 ? -1 : 0);
        }
      }
    }
    sources = stride == 1 ? 3 : 6;
  }
};

template <typename T>
void fill_flat_sources(const DepthwiseParams<T>& p, const T* x_plane, int64_t span, int64_t margin,
                       acc_t<T>* buffer) {
  using A = acc_t<T>;
  const int64_t Ho = p.out_h, Wo = p.out_w;
  const auto copy = [&](int index) { return buffer + index * span + margin; };
  if (p.stride == 1) {
    A* plain = copy(0);
    for (int64_t q = 0; q < Ho * Wo; ++q) plain[q] = load_scalar(x_plane + q);
    std::copy(plain, plain + Ho * Wo, copy(1));
    std::copy(plain, plain + Ho * Wo, copy(2));
    for (int64_t oh = 0; oh < Ho; ++oh) copy(1)[oh * Wo + Wo - 1] = copy(2)[oh * Wo] = A(0);
    return;
  }
  for (int row_phase = 0; row_phase < 2; ++row_phase) {
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t ih = 2 * oh + row_phase;
      A* even = copy(row_phase * 3) + oh * Wo;
      A* odd_cut = copy(row_phase * 3 + 1) + oh * Wo;
      A* odd = copy(row_phase * 3 + 2) + oh * Wo;
      if (ih >= p.in_h) {
        std::fill(even, even + Wo, A(0));
        std::fill(odd_cut, odd_cut + Wo, A(0));
        std::fill(odd, odd + Wo, A(0));
        continue;
      }
      const T* row = x_plane + ih * p.in_w;
      // Whole column pairs first, a loop without branches; an odd width leaves one even column.
      const int64_t pairs = p.in_w / 2;
      for (int64_t ow = 0; ow < pairs; ++ow) {
        even[ow] = load_scalar(row + 2 * ow);
        odd[ow] = odd_cut[ow] = load_scalar(row + 2 * ow + 1);
      }
      if (pairs < Wo) even[pairs] = load_scalar(row + 2 * pairs), odd[pairs] = A(0);
      odd_cut[Wo - 1] = A(0);
    }
  }
}

template <typename T>
void forward_nchw_flat(const DepthwiseParams<T>& p) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  const FlatTaps taps(p.stride, p.out_w);
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  // Taps reach one row and one column either way, and the last vector runs up to L - 1 past the plane.
  const int64_t margin = p.out_w + 1, span = margin + out_plane + margin + L;
  const int64_t grain = grain_for(out_plane, kMinPixelsPerThread);
  at::parallel_for(0, p.batch * p.channels, grain, [&](int64_t begin, int64_t end) {
    // Margins stay zero; every plane rewrites the rest.
    std::vector<A> buffer(taps.sources * span, A(0));
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t c = plane % p.channels;
      fill_flat_sources(p, p.x + plane * in_plane, span, margin, buffer.data());
      const A* tap_base[kTaps];
      for (int t = 0; t < kTaps; ++t) tap_base[t] = buffer.data() + taps.source[t] * span + margin + taps.offset[t];
      const ChannelWeights<T> weights(p, c);
      T* y_plane = p.y + plane * out_plane;
      for (int64_t q = 0; q < out_plane; q += L) {
        const V out = output_vector(tap_base, q, weights, p.relu);
        if (q + L <= out_plane) {
          store_vec(y_plane + q, out);
        } else {
          store_vec_partial(y_plane + q, out, out_plane - q);
        }
      }
    }
  });
}

// ---------------------------------------------------------------- binding

at::Tensor depthwise_conv3x3_cpu(const at::Tensor& x_in, const at::Tensor& weight,
                                 const std::optional<at::Tensor>& bias, int64_t stride, bool relu) {
  check_depthwise_conv3x3(x_in, weight, bias, stride);
  check_dtype_supported(kOp, x_in, {at::kFloat, at::kDouble, at::kBFloat16});
  const Window3x3Problem problem = window3x3_problem(x_in, stride);
  const at::Tensor& x = problem.x;
  const at::Tensor& y = problem.y;
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "depthwise_conv3x3_cpu", [&] {
    const std::vector<acc_t<scalar_t>> w = accumulator_copy<scalar_t>(weight);
    const std::vector<acc_t<scalar_t>> b = accumulator_copy<scalar_t>(bias);
    const DepthwiseParams<scalar_t> p{problem.shape, x.const_data_ptr<scalar_t>(), w.data(),
                                      b.empty() ? nullptr : b.data(), y.mutable_data_ptr<scalar_t>(), relu};
    if (problem.format == at::MemoryFormat::ChannelsLast) {
      forward_channels_last(p);
    } else if (p.out_w < kLanes<scalar_t>) {
      forward_nchw_flat(p);
    } else {
      forward_nchw(p);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("depthwise_conv3x3", &depthwise_conv3x3_cpu); }

}  // namespace shufflenet_ops::cpu
