// CPU kernel of the 3x3 pooling with padding 1 and stride 1 or 2: max pooling
// (padding never wins, NaN propagates, as F.max_pool2d) or the window sum over
// 9 (padding counts as zero, as F.avg_pool2d with count_include_pad).
//
// The window is separable: per output row, the three input rows are reduced
// elementwise first, then each output reduces three neighbouring columns of
// that; the padding is the value that never changes a reduction (-inf for max,
// 0 for the sum).
//
// NCHW: vectors run along W, all in registers. The window's left and right
// columns are the row reduction's vector with one lane of its neighbour
// shifted in; for stride 2 the even and odd columns of two consecutive vectors
// are split apart first, with vector shuffles.
//
// channels_last: vectors run along C. Each input column's reduction over the
// three rows is computed once per output row and carried in registers to the
// next output.
//
// Other strides are made dense in the suggested format. Dtypes other than
// float32, float64 and bfloat16 run the stock ATen pooling.
#include "../validation.h"
#include "parallel.h"
#include "simd.h"
#include "stock_computation.h"
#include "window3x3.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/avg_pool2d.h>
#include <ATen/ops/max_pool2d.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

constexpr const char* kOp = "pool3x3 (CPU)";

// Outputs per thread at least: a pooled output costs a few vector operations,
// so below this, waking a second thread costs more than it saves.
constexpr int64_t kMinOutputsPerThread = 16384;
// Outputs of one NCHW task at most (whole rows, at least one).
constexpr int64_t kBandOutputs = 1024;

template <typename T>
struct PoolParams : Window3x3Shape {
  const T* x;
  T* y;
};

struct MaxPool {
  template <typename V>
  static V combine(V a, V b) {
    return max_keeping_nan(a, b);
  }
  template <typename A>
  static A padding() {
    return -std::numeric_limits<A>::infinity();
  }
  template <typename A, typename V>
  static V finish(V v) {
    return v;
  }
};

struct AveragePool {
  template <typename V>
  static V combine(V a, V b) {
    return a + b;
  }
  template <typename A>
  static A padding() {
    return A(0);
  }
  // Divides rather than multiplying by 1/9: the rounding F.avg_pool2d has.
  template <typename A, typename V>
  static V finish(V v) {
    return v / A(9);
  }
};

// The valid input rows (one to three) of output row `oh`.
template <typename T>
int window_rows(const T* plane, int64_t row_length, int64_t in_h, int64_t oh, int64_t stride,
                const T* rows[3]) {
  int count = 0;
  for (int kh = 0; kh < 3; ++kh) {
    const int64_t ih = stride * oh - 1 + kh;
    if (ih >= 0 && ih < in_h) rows[count++] = plane + ih * row_length;
  }
  return count;
}

// ---------------------------------------------------------------- NCHW

// An integer vector with one lane per lane of vec_t<T>, for lane masks.
template <typename Lane>
struct IndexVector {
  using lane = Lane;
  typedef Lane type __attribute__((vector_size(kVectorBytes)));
};
template <typename A>
struct LaneIndex;
template <>
struct LaneIndex<float> : IndexVector<int32_t> {};
template <>
struct LaneIndex<double> : IndexVector<int64_t> {};

// (0, 1, ..., L - 1) < count: the first `count` lanes.
template <typename A, size_t... k>
inline typename LaneIndex<A>::type first_lanes(int64_t count, std::index_sequence<k...>) {
  using Lane = typename LaneIndex<A>::lane;
  const typename LaneIndex<A>::type indices{static_cast<Lane>(k)...};
  return indices < static_cast<Lane>(count);
}

// Lanes [kStart, kStart + L) of the lanes of a followed by those of b.
template <int kStart, typename V, size_t... I>
inline V lanes_from(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (kStart + static_cast<int>(I))...);
}

// One NCHW output row at a time, in registers: the row reduction of input
// columns [from, from + L), then the 3-wide window of it with neighbouring
// vectors' lanes shifted in.
template <typename Pool, int kStride, typename T>
class NchwRow {
  using A = acc_t<T>;
  using V = vec_t<T>;
  static constexpr int L = kLanes<T>;
  static constexpr auto kLaneSequence = std::make_index_sequence<L>();

