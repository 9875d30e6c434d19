// CPU channel shuffle. Contiguous layouts copy whole planes (NCHW: one memcpy
// per output channel). In channels_last each pixel's channels are a
// (groups, C / groups) matrix to transpose: for 2, 3, 4, 8 or 16 groups with
// vector shuffles (see transpose_block), otherwise a gather through a
// precomputed index table. Any dtype is a copy of its bits.
#include "../kernels/shuffle_index.h"
#include "../validation.h"
#include "parallel.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <utility>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

constexpr const char* kOp = "channel_shuffle (CPU)";

// Bytes each thread copies at least.
constexpr int64_t kMinBytesPerThread = 64 * 1024;

int64_t grain(int64_t bytes_per_item) { return grain_for(bytes_per_item, kMinBytesPerThread); }

// Elements of 16 bytes (complex128) are copied as a pair of 64-bit words.
struct Bits128 {
  uint64_t word[2];
};

template <typename Bits>
void gather_channels(const Bits* x, Bits* y, int64_t pixels, int64_t channels, int64_t groups) {
  std::vector<int64_t> source(channels);
  fill_shuffle_source_table(groups, channels, source.data());
  at::parallel_for(0, pixels, grain(channels * sizeof(Bits)), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const Bits* in = x + q * channels;
      Bits* out = y + q * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] = in[source[c]];
    }
  });
}

// Lane-wise interleave of a and b, first or second half: {a0, b0, a1, b1, ...}.
template <bool kHigh, typename V, size_t... I>
inline V zip(V a, V b, std::index_sequence<I...>) {
  constexpr int kLanesOfV = sizeof...(I);
  constexpr int kOffset = kHigh ? kLanesOfV / 2 : 0;
  return __builtin_shufflevector(a, b, (I % 2 ? kLanesOfV : 0) + kOffset + static_cast<int>(I / 2)...);
}

// Output vector kVector of a kGroups x kLanes block transposed, built by
// merging in one row after another: position p of the block comes from row
// p % kGroups, column p / kGroups, so merging row kRow takes that column from
// the second operand (lanes kLanes...) where the row matches and keeps the lane
// elsewhere.
template <int kGroups, int kVector, int kRow, typename V, size_t... kLane>
inline V merge_row(V merged, V row, std::index_sequence<kLane...>) {
  constexpr int kLanes = sizeof...(kLane);
  return __builtin_shufflevector(
      merged, row,
      ((kVector * kLanes + kLane) % kGroups == kRow ? kLanes + (kVector * kLanes + kLane) / kGroups
                                                      : kLane)...);
}

template <int kGroups, int kVector, typename V, size_t... kRow>
inline V merge_rows(const V* rows, std::index_sequence<kRow...>) {
  constexpr auto lanes = std::make_index_sequence<sizeof(V) / sizeof(rows[0][0])>();
  V merged = rows[0];
  ((merged = merge_row<kGroups, kVector, kRow>(merged, rows[kRow], lanes)), ...);
  return merged;
}

template <int kGroups, typename V, size_t... kVector>
inline void merge_transpose(const V* rows, V* out, std::index_sequence<kVector...>) {
  ((out[kVector] = merge_rows<kGroups, kVector>(rows, std::make_index_sequence<kGroups>())), ...);
}

// Writes the kGroups x kLanesOfBlock block whose rows start at `in`, `stride`
// apart, transposed to `out`: out[l * kGroups + g] = in[g * stride + l].
// A power-of-two kGroups takes log2(kGroups) stages that zip row k with row
// k + kGroups / 2; any other builds each output vector by merging the rows in,
// one two-operand shuffle per row.
template <typename Bits, int kGroups, int kLanesOfBlock>
inline void transpose_block(const Bits* in, int64_t stride, Bits* out) {
  typedef Bits V __attribute__((vector_size(kLanesOfBlock * sizeof(Bits))));
  constexpr auto lanes = std::make_index_sequence<kLanesOfBlock>();
  V rows[kGroups];
#pragma GCC unroll 16
  for (int g = 0; g < kGroups; ++g) std::memcpy(&rows[g], in + g * stride, sizeof(V));
  if constexpr ((kGroups & (kGroups - 1)) == 0) {
#pragma GCC unroll 4
    for (int stage = 1; stage < kGroups; stage *= 2) {
      V zipped[kGroups];
#pragma GCC unroll 8
      for (int k = 0; k < kGroups / 2; ++k) {
        zipped[2 * k] = zip<false>(rows[k], rows[k + kGroups / 2], lanes);
        zipped[2 * k + 1] = zip<true>(rows[k], rows[k + kGroups / 2], lanes);
      }
#pragma GCC unroll 16
      for (int g = 0; g < kGroups; ++g) rows[g] = zipped[g];
    }
#pragma GCC unroll 16
    for (int g = 0; g < kGroups; ++g) std::memcpy(out + g * kLanesOfBlock, &rows[g], sizeof(V));
  } else {
    V transposed[kGroups];
    merge_transpose<kGroups>(rows, transposed, std::make_index_sequence<kGroups>());
    std::memcpy(out, transposed, sizeof transposed);
  }
}

