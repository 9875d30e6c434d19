// CPU kernels of the fused pointwise group convolution, forward and backward.
//
// Group j of the convolution reads input channels in_channel[j * K + k] and
// writes output channels out_channel[j * M + m] (K = C_in / groups,
// M = C_out / groups); both tables fold the channel shuffles into the
// addressing, so the forward pass and all three gradients read and write the
// user's tensors directly.
//
// NCHW tensors are handled channel-major (GEMM rows are channels, vectors run
// over pixels); channels_last tensors pixel-major (rows are pixels, vectors
// run over channels). Other strides are made dense in the suggested format.
#include "../kernels/shuffle_index.h"
#include "../validation.h"
#include "accumulator_copy.h"
#include "gemm_tile.h"
#include "parallel.h"
#include "stock_computation.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/add.h>
#include <ATen/ops/conv2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <array>
#include <numeric>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

constexpr const char* kOp = "pointwise_group_conv (CPU)";
constexpr const char* kGradInputOp = "pointwise_group_conv_grad_input (CPU)";
constexpr const char* kGradWeightOp = "pointwise_group_conv_grad_weight (CPU)";
constexpr const char* kGradBiasOp = "pointwise_group_conv_grad_bias (CPU)";

bool is_channels_last(const at::Tensor& t) {
  return t.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
}

// Where group j's operands live, shuffles folded in.
struct ChannelTables {
  std::vector<int64_t> in_channel;   // [C_in]: input channel read as shuffled channel c
  std::vector<int64_t> out_channel;  // [C_out]: output channel written for conv channel c

  explicit ChannelTables(const ConvProblem& p) : in_channel(p.in_channels), out_channel(p.out_channels) {
    fill_shuffle_source_table(p.input_shuffle, p.in_channels, in_channel.data());
    fill_shuffle_destination_table(p.output_shuffle, p.out_channels, out_channel.data());
  }
};

// Pixel columns per task on the channel-major path and pixel rows per task on
// the pixel-major path: enough work to amortize the pointer tables.
template <typename T>
constexpr int64_t kColumnChunk = 4 * kTileVectors * kLanes<T>;

// Equal column chunks of at most kColumnChunk (whole vectors but the last), so
// that a 14x14 image splits 112 + 84 rather than 192 + 4.
template <typename T>
int64_t column_chunk(int64_t columns) {
  const int64_t chunks = std::max<int64_t>(1, (columns + kColumnChunk<T> - 1) / kColumnChunk<T>);
  return round_up((columns + chunks - 1) / chunks, kLanes<T>);
}
constexpr int64_t kPixelChunk = 64;
// Multiply-adds (or, for grad_bias, elements) each thread does at least.
constexpr int64_t kMinMacsPerThread = 128 * 1024;
constexpr int64_t kMinElementsPerThread = 16 * 1024;

// Pixel rows per task on the pixel-major path: up to kPixelChunk, fewer when
// that would leave threads idle (a 7x7 image has 49 pixels).
int64_t pixel_chunk(int64_t total_pixels) {
  const int64_t tasks_wanted = 2 * at::get_num_threads();
  const int64_t per_task = round_up((total_pixels + tasks_wanted - 1) / tasks_wanted, kTileRows);
  return std::clamp<int64_t>(per_task, kTileRows, kPixelChunk);
}

// How to split `rows` GEMM rows when `base_tasks` tasks alone cannot feed the
// threads (batch 1, one group, a 7x7 image): into `count` ranges of `size`
// rows, a multiple of the register tile.
struct RowSplit {
  int64_t count;
  int64_t size;
};

RowSplit split_rows(int64_t rows, int64_t base_tasks) {
  const int64_t wanted = 2 * at::get_num_threads();
  const int64_t tiles = std::max<int64_t>(1, (rows + kTileRows - 1) / kTileRows);
  const int64_t count = std::clamp<int64_t>((wanted + base_tasks - 1) / base_tasks, 1, tiles);
  return {count, round_up((rows + count - 1) / count, kTileRows)};
}