 public:
  NchwRow(const T* const rows[3], int count, int64_t width, const T* x_end)
      : rows_(rows), count_(count), width_(width), x_end_(x_end) {}

  // Outputs [o, o + L) of the row, o a multiple of L visited in order: the
  // carried vector holds the reduction of the columns left of them.
  V next_outputs(int64_t o) {
    if (kStride == 1) {
      if (o == 0) {
        carried_ = padding();
        current_ = columns(0);
      }
      const V after = columns(o + L);
      const V left = lanes_from<L - 1>(carried_, current_, kLaneSequence);
      const V right = lanes_from<1>(current_, after, kLaneSequence);
      const V out = window(left, current_, right);
      carried_ = current_;
      current_ = after;
      return out;
    }
    if (o == 0) carried_ = padding();
    // Output o + j reads columns 2(o + j) - 1, 2(o + j) and 2(o + j) + 1.
    const V lo = columns(2 * o), hi = columns(2 * o + L);
    const V middle = every_other_lane<0>(lo, hi), right = every_other_lane<1>(lo, hi);
    const V left = lanes_from<L - 1>(carried_, right, kLaneSequence);
    carried_ = right;
    return window(left, middle, right);
  }

 private:
  static V padding() { return V{} + Pool::template padding<A>(); }

  static V window(V left, V middle, V right) {
    return Pool::template finish<A>(Pool::combine(Pool::combine(left, middle), right));
  }

  // The reduction over the window's rows of columns [from, from + L); columns
  // past the row's end read as padding.
  V columns(int64_t from) const {
    if (from >= width_) return padding();
    const int64_t valid = width_ - from;
    if (valid >= L) {
      V v = load_vec(rows_[0] + from);
      for (int r = 1; r < count_; ++r) v = Pool::combine(v, load_vec(rows_[r] + from));
      return v;
    }
    // A short tail is read as a full vector (the next row's lanes are masked
    // off) where the input holds that many values.
    const bool full = x_end_ - (rows_[count_ - 1] + from) >= L;  // rows are in address order
    const auto load = [&](const T* p) { return full ? load_vec(p) : load_vec_partial(p, valid); };
    V v = load(rows_[0] + from);
    for (int r = 1; r < count_; ++r) v = Pool::combine(v, load(rows_[r] + from));
    return first_lanes<A>(valid, kLaneSequence) ? v : padding();
  }

  const T* const* rows_;
  int count_;
  int64_t width_;
  const T* x_end_;
  V carried_{}, current_{};
};

template <typename Pool, int kStride, typename T>
void pool_nchw(const PoolParams<T>& p) {
  constexpr int L = kLanes<T>;
  // A task is a band of rows of one plane, contiguous in y. A row's outputs go
  // out as full vectors, the last one's extra lanes spilling into the next
  // rows, which overwrite them later; only a vector that would spill past the
  // band is stored lane by lane, so no task writes outside its band.
  const int64_t band_rows = std::clamp<int64_t>(kBandOutputs / p.out_w, 1, p.out_h);
  const int64_t bands = (p.out_h + band_rows - 1) / band_rows;
  const int64_t in_plane = p.in_h * p.in_w, out_plane = p.out_h * p.out_w;
  const T* x_end = p.x + p.batch * p.channels * in_plane;
  const int64_t grain = grain_for(band_rows * p.out_w, kMinOutputsPerThread);
  at::parallel_for(0, p.batch * p.channels * bands, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t plane = task / bands;
      const int64_t oh0 = task % bands * band_rows, oh1 = std::min(p.out_h, oh0 + band_rows);
      T* y_band = p.y + plane * out_plane + oh0 * p.out_w;
      const int64_t band_end = (oh1 - oh0) * p.out_w;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const T* rows[3];
        const int count = window_rows(p.x + plane * in_plane, p.in_w, p.in_h, oh, p.stride, rows);
        NchwRow<Pool, kStride, T> row(rows, count, p.in_w, x_end);
        const int64_t row_start = (oh - oh0) * p.out_w;
        for (int64_t o = 0; o < p.out_w; o += L) {
          const vec_t<T> out = row.next_outputs(o);
          const int64_t at = row_start + o;
          if (at + L <= band_end) {
            store_vec(y_band + at, out);
          } else {
            for (int64_t j = 0; j < p.out_w - o; ++j) store_scalar(y_band + at + j, out[j]);
          }
        }
      }
    }
  });
}

