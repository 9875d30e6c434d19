// The CPU GEMM engine of the fused ops. Every product the ops need has the form
//
//   C(r, c) = sum_k A(r, k) * B(k, c),   A(r, k) = a_rows[r][a_offsets[k]],
//                                        B(k, c) = b_rows[k][c]
//
// with A read one scalar at a time (broadcast) and B read as contiguous vectors.
// Because rows are reached through pointer tables and A's columns through an
// offset table, a channel shuffle on either operand is only a different table:
// nothing shuffled is ever materialized.
#pragma once

#include "simd.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace shufflenet_ops::cpu {

template <typename T>
struct GemmOperands {
  const T* const* a_rows;
  const int64_t* a_offsets;
  const T* const* b_rows;
  int64_t depth;
  // B rows may be read up to the next multiple of the vector width (packed,
  // zero-padded weights); otherwise a ragged last column block is copied first.
  bool b_rows_padded = false;
  // A(r, k) = a_rows[r][k]: lets a short ragged column tail run as dot products.
  bool a_rows_contiguous = false;
  // B rows equally spaced, b_rows[k] = b_rows[0] + k * b_row_stride (0: not
  // known). With contiguous A rows too, the k loop needs no table loads.
  int64_t b_row_stride = 0;
};

// a_offsets for A columns `step` elements apart: 0, step, 2 step, ...
inline std::vector<int64_t> column_offsets(int64_t depth, int64_t step = 1) {
  std::vector<int64_t> offsets(depth);
  for (int64_t k = 0; k < depth; ++k) offsets[k] = k * step;
  return offsets;
}

// Register tile: kTileRows rows of A by kTileVectors vectors of B columns,
// sized to leave a register for the B vectors and one for the broadcast.
inline constexpr int kTileVectors = 3;
inline constexpr int kTileRows = kVectorRegisters >= 32 ? 8 : 4;

// Where and how a finished tile is written: out(r, c) goes to
// out_rows[r][c] (contiguous columns) or out_rows[r][col_offsets[c]], after
// adding row_bias[r] or col_bias[c], the residual at the same place in
// residual_rows, and an optional ReLU.
template <typename T>
struct TileStore {
  T* const* out_rows;
  const int64_t* col_offsets = nullptr;
  const acc_t<T>* row_bias = nullptr;
  const acc_t<T>* col_bias = nullptr;
  const T* const* residual_rows = nullptr;
  bool relu = false;
};

template <typename T>
inline void store_tile(const TileStore<T>& s, int64_t row0, int64_t rows, int64_t col0,
                       int64_t cols, const acc_t<T>* tile) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  constexpr int64_t ld = kTileVectors * L;
  for (int64_t r = 0; r < rows; ++r) {
    const A* t = tile + r * ld;
    T* out = s.out_rows[row0 + r];
    const T* residual = s.residual_rows ? s.residual_rows[row0 + r] : nullptr;
    const A row_bias = s.row_bias ? s.row_bias[row0 + r] : A(0);
    if (s.col_offsets == nullptr) {
      for (int64_t c = 0; c < cols; c += L) {
        V v;
        std::memcpy(&v, t + c, sizeof v);
        v += row_bias;
        const int64_t width = std::min<int64_t>(L, cols - c);
        if (s.col_bias) v += load_vec_partial(s.col_bias + col0 + c, width);
        if (residual) v += width == L ? load_vec(residual + col0 + c) : load_vec_partial(residual + col0 + c, width);
        if (s.relu) v = v < A(0) ? V{} : v;  // NaN stays NaN, as in F.relu
        if (cols - c >= L) {
          store_vec(out + col0 + c, v);
        } else {
          store_vec_partial(out + col0 + c, v, cols - c);
        }
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        A v = t[c] + row_bias + (s.col_bias ? s.col_bias[col0 + c] : A(0));
        if (residual) v += load_scalar(residual + s.col_offsets[col0 + c]);
        if (s.relu) v = v < A(0) ? A(0) : v;
        store_scalar(out + s.col_offsets[col0 + c], v);
      }
    }
  }
}

