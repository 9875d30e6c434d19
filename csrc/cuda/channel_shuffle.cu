// CUDA channel shuffle over a dense [outer, C, inner] view: a byte copy of any
// dtype. Each thread writes one 16-byte vector of consecutive output elements
// and walks its sources incrementally (no division per element); when the
// rows (inner) are whole vectors, the source is one aligned 16-byte vector too.
#include "../kernels/shuffle_index.h"
#include "launch.h"

#include <algorithm>
#include <cstdint>

namespace shufflenet_ops::cuda {
namespace {

constexpr int kThreads = 256;

template <int kBytes>
struct WordOf;
template <> struct WordOf<1> { using type = uint8_t; };
template <> struct WordOf<2> { using type = uint16_t; };
template <> struct WordOf<4> { using type = uint32_t; };
template <> struct WordOf<8> { using type = uint64_t; };
// Complex128: 16 bytes, but only 8-byte aligned as a tensor element.
struct alignas(8) Bytes16 {
  uint64_t low, high;
};
template <> struct WordOf<16> { using type = Bytes16; };

template <typename Word>
struct alignas(16) Vector {
  static constexpr int kSize = 16 / sizeof(Word);
  Word words[kSize];
};

// Output element f = (o * C + c) * inner + i reads source row o * C +
// shuffle_source_channel(c), kept as (c % groups, c / groups) so that moving to
// the next channel needs no division.
template <typename Index>
struct SourceWalk {
  Index inner, channels, groups, per_group;
  Index o, c, c_mod, c_div, i;

  __device__ void start(Index f) {
    const Index row = f / inner;
    i = f - row * inner;
    o = row / channels;
    c = row - o * channels;
    c_div = c / groups;
    c_mod = c - c_div * groups;
  }
  __device__ Index offset() const {
    return ((o * channels + c_mod * per_group + c_div) * inner) + i;
  }
  __device__ void advance(Index n) {
    i += n;
    if (i < inner) return;
    i = 0;
    ++c;
    if (++c_mod == groups) {
      c_mod = 0;
      ++c_div;
    }
    if (c == channels) {
      c = c_mod = c_div = 0;
      ++o;
    }
  }
};

template <typename Word, typename Index, bool kVectorLoads>
__global__ void __launch_bounds__(kThreads) channel_shuffle_kernel(const ChannelShuffleParams p) {
  using V = Vector<Word>;
  constexpr int kSize = V::kSize;
  const Word* x = static_cast<const Word*>(p.x);
  Word* y = static_cast<Word*>(p.y);
  const Index total = static_cast<Index>(p.outer * p.channels * p.inner);
  SourceWalk<Index> walk;
  walk.inner = static_cast<Index>(p.inner);
  walk.channels = static_cast<Index>(p.channels);
  walk.groups = static_cast<Index>(p.groups);
  walk.per_group = static_cast<Index>(p.channels / p.groups);
  const Index stride = static_cast<Index>(gridDim.x) * kThreads * kSize;
  for (Index f = (static_cast<Index>(blockIdx.x) * kThreads + threadIdx.x) * kSize; f < total;
       f += stride) {
    walk.start(f);
    if (f + kSize <= total) {
      V v;
      if (kVectorLoads) {
        v = *reinterpret_cast<const V*>(x + walk.offset());
      } else {
#pragma unroll
        for (int e = 0; e < kSize; ++e) {
          v.words[e] = x[walk.offset()];
          walk.advance(1);
        }
      }
      *reinterpret_cast<V*>(y + f) = v;
    } else {
      for (Index e = f; e < total; ++e) {
        y[e] = x[walk.offset()];
        walk.advance(1);
      }
    }
  }
}

template <typename Word, typename Index>
cudaError_t launch_words(const ChannelShuffleParams& p, cudaStream_t stream) {
  constexpr int kSize = Vector<Word>::kSize;
  const int64_t total = p.outer * p.channels * p.inner;
  const int64_t vectors = (total + kSize - 1) / kSize;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((vectors + kThreads - 1) / kThreads, 1 << 20));
  const bool aligned = reinterpret_cast<uintptr_t>(p.x) % 16 == 0 && p.inner % kSize == 0;
  if (aligned) {
    channel_shuffle_kernel<Word, Index, true><<<blocks, kThreads, 0, stream>>>(p);
  } else {
    channel_shuffle_kernel<Word, Index, false><<<blocks, kThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <int kBytes>
cudaError_t launch_bytes(const ChannelShuffleParams& p, cudaStream_t stream) {
  using Word = typename WordOf<kBytes>::type;
  // 32-bit indices when every index (plus one grid stride) fits.
  const int64_t total = p.outer * p.channels * p.inner;
  if (total < (int64_t{1} << 30)) return launch_words<Word, int32_t>(p, stream);
  return launch_words<Word, int64_t>(p, stream);
}

}  // namespace

cudaError_t launch_channel_shuffle(const ChannelShuffleParams& params, cudaStream_t stream) {
  if (params.outer * params.channels * params.inner == 0) return cudaSuccess;
  if (reinterpret_cast<uintptr_t>(params.y) % 16 != 0) return cudaErrorMisalignedAddress;
  switch (params.element_size) {
    case 1: return launch_bytes<1>(params, stream);
    case 2: return launch_bytes<2>(params, stream);
    case 4: return launch_bytes<4>(params, stream);
    case 8: return launch_bytes<8>(params, stream);
    case 16: return launch_bytes<16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace shufflenet_ops::cuda