// ---------------------------------------------------------------- forward

// The epilogue's inputs besides the GEMM: bias (accumulation type, conv
// channel order), ReLU, and the residual (null or dense like the output).
template <typename T>
struct Epilogue {
  const acc_t<T>* bias;
  bool relu;
  const T* residual;
};

template <typename T>
void forward_channel_major(const ConvProblem& p, const ChannelTables& t, const T* x, const T* w,
                           const Epilogue<T>& e, T* y) {
  const int64_t K = p.in_per_group(), M = p.out_per_group(), HW = p.pixels();
  const int64_t chunk_columns = column_chunk<T>(HW);
  const int64_t chunks = (HW + chunk_columns - 1) / chunk_columns;
  std::vector<const T*> weight_rows(p.out_channels);
  for (int64_t c = 0; c < p.out_channels; ++c) weight_rows[c] = w + c * K;
  const std::vector<int64_t> depth_offsets = column_offsets(K);
  const int64_t base_tasks = p.batch * p.groups * chunks;
  const RowSplit split = split_rows(M, base_tasks);
  const int64_t grain = grain_for(split.size * K * chunk_columns, kMinMacsPerThread);
  at::parallel_for(0, base_tasks * split.count, grain, [&](int64_t begin, int64_t end) {
    std::vector<const T*> input_rows(K), residual_rows(e.residual ? M : 0);
    std::vector<T*> output_rows(M);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task % split.count, base = task / split.count;
      const int64_t chunk = base % chunks, j = base / chunks % p.groups, n = base / chunks / p.groups;
      const int64_t m0 = part * split.size, m1 = std::min(M, m0 + split.size);
      if (m0 >= m1) continue;
      for (int64_t k = 0; k < K; ++k)
        input_rows[k] = x + (n * p.in_channels + t.in_channel[j * K + k]) * HW;
      for (int64_t m = m0; m < m1; ++m) {
        const int64_t offset = (n * p.out_channels + t.out_channel[j * M + m]) * HW;
        output_rows[m] = y + offset;
        if (e.residual) residual_rows[m] = e.residual + offset;
      }
      GemmOperands<T> g{weight_rows.data() + j * M + m0, depth_offsets.data(), input_rows.data(), K};
      g.a_rows_contiguous = true;
      if (p.input_shuffle == 1) g.b_row_stride = HW;  // the group's input channels are consecutive planes
      TileStore<T> store{output_rows.data() + m0};
      store.row_bias = e.bias ? e.bias + j * M + m0 : nullptr;
      store.residual_rows = e.residual ? residual_rows.data() + m0 : nullptr;
      store.relu = e.relu;
      const int64_t col0 = chunk * chunk_columns;
      gemm(g, m1 - m0, col0, std::min(HW, col0 + chunk_columns), store);
    }
  });
}