// Accumulates a Rows x (Vectors * lanes) tile starting at B column b_col.
// With `direct`, the finished tile goes from registers to the output (bias,
// ReLU and store, columns out_col0...); otherwise it overwrites `tile` (row
// stride kTileVectors * lanes) for the caller to consume.
template <typename T, int Rows, int Vectors>
inline void accumulate_tile(const GemmOperands<T>& g, int64_t row0, int64_t b_col, acc_t<T>* tile,
                            const TileStore<T>* direct, int64_t out_col0) {
  using A = acc_t<T>;
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  V acc[Rows][Vectors];
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < Vectors; ++v) acc[r][v] = V{};
  const T* const* a_rows = g.a_rows + row0;
  if (direct != nullptr && direct->residual_rows != nullptr) {
    // The residual is requested now, so that its misses overlap the k loop. (Prefetching the
    // output lines for writing too measured slower.)
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
      for (int v = 0; v < Vectors; ++v) __builtin_prefetch(direct->residual_rows[row0 + r] + out_col0 + v * L, 0, 3);
  }
  const auto step = [&](const T* b, int64_t a_offset) __attribute__((always_inline)) {
    V bv[Vectors];
#pragma GCC unroll 3
    for (int v = 0; v < Vectors; ++v) bv[v] = load_vec(b + v * L);
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      const A a = load_scalar(a_rows[r] + a_offset);
#pragma GCC unroll 3
      for (int v = 0; v < Vectors; ++v) acc[r][v] += a * bv[v];
    }
  };
  // An empty reduction (depth 0: no input channels) reads no operand, not even
  // the first B row, and leaves the tile zero for the epilogue.
  if (g.b_row_stride != 0 && g.a_rows_contiguous && g.depth > 0) {
    const T* b = g.b_rows[0] + b_col;
    for (int64_t k = 0; k < g.depth; ++k) step(b + k * g.b_row_stride, k);
  } else {
    for (int64_t k = 0; k < g.depth; ++k) step(g.b_rows[k] + b_col, g.a_offsets[k]);
  }
  if (direct != nullptr) {
#pragma GCC unroll 8
    for (int r = 0; r < Rows; ++r) {
      T* out = direct->out_rows[row0 + r] + out_col0;
      const T* residual = direct->residual_rows ? direct->residual_rows[row0 + r] + out_col0 : nullptr;
      const A row_bias = direct->row_bias ? direct->row_bias[row0 + r] : A(0);
#pragma GCC unroll 3
      for (int v = 0; v < Vectors; ++v) {
        V value = acc[r][v] + row_bias;
        if (direct->col_bias) value += load_vec(direct->col_bias + out_col0 + v * L);
        if (residual) value += load_vec(residual + v * L);
        if (direct->relu) value = value < A(0) ? V{} : value;
        store_vec(out + v * L, value);
      }
    }
    return;
  }
#pragma GCC unroll 8
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < Vectors; ++v)
      std::memcpy(tile + r * kTileVectors * L + v * L, &acc[r][v], sizeof(V));
}

template <typename T, int Vectors>
inline void accumulate_rows(const GemmOperands<T>& g, int64_t row0, int64_t rows, int64_t b_col,
                            acc_t<T>* tile, const TileStore<T>* direct, int64_t out_col0) {
  static_assert(kTileRows == 8 || kTileRows == 4, "tile row dispatch below covers 4 and 8");
  switch (rows) {
    case 1: return accumulate_tile<T, 1, Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 2: return accumulate_tile<T, 2, Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 3: return accumulate_tile<T, 3, Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 4: return accumulate_tile<T, 4, Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 5: return accumulate_tile<T, (kTileRows > 4 ? 5 : 4), Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 6: return accumulate_tile<T, (kTileRows > 4 ? 6 : 4), Vectors>(g, row0, b_col, tile, direct, out_col0);
    case 7: return accumulate_tile<T, (kTileRows > 4 ? 7 : 4), Vectors>(g, row0, b_col, tile, direct, out_col0);
    default: return accumulate_tile<T, kTileRows, Vectors>(g, row0, b_col, tile, direct, out_col0);
  }
}

// A ragged tail of at most this many columns (the odd pixels of a 7x7 or
// 14x14 image) may run as dot products along k over A's contiguous rows.
inline constexpr int kDotTailColumns = 8;

// Whether those dot products beat a tile that spends a whole vector on the
// tail: per row, `tail` dot products of depth / lanes FMAs plus their share of
// a transposing reduction (about two shuffles and an add per sum) against
// about one FMA per k.
template <typename T>
inline bool dot_tail_pays(int64_t tail, int64_t depth) {
  constexpr int64_t kReductionCostPerSum = 3;
  return tail <= kDotTailColumns && tail * ((depth + kLanes<T> - 1) / kLanes<T> + kReductionCostPerSum) < depth;
}