// One pixel's (kGroups, per_group) matrix transposed, columns [from, per_group):
// full vectors first, then halves, down to single elements.
template <typename Bits, int kGroups, int kLanesOfBlock>
inline void transpose_pixel(const Bits* in, Bits* out, int64_t per_group, int64_t from) {
  if constexpr (kLanesOfBlock == 1) {
    for (int64_t l = from; l < per_group; ++l)
      for (int g = 0; g < kGroups; ++g) out[l * kGroups + g] = in[g * per_group + l];
  } else {
    for (; from + kLanesOfBlock <= per_group; from += kLanesOfBlock)
      transpose_block<Bits, kGroups, kLanesOfBlock>(in + from, per_group, out + from * kGroups);
    transpose_pixel<Bits, kGroups, kLanesOfBlock / 2>(in, out, per_group, from);
  }
}

template <typename Bits, int kGroups>
void transpose_channels(const Bits* x, Bits* y, int64_t pixels, int64_t channels) {
  const int64_t per_group = channels / kGroups;
  at::parallel_for(0, pixels, grain(channels * sizeof(Bits)), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q)
      transpose_pixel<Bits, kGroups, kVectorBytes / sizeof(Bits)>(x + q * channels, y + q * channels,
                                                                  per_group, 0);
  });
}

template <typename Bits>
void shuffle_channels_last(const void* src, void* dst, int64_t pixels, int64_t channels, int64_t groups) {
  const auto* x = static_cast<const Bits*>(src);
  auto* y = static_cast<Bits*>(dst);
  switch (groups) {
    case 2: return transpose_channels<Bits, 2>(x, y, pixels, channels);
    case 3: return transpose_channels<Bits, 3>(x, y, pixels, channels);
    case 4: return transpose_channels<Bits, 4>(x, y, pixels, channels);
    case 8: return transpose_channels<Bits, 8>(x, y, pixels, channels);
    case 16: return transpose_channels<Bits, 16>(x, y, pixels, channels);
    default: return gather_channels(x, y, pixels, channels, groups);
  }
}

at::Tensor channel_shuffle_cpu(const at::Tensor& x_in, int64_t groups) {
  check_channel_shuffle(x_in, groups);
  const at::MemoryFormat format = x_in.suggest_memory_format();
  at::Tensor y = at::empty(x_in.sizes(), x_in.options().memory_format(format));
  if (y.numel() == 0) return y;
  const at::Tensor x = x_in.contiguous(format);
  const int64_t N = x.size(0), C = x.size(1), inner = x.numel() / (N * C);
  const int64_t element_size = x.element_size();
  const auto* src = static_cast<const char*>(x.const_data_ptr());
  auto* dst = static_cast<char*>(y.mutable_data_ptr());

  if (format == at::MemoryFormat::Contiguous) {
    const int64_t plane_bytes = inner * element_size;
    at::parallel_for(0, N * C, grain(plane_bytes), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / C, c = row % C;
        std::memcpy(dst + row * plane_bytes,
                    src + (n * C + shuffle_source_channel(c, groups, C)) * plane_bytes, plane_bytes);
      }
    });
    return y;
  }
  // Channels-last (2-D or 3-D): channels are the innermost dimension. Every
  // element size a dtype has takes one of these.
  const int64_t pixels = N * inner;
  switch (element_size) {
    case 1: shuffle_channels_last<uint8_t>(src, dst, pixels, C, groups); break;
    case 2: shuffle_channels_last<uint16_t>(src, dst, pixels, C, groups); break;
    case 4: shuffle_channels_last<uint32_t>(src, dst, pixels, C, groups); break;
    case 8: shuffle_channels_last<uint64_t>(src, dst, pixels, C, groups); break;
    case 16:
      gather_channels(static_cast<const Bits128*>(static_cast<const void*>(src)),
                      static_cast<Bits128*>(static_cast<void*>(dst)), pixels, C, groups);
      break;
    default: TORCH_CHECK(false, kOp, ": no channels_last copy for elements of ", element_size, " bytes (",
                         x.scalar_type(), ")");
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("channel_shuffle", &channel_shuffle_cpu); }

}  // namespace shufflenet_ops::cpu