template <typename T>
void forward_pixel_major(const ConvProblem& p, const ChannelTables& t, const T* x, const T* w,
                         const Epilogue<T>& e, T* y) {
  const int64_t K = p.in_per_group(), M = p.out_per_group();
  const int64_t total_pixels = p.batch * p.pixels();
  // Weights transposed to [groups][K][M_padded]: the vector operand.
  const int64_t M_padded = round_up(M, kLanes<T>);
  std::vector<T> packed(p.groups * K * M_padded, T(0));
  for (int64_t j = 0; j < p.groups; ++j)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) packed[(j * K + k) * M_padded + m] = w[(j * M + m) * K + k];
  std::vector<const T*> packed_rows(p.groups * K);
  for (int64_t r = 0; r < p.groups * K; ++r) packed_rows[r] = packed.data() + r * M_padded;
  const bool contiguous_out = p.output_shuffle == 1;
  const int64_t chunk_rows = pixel_chunk(total_pixels);
  const int64_t chunks = (total_pixels + chunk_rows - 1) / chunk_rows;
  const int64_t grain = grain_for(chunk_rows * p.in_channels * M, kMinMacsPerThread);
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<const T*> pixel_rows(chunk_rows), residual_rows(e.residual ? chunk_rows : 0);
    std::vector<T*> output_rows(chunk_rows);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t q0 = chunk * chunk_rows, rows = std::min(chunk_rows, total_pixels - q0);
      for (int64_t r = 0; r < rows; ++r) pixel_rows[r] = x + (q0 + r) * p.in_channels;
      for (int64_t j = 0; j < p.groups; ++j) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t offset = (q0 + r) * p.out_channels + (contiguous_out ? j * M : 0);
          output_rows[r] = y + offset;
          if (e.residual) residual_rows[r] = e.residual + offset;
        }
        GemmOperands<T> g{pixel_rows.data(), t.in_channel.data() + j * K,
                          packed_rows.data() + j * K, K};
        g.b_rows_padded = true;
        TileStore<T> store{output_rows.data()};
        store.col_offsets = contiguous_out ? nullptr : t.out_channel.data() + j * M;
        store.col_bias = e.bias ? e.bias + j * M : nullptr;
        store.residual_rows = e.residual ? residual_rows.data() : nullptr;
        store.relu = e.relu;
        gemm(g, rows, 0, M, store);
      }
    }
  });
}

// ---------------------------------------------------------------- stock ATen computation
//
// For dtypes the GEMM tile lacks: reference.pointwise_group_conv, and for the
// gradients the convolution backward that autograd runs for it, between the
// inverse shuffles (a shuffle's gradient is its inverse).

at::Tensor pointwise_weight(const at::Tensor& weight) {
  return weight.dim() == 2 ? weight.reshape({weight.size(0), weight.size(1), 1, 1}) : weight;
}

at::Tensor stock_forward(const ConvProblem& p, const at::Tensor& x, const at::Tensor& weight,
                         const std::optional<at::Tensor>& bias, bool relu, const std::optional<at::Tensor>& residual,
                         at::MemoryFormat format) {
  const std::array<int64_t, 2> ones{1, 1}, zeros{0, 0};
  at::Tensor y = p.in_per_group() == 0
                     ? stock_empty_sum({p.batch, p.out_channels, p.height, p.width},
                                       x.options().memory_format(format), bias)
                     : at::conv2d(shuffle_channels(x, p.input_shuffle), pointwise_weight(weight), bias, ones,
                                  zeros, ones, p.groups);
  y = shuffle_channels(y, p.output_shuffle);
  if (residual.has_value()) y = at::add(y, *residual);
  return relu ? at::relu(y) : y;
}

at::Tensor stock_grad_input(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& weight,
                            at::MemoryFormat format) {
  // Only the input's shape is read when just grad_input is asked for.
  const at::Tensor input_shape = at::empty({p.batch, p.in_channels, p.height, p.width},
                                           grad_out.options().memory_format(format));
  const at::Tensor grad_shuffled_x = std::get<0>(at::convolution_backward(
      unshuffle_channels(grad_out, p.output_shuffle), input_shape, pointwise_weight(weight), std::nullopt, {1, 1},
      {0, 0}, {1, 1}, false, {0, 0}, p.groups, {true, false, false}));
  return unshuffle_channels(grad_shuffled_x, p.input_shuffle);
}

at::Tensor stock_grad_weight(const ConvProblem& p, const at::Tensor& grad_out, const at::Tensor& x) {
  // Only the weight's shape is read when just grad_weight is asked for.
  const at::Tensor weight_shape = at::empty({p.out_channels, p.in_per_group(), 1, 1}, x.options());
  return std::get<1>(at::convolution_backward(unshuffle_channels(grad_out, p.output_shuffle),
                                              shuffle_channels(x, p.input_shuffle), weight_shape,
                                              std::nullopt, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, p.groups,
                                              {false, true, false}));
}