// ---------------------------------------------------------------- channels_last

// One output row, channels [c0, c0 + L) (the first C when kPartial). Each
// input column's reduction over the window rows is computed once and carried
// in registers to the next output.
template <typename Pool, int kStride, bool kPartial, typename T>
void pool_channels_last_block(const PoolParams<T>& p, const T* const rows[3], int count, int64_t c0,
                              T* y_row) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  const int64_t C = p.channels;
  const V padding = V{} + Pool::template padding<A>();
  const auto load = [&](const T* src) { return kPartial ? load_vec_partial(src, C) : load_vec(src); };
  const auto column = [&](int64_t iw) {
    if (iw >= p.in_w) return padding;
    const int64_t offset = iw * C + c0;
    V v = load(rows[0] + offset);
    for (int r = 1; r < count; ++r) v = Pool::combine(v, load(rows[r] + offset));
    return v;
  };
  V left = padding, middle = column(0);
  for (int64_t ow = 0; ow < p.out_w; ++ow) {
    const V right = column(kStride * ow + 1);
    const V out = Pool::template finish<A>(Pool::combine(Pool::combine(left, middle), right));
    if (kPartial) {
      store_vec_partial(y_row + ow * C, out, C);
    } else {
      store_vec(y_row + ow * C + c0, out);
    }
    if (kStride == 1) {
      left = middle;
      middle = right;
    } else {
      left = right;
      middle = column(2 * ow + 2);
    }
  }
}

template <typename Pool, int kStride, typename T>
void pool_channels_last(const PoolParams<T>& p) {
  constexpr int L = kLanes<T>;
  const int64_t C = p.channels;
  const int64_t grain = grain_for(p.out_w * C, kMinOutputsPerThread);
  at::parallel_for(0, p.batch * p.out_h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / p.out_h, oh = task % p.out_h;
      const T* rows[3];
      const int count = window_rows(p.x + n * p.in_h * p.in_w * C, p.in_w * C, p.in_h, oh, p.stride, rows);
      T* y_row = p.y + task * p.out_w * C;
      if (C < L) {
        pool_channels_last_block<Pool, kStride, true>(p, rows, count, 0, y_row);
        continue;
      }
      // The last channel vector overlaps its neighbour when L does not divide C.
      for (int64_t c = 0; c < C; c += L)
        pool_channels_last_block<Pool, kStride, false>(p, rows, count, std::min(c, C - L), y_row);
    }
  });
}

// ---------------------------------------------------------------- binding

template <typename Pool, typename T>
void pool(const PoolParams<T>& p, at::MemoryFormat format) {
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  if (p.stride == 1) {
    channels_last ? pool_channels_last<Pool, 1>(p) : pool_nchw<Pool, 1>(p);
  } else {
    channels_last ? pool_channels_last<Pool, 2>(p) : pool_nchw<Pool, 2>(p);
  }
}

at::Tensor pool3x3_cpu(const at::Tensor& x_in, int64_t stride, bool average) {
  check_pool3x3(x_in, stride);
  const Window3x3Problem problem = window3x3_problem(x_in, stride);
  const at::Tensor& x = problem.x;
  const at::Tensor& y = problem.y;
  if (y.numel() == 0) return y;
  if (!has_vectorized_kernel(x)) {
    // reference.max_pool3x3 / reference.avg_pool3x3
    return stock_computation(kOp, x, problem.format, [&] {
      return average ? at::avg_pool2d(x, {3, 3}, {stride, stride}, {1, 1})
                     : at::max_pool2d(x, {3, 3}, {stride, stride}, {1, 1});
    });
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "pool3x3_cpu", [&] {
    const PoolParams<scalar_t> p{problem.shape, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>()};
    if (average) {
      pool<AveragePool>(p, problem.format);
    } else {
      pool<MaxPool>(p, problem.format);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("pool3x3", &pool3x3_cpu); }

}  // namespace shufflenet_ops::cpu
