// CPU channel shuffle. Contiguous layouts copy whole planes (NCHW: one memcpy
// per output channel); channels_last gathers each pixel's channels through a
// precomputed index table. Any dtype is a byte copy.
#include "../kernels/shuffle_index.h"
#include "../validation.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace shufflenet_ops::cpu {
namespace {

// Bytes each thread should copy at least: below that, waking threads costs
// more than it saves.
constexpr int64_t kBytesPerTask = 64 * 1024;

int64_t grain(int64_t bytes_per_item) {
  return std::max<int64_t>(1, kBytesPerTask / std::max<int64_t>(1, bytes_per_item));
}

template <typename Element>
void gather_channels(const Element* x, Element* y, int64_t pixels, int64_t channels,
                     const std::vector<int64_t>& source) {
  at::parallel_for(0, pixels, grain(channels * sizeof(Element)), [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      const Element* in = x + q * channels;
      Element* out = y + q * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] = in[source[c]];
    }
  });
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
  std::vector<int64_t> source(C);
  for (int64_t c = 0; c < C; ++c) source[c] = shuffle_source_channel(c, groups, C);

  if (format == at::MemoryFormat::Contiguous) {
    const int64_t plane_bytes = inner * element_size;
    at::parallel_for(0, N * C, grain(plane_bytes), [&](int64_t begin, int64_t end) {
                       for (int64_t row = begin; row < end; ++row) {
                         const int64_t n = row / C, c = row % C;
                         std::memcpy(dst + row * plane_bytes,
                                     src + (n * C + source[c]) * plane_bytes, plane_bytes);
                       }
                     });
    return y;
  }
  // Channels-last (2-D or 3-D): channels are the innermost dimension.
  const int64_t pixels = N * inner;
  switch (element_size) {
    case 1: gather_channels(reinterpret_cast<const uint8_t*>(src), reinterpret_cast<uint8_t*>(dst), pixels, C, source); break;
    case 2: gather_channels(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<uint16_t*>(dst), pixels, C, source); break;
    case 4: gather_channels(reinterpret_cast<const uint32_t*>(src), reinterpret_cast<uint32_t*>(dst), pixels, C, source); break;
    case 8: gather_channels(reinterpret_cast<const uint64_t*>(src), reinterpret_cast<uint64_t*>(dst), pixels, C, source); break;
    default: {
      const at::Tensor contiguous = x.contiguous();
      return channel_shuffle_cpu(contiguous, groups).contiguous(format);
    }
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(shufflenet_ops, CPU, m) { m.impl("channel_shuffle", &channel_shuffle_cpu); }

}  // namespace shufflenet_ops::cpu