at::Tensor stock_grad_bias(const at::Tensor& grad_out, int64_t output_shuffle) {
  return unshuffle_channels(grad_out, output_shuffle).sum({0, 2, 3});
}

// ---------------------------------------------------------------- op kernels

at::Tensor pointwise_group_conv_cpu(const at::Tensor& x_in, const at::Tensor& weight_in,
                                    const std::optional<at::Tensor>& bias, int64_t groups,
                                    int64_t input_shuffle, int64_t output_shuffle, bool relu,
                                    const std::optional<at::Tensor>& residual_in) {
  const ConvProblem p = check_pointwise_group_conv(x_in, weight_in, bias, groups, input_shuffle,
                                                   output_shuffle, residual_in);
  const at::MemoryFormat format = x_in.suggest_memory_format();
  at::Tensor y = at::empty({p.batch, p.out_channels, p.height, p.width},
                           x_in.options().memory_format(format));
  if (y.numel() == 0) return y;
  if (!has_vectorized_kernel(x_in)) {
    return stock_computation(kOp, x_in, format, [&] {
      return stock_forward(p, x_in, weight_in, bias, relu, residual_in, format);
    });
  }
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor weight = weight_in.contiguous();
  // Read at the output's offsets, so dense in the output's layout.
  const at::Tensor residual = residual_in.has_value() ? residual_in->contiguous(format) : at::Tensor();
  const ChannelTables tables(p);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "pointwise_group_conv_cpu", [&] {
    const std::vector<acc_t<scalar_t>> b = accumulator_copy<scalar_t>(bias);
    const Epilogue<scalar_t> epilogue{b.empty() ? nullptr : b.data(), relu,
                                      residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr};
    if (is_channels_last(y)) {
      forward_pixel_major<scalar_t>(p, tables, x.const_data_ptr<scalar_t>(),
                                    weight.const_data_ptr<scalar_t>(), epilogue,
                                    y.mutable_data_ptr<scalar_t>());
    } else {
      forward_channel_major<scalar_t>(p, tables, x.const_data_ptr<scalar_t>(),
                                      weight.const_data_ptr<scalar_t>(), epilogue,
                                      y.mutable_data_ptr<scalar_t>());
    }
  });
  return y;
}

// ---------------------------------------------------------------- grad_input

template <typename T>
void grad_input_channel_major(const ConvProblem& p, const ChannelTables& t, const T* gy,
                              const T* w, T* gx) {
  const int64_t K = p.in_per_group(), M = p.out_per_group(), HW = p.pixels();
  // The broadcast operand is the transposed weight, read in place: row k of
  // group j starts at w[j * M * K + k] and steps K per output channel.
  std::vector<const T*> weight_columns(p.groups * K);
  for (int64_t j = 0; j < p.groups; ++j)
    for (int64_t k = 0; k < K; ++k) weight_columns[j * K + k] = w + j * M * K + k;
  const std::vector<int64_t> depth_offsets = column_offsets(M, K);
  const int64_t chunk_columns = column_chunk<T>(HW);
  const int64_t chunks = (HW + chunk_columns - 1) / chunk_columns;
  const int64_t base_tasks = p.batch * p.groups * chunks;
  const RowSplit split = split_rows(K, base_tasks);
  const int64_t grain = grain_for(split.size * M * chunk_columns, kMinMacsPerThread);
  at::parallel_for(0, base_tasks * split.count, grain, [&](int64_t begin, int64_t end) {
    std::vector<const T*> grad_rows(M);
    std::vector<T*> output_rows(K);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t part = task % split.count, base = task / split.count;
      const int64_t chunk = base % chunks, j = base / chunks % p.groups, n = base / chunks / p.groups;
      const int64_t k0 = part * split.size, k1 = std::min(K, k0 + split.size);
      if (k0 >= k1) continue;
      for (int64_t m = 0; m < M; ++m)
        grad_rows[m] = gy + (n * p.out_channels + t.out_channel[j * M + m]) * HW;
      for (int64_t k = k0; k < k1; ++k)
        output_rows[k] = gx + (n * p.in_channels + t.in_channel[j * K + k]) * HW;
      const GemmOperands<T> g{weight_columns.data() + j * K + k0, depth_offsets.data(), grad_rows.data(), M};
      const TileStore<T> store{output_rows.data() + k0};
      const int64_t col0 = chunk * chunk_columns;
      gemm(g, k1 - k0, col0, std::min(HW, col0 + chunk_columns), store);
    }
  });
}

