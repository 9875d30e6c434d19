// CPU kernel of the network stem, ShuffleNet's Conv1 + MaxPool:
// max_pool3x3(relu(conv3x3(x, weight) + bias)), the convolution and the pooling
// both with stride 2 and padding 1. The convolution's output never reaches
// memory: each task computes the convolution rows its pooled rows need into a
// ring of three row buffers and pools them there.
//
// A convolution row is one GEMM of the shared engine (gemm_tile.h): the weight
// [C_out][C_in * 9] times the nine taps of each input channel, each tap a row
// of input pixels read with stride 2. The even and odd columns of each input
// row are split apart first, so that every tap is a contiguous row: columns
// 2 ox - 1, 2 ox and 2 ox + 1 are odd[ox - 1], even[ox] and odd[ox].
//
// The pooling needs no -inf padding: after the ReLU every value is >= 0 (or
// NaN), and every window holds at least one of them, so rows and columns
// outside the convolution's output count as 0.
//
// x is read through its strides (any layout, no copy); the output is written
// in x's suggested memory format. Dtypes other than float32, float64 and
// bfloat16 run the stock ATen convolution, ReLU and pooling.
#include "../validation.h"
#include "accumulator_copy.h"
#include "gemm_tile.h"
#include "stock_computation.h"
#include "window3x3.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/max_pool2d.h>
#include <ATen/ops/relu.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

constexpr const char* kOp = "stem_conv3x3_maxpool (CPU)";

struct StemShape {
  int64_t batch, in_channels, out_channels, height, width;
  std::array<int64_t, 4> x_strides, y_strides;  // N, C, H, W
  int64_t conv_height() const { return window3x3_output_size(height, 2); }
  int64_t conv_width() const { return window3x3_output_size(width, 2); }
  int64_t pool_height() const { return window3x3_output_size(conv_height(), 2); }
  int64_t pool_width() const { return window3x3_output_size(conv_width(), 2); }
};

template <typename T>
class StemTask {
 public:
  StemTask(const StemShape& s, const T* x, const T* weight, const acc_t<T>* bias)
      : s_(s), x_(x), bias_(bias), depth_(s.in_channels * 9),
        // Tap rows are read from offset 1 up to a whole number of vectors past the last column.
        split_width_(round_up(s.conv_width(), kLanes<T>) + kLanes<T>),
        ring_width_(s.conv_width() + 2),
        split_(s.in_channels * 3 * 2 * split_width_, T(0)),
        zeros_(split_width_, T(0)),
        ring_(3 * s.out_channels * ring_width_, T(0)),
        weight_rows_(s.out_channels), tap_rows_(depth_), ring_rows_(s.out_channels),
        depth_offsets_(column_offsets(depth_)) {
    for (int64_t c = 0; c < s.out_channels; ++c) weight_rows_[c] = weight + c * depth_;
    ring_row_.fill(-1);
  }

  // Pooled rows [p0, p1) of image n.
  void run(int64_t n, int64_t p0, int64_t p1, T* y) {
    const int64_t W2 = s_.pool_width(), C = s_.out_channels;
    std::vector<acc_t<T>> column_max(ring_width_);
    for (int64_t p = p0; p < p1; ++p) {
      const T* rows[3];
      for (int64_t dy = 0; dy < 3; ++dy) rows[dy] = conv_row(n, 2 * p - 1 + dy);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t i = 0; i < ring_width_; ++i) {
          acc_t<T> m = load_scalar(rows[0] + c * ring_width_ + i);
          m = max_keeping_nan(m, load_scalar(rows[1] + c * ring_width_ + i));
          column_max[i] = max_keeping_nan(m, load_scalar(rows[2] + c * ring_width_ + i));
        }
        const auto& ys = s_.y_strides;
        T* out = y + n * ys[0] + c * ys[1] + p * ys[2];
        // Ring column 2 px holds convolution column 2 px - 1.
        for (int64_t px = 0; px < W2; ++px) {
          const acc_t<T> m = max_keeping_nan(column_max[2 * px], column_max[2 * px + 1]);
          store_scalar(out + px * ys[3], max_keeping_nan(m, column_max[2 * px + 2]));
        }
      }
    }
  }

 private:
  // Row cy of the convolution (after bias and ReLU) of image n, as C_out rows
  // of ring_width_ with a zero column on each side; rows outside it are zeros.
  const T* conv_row(int64_t n, int64_t cy) {
    if (cy < 0 || cy >= s_.conv_height()) return zeros_ring_row();
    const int64_t slot = cy % 3;
    T* rows = ring_.data() + slot * s_.out_channels * ring_width_;
    if (ring_row_[slot] == cy && ring_image_[slot] == n) return rows;
    split_input_rows(n, cy);
    for (int64_t c = 0; c < s_.out_channels; ++c) ring_rows_[c] = rows + c * ring_width_ + 1;
    GemmOperands<T> g{weight_rows_.data(), depth_offsets_.data(), tap_rows_.data(), depth_};
    g.a_rows_contiguous = true;
    g.b_rows_padded = true;
    TileStore<T> store{ring_rows_.data()};
    store.row_bias = bias_;
    store.relu = true;
    gemm(g, s_.out_channels, 0, s_.conv_width(), store);
    ring_row_[slot] = cy;
    ring_image_[slot] = n;
    return rows;
  }

  // The even and odd columns of the three input rows of convolution row cy,
  // per input channel, and the tap rows pointing into them.
  void split_input_rows(int64_t n, int64_t cy) {
    const int64_t H = s_.height, W = s_.width;
    for (int64_t ic = 0; ic < s_.in_channels; ++ic) {
      for (int64_t ky = 0; ky < 3; ++ky) {
        const int64_t iy = 2 * cy - 1 + ky;
        const int64_t tap = (ic * 3 + ky) * 3;
        if (iy < 0 || iy >= H) {
          for (int64_t kx = 0; kx < 3; ++kx) tap_rows_[tap + kx] = zeros_.data();
          continue;
        }
        T* even = split_.data() + ((ic * 3 + ky) * 2) * split_width_;
        T* odd = even + split_width_;  // odd[0] is the left padding, odd[i + 1] = x[2 i + 1]
        const auto& xs = s_.x_strides;
        const T* row = x_ + n * xs[0] + ic * xs[1] + iy * xs[2];
        if (xs[3] == 1) {  // NCHW rows: the compiler vectorizes the split with permutes
          for (int64_t i = 0; 2 * i < W; ++i) even[i] = row[2 * i];
          for (int64_t i = 0; 2 * i + 1 < W; ++i) odd[i + 1] = row[2 * i + 1];
        } else {
          for (int64_t i = 0; 2 * i < W; ++i) even[i] = row[2 * i * xs[3]];
          for (int64_t i = 0; 2 * i + 1 < W; ++i) odd[i + 1] = row[(2 * i + 1) * xs[3]];
        }
        // Past the row's end (odd W ends on an even column): the right padding.
        for (int64_t i = W / 2 + 1; i < split_width_; ++i) odd[i] = T(0);
        tap_rows_[tap] = odd;
        tap_rows_[tap + 1] = even;
        tap_rows_[tap + 2] = odd + 1;
      }
    }
  }

  const T* zeros_ring_row() {
    if (zero_ring_.empty()) zero_ring_.assign(s_.out_channels * ring_width_, T(0));
    return zero_ring_.data();
  }

  const StemShape& s_;
  const T* x_;
  const acc_t<T>* bias_;
  const int64_t depth_, split_width_, ring_width_;
  std::vector<T> split_, zeros_, ring_, zero_ring_;
  std::vector<const T*> weight_rows_, tap_rows_;
  std::vector<T*> ring_rows_;
  std::vector<int64_t> depth_offsets_;
  std::array<int64_t, 3> ring_row_{}, ring_image_{};
};