// The columns a dot tile of `cols` tail columns computes: 1, 2, 4 or 8.
inline constexpr int64_t dot_tile_columns(int64_t cols) {
  return cols <= 2 ? cols : cols <= 4 ? 4 : kDotTailColumns;
}

// B's columns [col0, col0 + cols), cols <= kDotTailColumns, copied once per
// gemm as zero-padded rows of depth rounded up to whole vectors: the dot
// products of every row tile read them as vectors.
template <typename T>
inline void pack_tail_columns(const GemmOperands<T>& g, int64_t col0, int64_t cols,
                              std::vector<acc_t<T>>& columns) {
  const int64_t depth_padded = round_up(g.depth, kLanes<T>);
  columns.assign(dot_tile_columns(cols) * depth_padded, acc_t<T>(0));
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t k = 0; k < g.depth; ++k) columns[c * depth_padded + k] = load_scalar(g.b_rows[k] + col0 + c);
}

// Columns [0, Cols) of the packed tail of a tile of `rows` rows, as dot
// products of A's rows with the packed columns; columns past `cols` are zero
// and go unstored. Rows run in batches whose Cols x rows accumulators (at most
// a vector's lanes) are summed by one transposing reduction.
template <typename T, int Cols>
inline void dot_tile(const GemmOperands<T>& g, int64_t row0, int64_t rows, int64_t cols,
                     const acc_t<T>* columns, acc_t<T>* tile) {
  using V = vec_t<T>;
  constexpr int L = kLanes<T>;
  constexpr int kBatchRows = std::min(kTileRows, L / Cols);
  constexpr int kSums = kBatchRows * Cols;
  const int64_t depth_padded = round_up(g.depth, L);
  for (int64_t r0 = 0; r0 < rows; r0 += kBatchRows) {
    const int64_t batch_rows = std::min<int64_t>(kBatchRows, rows - r0);
    const T* a_rows[kBatchRows];
    // Rows past the tile repeat its first row: computed, never stored.
    for (int r = 0; r < kBatchRows; ++r) a_rows[r] = g.a_rows[row0 + r0 + (r < batch_rows ? r : 0)];
    V acc[kSums];
#pragma GCC unroll 16
    for (int i = 0; i < kSums; ++i) acc[i] = V{};
    for (int64_t k = 0; k < g.depth; k += L) {
      const int64_t valid = std::min<int64_t>(L, g.depth - k);
      V b[Cols];
#pragma GCC unroll 8
      for (int c = 0; c < Cols; ++c) std::memcpy(&b[c], columns + c * depth_padded + k, sizeof(V));
#pragma GCC unroll 8
      for (int r = 0; r < kBatchRows; ++r) {
        const V a = valid == L ? load_vec(a_rows[r] + k) : load_vec_partial(a_rows[r] + k, valid);
#pragma GCC unroll 8
        for (int c = 0; c < Cols; ++c) acc[r * Cols + c] += a * b[c];
      }
    }
    const V sums = transposed_sums<kSums>(acc);
    for (int64_t r = 0; r < batch_rows; ++r)
      for (int64_t c = 0; c < cols; ++c) tile[(r0 + r) * kTileVectors * L + c] = sums[r * Cols + c];
  }
}

template <typename T>
inline void dot_tail(const GemmOperands<T>& g, int64_t row0, int64_t rows, int64_t cols,
                     const acc_t<T>* columns, acc_t<T>* tile) {
  switch (dot_tile_columns(cols)) {
    case 1: return dot_tile<T, 1>(g, row0, rows, cols, columns, tile);
    case 2: return dot_tile<T, 2>(g, row0, rows, cols, columns, tile);
    case 4: return dot_tile<T, 4>(g, row0, rows, cols, columns, tile);
    default: return dot_tile<T, kDotTailColumns>(g, row0, rows, cols, columns, tile);
  }
}

// Up to this many bytes of B, the row tiles run outermost: each row tile
// sweeps all columns, so the output is written as a few long runs rather than
// one short run per row at a time (with a shuffle, rows far apart), and B
// streams from L2. Bigger B panels run column blocks outermost to keep B in L1.
inline constexpr int64_t kRowsOuterPanelBytes = 256 * 1024;