template <typename T>
void grad_input_pixel_major(const ConvProblem& p, const ChannelTables& t, const T* gy, const T* w,
                            T* gx) {
  const int64_t K = p.in_per_group(), M = p.out_per_group();
  const int64_t total_pixels = p.batch * p.pixels();
  // Weight rows padded to [C_out][K_padded]: row m of group j is the vector operand.
  const int64_t K_padded = round_up(K, kLanes<T>);
  std::vector<T> padded(p.out_channels * K_padded, T(0));
  for (int64_t c = 0; c < p.out_channels; ++c)
    std::copy(w + c * K, w + (c + 1) * K, padded.data() + c * K_padded);
  std::vector<const T*> padded_rows(p.out_channels);
  for (int64_t c = 0; c < p.out_channels; ++c) padded_rows[c] = padded.data() + c * K_padded;
  const bool contiguous_out = p.input_shuffle == 1;
  const int64_t chunk_rows = pixel_chunk(total_pixels);
  const int64_t chunks = (total_pixels + chunk_rows - 1) / chunk_rows;
  const int64_t grain = grain_for(chunk_rows * p.out_channels * K, kMinMacsPerThread);
  at::parallel_for(0, chunks, grain, [&](int64_t begin, int64_t end) {
    std::vector<const T*> grad_rows(chunk_rows);
    std::vector<T*> output_rows(chunk_rows);
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      const int64_t q0 = chunk * chunk_rows, rows = std::min(chunk_rows, total_pixels - q0);
      for (int64_t r = 0; r < rows; ++r) grad_rows[r] = gy + (q0 + r) * p.out_channels;
      for (int64_t j = 0; j < p.groups; ++j) {
        for (int64_t r = 0; r < rows; ++r)
          output_rows[r] = gx + (q0 + r) * p.in_channels + (contiguous_out ? j * K : 0);
        GemmOperands<T> g{grad_rows.data(), t.out_channel.data() + j * M,
                          padded_rows.data() + j * M, M};
        g.b_rows_padded = true;
        TileStore<T> store{output_rows.data()};
        store.col_offsets = contiguous_out ? nullptr : t.in_channel.data() + j * K;
        gemm(g, rows, 0, K, store);
      }
    }
  });
}

at::Tensor grad_input_cpu(const at::Tensor& grad_out_in, const at::Tensor& weight_in,
                          int64_t groups, int64_t input_shuffle, int64_t output_shuffle) {
  const ConvProblem p =
      check_grad_input(grad_out_in, weight_in, groups, input_shuffle, output_shuffle);
  const at::MemoryFormat format = grad_out_in.suggest_memory_format();
  at::Tensor gx = at::empty({p.batch, p.in_channels, p.height, p.width},
                            grad_out_in.options().memory_format(format));
  if (gx.numel() == 0) return gx;
  if (!has_vectorized_kernel(grad_out_in)) {
    return stock_computation(kGradInputOp, grad_out_in, format,
                             [&] { return stock_grad_input(p, grad_out_in, weight_in, format); });
  }
  const at::Tensor gy = grad_out_in.contiguous(format);
  const at::Tensor weight = weight_in.contiguous();
  const ChannelTables tables(p);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gy.scalar_type(), "grad_input_cpu", [&] {
    if (is_channels_last(gx)) {
      grad_input_pixel_major<scalar_t>(p, tables, gy.const_data_ptr<scalar_t>(),
                                       weight.const_data_ptr<scalar_t>(),
                                       gx.mutable_data_ptr<scalar_t>());
    } else {
      grad_input_channel_major<scalar_t>(p, tables, gy.const_data_ptr<scalar_t>(),
                                         weight.const_data_ptr<scalar_t>(),
                                         gx.mutable_data_ptr<scalar_t>());
    }
  });
  return gx;
}