// Pooled rows per task: enough tasks for the threads, each recomputing one
// convolution row its neighbour also computes.
int64_t pool_rows_per_task(const StemShape& s) {
  const int64_t tasks_per_image =
      std::clamp<int64_t>((4 * at::get_num_threads() + s.batch - 1) / s.batch, 1, s.pool_height());
  return (s.pool_height() + tasks_per_image - 1) / tasks_per_image;
}

at::Tensor stem_conv3x3_maxpool_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                    const std::optional<at::Tensor>& bias) {
  check_stem_conv3x3_maxpool(x_in, weight_in, bias);
  StemShape s{x_in.size(0), x_in.size(1), weight_in.size(0), x_in.size(2), x_in.size(3), {}, {}};
  const at::MemoryFormat format = x_in.suggest_memory_format();
  at::Tensor y = at::empty({s.batch, s.out_channels, s.pool_height(), s.pool_width()},
                           x_in.options().memory_format(format));
  if (y.numel() > 0 && !has_vectorized_kernel(x_in)) {
    // reference.stem_conv3x3_maxpool
    return stock_computation(kOp, x_in, format, [&] {
      const at::Tensor conv =
          s.in_channels == 0
              ? stock_empty_sum({s.batch, s.out_channels, s.conv_height(), s.conv_width()}, x_in.options(), bias)
              : at::conv2d(x_in, weight_in, bias, {2, 2}, {1, 1});
      return at::max_pool2d(at::relu(conv), {3, 3}, {2, 2}, {1, 1});
    });
  }
  if (y.numel() > 0) {
    const at::Tensor weight = weight_in.contiguous();
    for (int d = 0; d < 4; ++d) {
      s.x_strides[d] = x_in.stride(d);
      s.y_strides[d] = y.stride(d);
    }
    const int64_t rows_per_task = pool_rows_per_task(s);
    const int64_t tasks_per_image = (s.pool_height() + rows_per_task - 1) / rows_per_task;
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x_in.scalar_type(), "stem_conv3x3_maxpool_cpu", [&] {
      const std::vector<acc_t<scalar_t>> b = accumulator_copy<scalar_t>(bias);
      const scalar_t* x_data = x_in.const_data_ptr<scalar_t>();
      const scalar_t* w_data = weight.const_data_ptr<scalar_t>();
      scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.batch * tasks_per_image, 1, [&](int64_t begin, int64_t end) {
        StemTask<scalar_t> task(s, x_data, w_data, b.empty() ? nullptr : b.data());
        for (int64_t t = begin; t < end; ++t) {
          const int64_t n = t / tasks_per_image, p0 = t % tasks_per_image * rows_per_task;
          task.run(n, p0, std::min(s.pool_height(), p0 + rows_per_task), y_data);
        }
      });
    });
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("stem_conv3x3_maxpool", &stem_conv3x3_maxpool_cpu);
}

}  // namespace shufflenet_ops::cpu