// C = A * B for `rows` x [col_begin, col_end). `store` is a TileStore, or a
// callable store(row0, rows, col0, cols, tile) given each finished tile.
template <typename T, typename Store>
void gemm(const GemmOperands<T>& g, int64_t rows, int64_t col_begin, int64_t col_end,
          const Store& store) {
  constexpr bool is_tile_store = std::is_same_v<Store, TileStore<T>>;
  constexpr int L = kLanes<T>;
  constexpr int64_t block_columns = kTileVectors * L;

  // A block of up to kTileVectors vectors of columns: `cols` of them as
  // register tiles, then `tail` more as dot products.
  struct ColumnBlock {
    int64_t col0, cols, tail;
    int vectors;
    GemmOperands<T> panel;  // B as the tiles read it (a ragged last block is copied, zero-padded)
    int64_t b_col;
    const TileStore<T>* direct;  // full vectors to contiguous columns go straight from registers
  };
  // Kept per thread, so the many small calls of a batch-1 layer reuse their
  // buffers rather than allocate them; a store must therefore not call gemm.
  struct Scratch {
    std::vector<ColumnBlock> blocks;
    std::vector<T> padded;
    std::vector<const T*> padded_rows;
    std::vector<acc_t<T>> tail_columns;  // only the last block can have a tail
  };
  thread_local Scratch scratch;
  std::vector<ColumnBlock>& blocks = scratch.blocks;
  std::vector<T>& padded = scratch.padded;
  std::vector<const T*>& padded_rows = scratch.padded_rows;
  std::vector<acc_t<T>>& tail_columns = scratch.tail_columns;
  blocks.clear();
  for (int64_t col0 = col_begin; col0 < col_end; col0 += block_columns) {
    ColumnBlock b{col0, std::min(block_columns, col_end - col0), 0, 0, g, col0, nullptr};
    if (const int64_t tail = b.cols % L; g.a_rows_contiguous && tail != 0 && dot_tail_pays<T>(tail, g.depth)) {
      b.tail = tail;
      b.cols -= tail;
      pack_tail_columns(g, col0 + b.cols, tail, tail_columns);
    }
    b.vectors = static_cast<int>((b.cols + L - 1) / L);
    if (b.cols % L != 0 && !g.b_rows_padded) {  // only the last block is ragged
      padded.assign(g.depth * b.vectors * L, T(0));
      padded_rows.resize(g.depth);
      for (int64_t k = 0; k < g.depth; ++k) {
        std::memcpy(padded.data() + k * b.vectors * L, g.b_rows[k] + col0, b.cols * sizeof(T));
        padded_rows[k] = padded.data() + k * b.vectors * L;
      }
      b.panel.b_rows = padded_rows.data();
      b.panel.b_row_stride = b.vectors * L;
      b.b_col = 0;
    }
    if constexpr (is_tile_store) {
      if (store.col_offsets == nullptr && b.cols == b.vectors * L) b.direct = &store;
    }
    blocks.push_back(b);
  }

  alignas(64) acc_t<T> tile[kTileRows * kTileVectors * L];
  const auto finish = [&](int64_t row0, int64_t tile_rows, int64_t col0, int64_t cols) {
    if constexpr (is_tile_store) {
      store_tile(store, row0, tile_rows, col0, cols, tile);
    } else {
      store(row0, tile_rows, col0, cols, tile);
    }
  };
  const auto run_tile = [&](const ColumnBlock& b, int64_t row0) {
    const int64_t tile_rows = std::min<int64_t>(kTileRows, rows - row0);
    if (b.tail != 0) {
      dot_tail(g, row0, tile_rows, b.tail, tail_columns.data(), tile);
      finish(row0, tile_rows, b.col0 + b.cols, b.tail);
    }
    if (b.cols == 0) return;
    switch (b.vectors) {
      case 1: accumulate_rows<T, 1>(b.panel, row0, tile_rows, b.b_col, tile, b.direct, b.col0); break;
      case 2: accumulate_rows<T, 2>(b.panel, row0, tile_rows, b.b_col, tile, b.direct, b.col0); break;
      default: accumulate_rows<T, 3>(b.panel, row0, tile_rows, b.b_col, tile, b.direct, b.col0); break;
    }
    if (b.direct == nullptr) finish(row0, tile_rows, b.col0, b.cols);
  };
  const bool rows_outer = g.depth * (col_end - col_begin) * int64_t(sizeof(T)) <= kRowsOuterPanelBytes;
  if (rows_outer) {
    for (int64_t row0 = 0; row0 < rows; row0 += kTileRows)
      for (const ColumnBlock& b : blocks) run_tile(b, row0);
  } else {
    for (const ColumnBlock& b : blocks)
      for (int64_t row0 = 0; row0 < rows; row0 += kTileRows) run_tile(b, row0);
  }
}

}  // namespace shufflenet_ops::cpu