// ---------------------------------------------------------------- grad_weight

// grad_weight[j*M + m][k] = sum over pixels q of grad_out(q, out_channel[j*M+m]) * x(q, in_channel[j*K+k]).
// The reduction runs over pixel chunks: the side with fewer channels is
// gathered into a small zero-padded [chunk][channels] panel (the vector
// operand, cache resident), the other side is read in place as the broadcast
// operand. The same code serves both layouts through `pixel_offset`.
//
// The pixels are split into a fixed number of slices, chosen from the problem
// size alone, and the per-slice partial sums are added in slice order: the
// result does not depend on the thread count or scheduling.
constexpr int64_t kPixelsPerSlice = 2048;
constexpr int64_t kMaxSlices = 32;
// Pixels per panel: long enough to amortize adding each finished tile into the
// partial sums, short enough for the panel to stay in L2.
constexpr int64_t kPanelBytes = 128 * 1024;
constexpr int64_t kMaxReductionChunk = 512;

struct ActivationLayout {
  int64_t channels;
  int64_t pixels;  // H * W
  bool pixel_major;
  int64_t channel_stride() const { return pixel_major ? 1 : pixels; }
  // Offset of pixel p of image n, channel 0.
  int64_t pixel_offset(int64_t n, int64_t p) const {
    return pixel_major ? (n * pixels + p) * channels : n * channels * pixels + p;
  }
};

template <typename T>
void grad_weight_rows(const ConvProblem& p, const ChannelTables& t, const T* gy, const T* x,
                      bool pixel_major, int64_t j, int64_t row_begin, int64_t row_end, int64_t q0,
                      int64_t q1, acc_t<T>* partial) {
  const int64_t K = p.in_per_group(), M = p.out_per_group();
  const ActivationLayout gy_layout{p.out_channels, p.pixels(), pixel_major};
  const ActivationLayout x_layout{p.in_channels, p.pixels(), pixel_major};
  // The panel holds the side with fewer channels; the rows are the other side.
  const bool rows_are_grad = K <= M;
  const int64_t panel_channels = rows_are_grad ? K : M;
  const ActivationLayout& row_layout = rows_are_grad ? gy_layout : x_layout;
  const ActivationLayout& panel_layout = rows_are_grad ? x_layout : gy_layout;
  const T* row_data = rows_are_grad ? gy : x;
  const T* panel_data = rows_are_grad ? x : gy;
  const int64_t* row_channel = rows_are_grad ? t.out_channel.data() + j * M : t.in_channel.data() + j * K;
  const int64_t* panel_channel = rows_are_grad ? t.in_channel.data() + j * K : t.out_channel.data() + j * M;

  const int64_t rows = row_end - row_begin;
  const int64_t padded_channels = round_up(panel_channels, kLanes<T>);
  const int64_t chunk = std::min(q1 - q0, std::clamp<int64_t>(kPanelBytes / (padded_channels * sizeof(T)), 1,
                                                              kMaxReductionChunk));
  std::vector<T> panel(chunk * padded_channels, T(0));
  std::vector<const T*> panel_rows(chunk), a_rows(rows);
  std::vector<int64_t> a_offsets(chunk);
  for (int64_t i = 0; i < chunk; ++i) panel_rows[i] = panel.data() + i * padded_channels;
  for (int64_t r = 0; r < rows; ++r)
    a_rows[r] = row_data + row_channel[row_begin + r] * row_layout.channel_stride();
  acc_t<T>* out = partial + j * M * K;

  // Flattened pixel q = n * pixels + pixel, stepped without a division per pixel.
  int64_t n = q0 / p.pixels(), pixel = q0 % p.pixels();
  for (int64_t c0 = q0; c0 < q1; c0 += chunk) {
    const int64_t depth = std::min(chunk, q1 - c0);
    for (int64_t i = 0; i < depth; ++i) {
      a_offsets[i] = row_layout.pixel_offset(n, pixel);
      const T* source = panel_data + panel_layout.pixel_offset(n, pixel);
      T* dst = panel.data() + i * padded_channels;
      for (int64_t c = 0; c < panel_channels; ++c)
        dst[c] = source[panel_channel[c] * panel_layout.channel_stride()];
      if (++pixel == p.pixels()) pixel = 0, ++n;
    }
    GemmOperands<T> g{a_rows.data(), a_offsets.data(), panel_rows.data(), depth};
    g.b_rows_padded = true;
    gemm(g, rows, 0, panel_channels,
         [&](int64_t r0, int64_t nrows, int64_t col0, int64_t cols, const acc_t<T>* tile) {
           constexpr int64_t ld = kTileVectors * kLanes<T>;
           const int64_t row0 = row_begin + r0;
           if (rows_are_grad) {
             for (int64_t r = 0; r < nrows; ++r)
               for (int64_t c = 0; c < cols; ++c) out[(row0 + r) * K + col0 + c] += tile[r * ld + c];
           } else {
             // Rows are k: each column m of the tile is a run of consecutive k.
             for (int64_t c = 0; c < cols; ++c)
               for (int64_t r = 0; r < nrows; ++r) out[(col0 + c) * K + row0 + r] += tile[r * ld + c];
           }
         });
  }
}

at::Tensor grad_weight_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in, int64_t groups,
                           int64_t input_shuffle, int64_t output_shuffle) {
  const ConvProblem p = check_grad_weight(grad_out_in, x_in, groups, input_shuffle, output_shuffle);
  const int64_t K = p.in_per_group(), M = p.out_per_group();
  at::Tensor gw = at::empty({p.out_channels, K, 1, 1}, x_in.options());
  const int64_t total_pixels = p.batch * p.pixels();
  if (gw.numel() == 0) return gw;
  if (total_pixels == 0) return gw.zero_();
  if (!has_vectorized_kernel(x_in)) {
    return stock_computation(kGradWeightOp, x_in, at::MemoryFormat::Contiguous,
                             [&] { return stock_grad_weight(p, grad_out_in, x_in); });
  }
  // Both operands in one layout, chosen by x, the larger of the two.
  const at::MemoryFormat format = x_in.suggest_memory_format();
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor gy = grad_out_in.contiguous(format);
  const bool pixel_major = is_channels_last(x);
  const ChannelTables tables(p);
  const int64_t slices =
      std::clamp<int64_t>((total_pixels + kPixelsPerSlice - 1) / kPixelsPerSlice, 1, kMaxSlices);
  const int64_t per_slice = (total_pixels + slices - 1) / slices;
  // Split the broadcast-side rows too when groups x slices alone cannot feed the threads.
  const int64_t row_count = std::max(K, M);
  const RowSplit split = split_rows(row_count, p.groups * slices);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "grad_weight_cpu", [&] {
    using A = acc_t<scalar_t>;
    const int64_t slice_size = p.out_channels * K;
    std::vector<A> partials(slices * slice_size, A(0));
    const scalar_t* gy_data = gy.const_data_ptr<scalar_t>();
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    const int64_t grain = grain_for(per_slice * split.size * std::min(K, M), kMinMacsPerThread);
    at::parallel_for(0, p.groups * slices * split.count, grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t part = task % split.count, j = task / split.count % p.groups;
        const int64_t s = task / split.count / p.groups;
        const int64_t q0 = s * per_slice, q1 = std::min(total_pixels, q0 + per_slice);
        const int64_t r0 = part * split.size, r1 = std::min(row_count, r0 + split.size);
        if (q0 >= q1 || r0 >= r1) continue;
        grad_weight_rows(p, tables, gy_data, x_data, pixel_major, j, r0, r1, q0, q1,
                         partials.data() + s * slice_size);
      }
    });
    scalar_t* out = gw.mutable_data_ptr<scalar_t>();
    // Slices are added in order into the first one, a contiguous (vectorized) pass each.
    at::parallel_for(0, slice_size, grain_for(slices, kMinElementsPerThread), [&](int64_t begin, int64_t end) {
      A* sum = partials.data();
      for (int64_t s = 1; s < slices; ++s) {
        const A* slice = partials.data() + s * slice_size;
        for (int64_t i = begin; i < end; ++i) sum[i] += slice[i];
      }
      for (int64_t i = begin; i < end; ++i) store_scalar(out + i, sum[i]);
    });
  });
  return gw;
}

// ---------------------------------------------------------------- grad_bias

at::Tensor grad_bias_cpu(const at::Tensor& grad_out_in, int64_t output_shuffle) {
  check_grad_bias(grad_out_in, output_shuffle);
  const int64_t N = grad_out_in.size(0), C = grad_out_in.size(1);
  const int64_t HW = grad_out_in.size(2) * grad_out_in.size(3);
  at::Tensor gb = at::empty({C}, grad_out_in.options());
  if (C == 0) return gb;
  if (!has_vectorized_kernel(grad_out_in)) {
    return stock_computation(kGradBiasOp, grad_out_in, at::MemoryFormat::Contiguous,
                             [&] { return stock_grad_bias(grad_out_in, output_shuffle); });
  }
  const at::MemoryFormat format = grad_out_in.suggest_memory_format();
  const at::Tensor gy = grad_out_in.contiguous(format);
  const bool pixel_major = is_channels_last(gy);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, gy.scalar_type(), "grad_bias_cpu", [&] {
    using A = acc_t<scalar_t>;
    using V = vec_t<scalar_t>;
    constexpr int L = kLanes<scalar_t>;
    const scalar_t* data = gy.const_data_ptr<scalar_t>();
    std::vector<A> sums(C);  // indexed by the physical channel of grad_out
    if (pixel_major) {
      at::parallel_for(0, (C + L - 1) / L, grain_for(N * HW * L, kMinElementsPerThread),
                       [&](int64_t begin, int64_t end) {
        for (int64_t block = begin; block < end; ++block) {
          const int64_t c0 = block * L, width = std::min<int64_t>(L, C - c0);
          V acc{};
          for (int64_t q = 0; q < N * HW; ++q) acc += load_vec_partial(data + q * C + c0, width);
          for (int64_t i = 0; i < width; ++i) sums[c0 + i] = acc[i];
        }
      });
    } else {
      at::parallel_for(0, C, grain_for(N * HW, kMinElementsPerThread), [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          V acc{};
          for (int64_t n = 0; n < N; ++n) {
            const scalar_t* row = data + (n * C + c) * HW;
            int64_t i = 0;
            for (; i + L <= HW; i += L) acc += load_vec(row + i);
            if (i < HW) acc += load_vec_partial(row + i, HW - i);
          }
          sums[c] = horizontal_sum(acc);
        }
      });
    }
    scalar_t* out = gb.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c)
      store_scalar(out + c, sums[shuffle_destination_channel(c, output_shuffle, C)]);
  });
  return gb;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) {
  m.impl("pointwise_group_conv", &pointwise_group_conv_cpu);
  m.impl("pointwise_group_conv_grad_input", &grad_input_cpu);
  m.impl("pointwise_group_conv_grad_weight", &grad_weight_cpu);
  m.impl("pointwise_group_conv_grad_bias", &grad_bias_cpu);
}

}  // namespace shufflenet_ops::cpu
