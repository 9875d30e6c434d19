// Portable SIMD for the CPU kernels: GCC/Clang vector extensions sized to the
// widest vector unit the build targets, so one kernel source compiles to
// AVX-512, AVX2 or SSE/NEON code. bfloat16 is loaded into and stored from
// float32 vectors, so every kernel accumulates bfloat16 in float32.
#pragma once

#include <c10/util/BFloat16.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace shufflenet_ops::cpu {

#if defined(__AVX512F__)
inline constexpr int kVectorBytes = 64;
inline constexpr int kVectorRegisters = 32;
#elif defined(__AVX__)
inline constexpr int kVectorBytes = 32;
inline constexpr int kVectorRegisters = 16;
#else
inline constexpr int kVectorBytes = 16;
inline constexpr int kVectorRegisters = 16;
#endif

// Storage type -> accumulation type.
template <typename T>
struct AccumulateType {
  using type = T;
};
template <>
struct AccumulateType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccumulateType<T>::type;

template <typename Acc>
struct VectorOf {
  typedef Acc type __attribute__((vector_size(kVectorBytes)));
  static constexpr int kLanes = kVectorBytes / sizeof(Acc);
};
template <typename T>
using vec_t = typename VectorOf<acc_t<T>>::type;
template <typename T>
inline constexpr int kLanes = VectorOf<acc_t<T>>::kLanes;

typedef uint16_t bf16_bits_vec __attribute__((vector_size(kVectorBytes / 2)));
typedef uint32_t u32_vec __attribute__((vector_size(kVectorBytes)));
typedef int32_t i32_vec __attribute__((vector_size(kVectorBytes)));

inline float bf16_to_float(c10::BFloat16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
inline acc_t<T> load_scalar(const T* p) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return bf16_to_float(*p);
  } else {
    return *p;
  }
}

template <typename T>
inline void store_scalar(T* p, acc_t<T> v) {
  // c10's conversion rounds to nearest even, like store_vec below.
  *p = static_cast<T>(v);
}

template <typename T>
inline vec_t<T> load_vec(const T* p) {
  vec_t<T> v;
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    bf16_bits_vec bits;
    std::memcpy(&bits, p, sizeof bits);
    const u32_vec widened = __builtin_convertvector(bits, u32_vec) << 16;
    std::memcpy(&v, &widened, sizeof v);
  } else {
    std::memcpy(&v, p, sizeof v);
  }
  return v;
}

template <typename T>
inline void store_vec(T* p, vec_t<T> v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    u32_vec bits;
    std::memcpy(&bits, &v, sizeof bits);
    u32_vec rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const i32_vec is_nan = v != v;
    rounded = is_nan ? u32_vec{} + 0x7FC0u : rounded;
    const bf16_bits_vec narrowed = __builtin_convertvector(rounded, bf16_bits_vec);
    std::memcpy(p, &narrowed, sizeof narrowed);
  } else {
    std::memcpy(p, &v, sizeof v);
  }
}

// The first `count` (<= kLanes) elements, the rest zero: for row tails. With
// AVX-512 a masked load (no call to memcpy for a variable length; the masked-off
// lanes are never touched, so reading at the end of a buffer is safe).
template <typename T>
inline vec_t<T> load_vec_partial(const T* p, int64_t count) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), p);
  } else if constexpr (std::is_same_v<T, double>) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << count) - 1), p);
  }
#endif
  T padded[kLanes<T>] = {};
  std::memcpy(padded, p, count * sizeof(T));
  return load_vec(padded);
}

template <typename T>
inline void store_vec_partial(T* p, vec_t<T> v, int64_t count) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    return _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << count) - 1), v);
  } else if constexpr (std::is_same_v<T, double>) {
    return _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << count) - 1), v);
  }
#endif
  T padded[kLanes<T>];
  store_vec(padded, v);
  std::memcpy(p, padded, count * sizeof(T));
}

// The larger of a and b with a NaN in either winning, as in F.max_pool2d (a
// plain max keeps only one side's NaN): lane by lane for vectors, or scalars.
// Written as a max that keeps a's NaN, then a select on b's: both compile to
// branch-free instructions (vmaxss and a conditional move for scalars), where
// an `a > b || a != a` test makes scalar code branch on random data.
template <typename V>
inline V max_keeping_nan(V a, V b) {
  const V larger = b > a ? b : a;
  return b != b ? b : larger;
}

namespace detail {
template <int kFirst, typename V, size_t... I>
inline V every_other_lane(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (kFirst + 2 * static_cast<int>(I))...);
}
}  // namespace detail

// Lanes kFirst, kFirst + 2, kFirst + 4, ... of a followed by b: with kFirst 0 and 1, the even
// and odd elements of two consecutive vectors.
template <int kFirst, typename V>
inline V every_other_lane(V a, V b) {
  return detail::every_other_lane<kFirst>(a, b, std::make_index_sequence<sizeof(V) / sizeof(a[0])>());
}

inline int64_t round_up(int64_t v, int64_t multiple) { return (v + multiple - 1) / multiple * multiple; }

namespace detail {
// v with lanes [from, from + width) moved to the front (the rest repeat them).
template <int kFrom, int kWidth, typename V, size_t... I>
inline V lanes_from(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, (kFrom + static_cast<int>(I) % kWidth)...);
}

template <int kWidth, typename V>
inline auto sum_first_lanes(V v) {
  if constexpr (kWidth == 1) {
    return v[0];
  } else {
    constexpr int kLanesOfV = sizeof(V) / sizeof(v[0]);
    return sum_first_lanes<kWidth / 2>(
        v + lanes_from<kWidth / 2, kWidth / 2>(v, std::make_index_sequence<kLanesOfV>()));
  }
}
}  // namespace detail

// Sum of all lanes, as a tree of halving vector adds (log2(lanes) dependent
// steps instead of lanes - 1).
template <typename V>
inline auto horizontal_sum(V v) {
  return detail::sum_first_lanes<sizeof(V) / sizeof(v[0])>(v);
}

namespace detail {
// Lane t of the vector that packs the halves of width-W segments: a and b each
// hold lanes / W segments; the result holds twice as many of width W / 2, a's
// first. `half` picks the low (0) or high (W / 2) half of each segment.
constexpr int segment_half_lane(int lanes, int W, int half, int t) {
  const int segment = t / (W / 2), offset = t % (W / 2), per_vector = lanes / W;
  return (segment < per_vector ? segment * W : lanes + (segment - per_vector) * W) + half + offset;
}

template <int W, typename V, size_t... I>
inline V add_segment_halves(V a, V b, std::index_sequence<I...>) {
  constexpr int L = sizeof(V) / sizeof(a[0]);
  return __builtin_shufflevector(a, b, segment_half_lane(L, W, 0, I)...) +
         __builtin_shufflevector(a, b, segment_half_lane(L, W, W / 2, I)...);
}

// v[0..N) each hold one width-W segment per lanes / W lanes: pairs merge
// level by level until one vector holds the N sums' segments.
template <int N, int W, typename V>
inline V merge_segments(V* v) {
  constexpr int L = sizeof(V) / sizeof(v[0][0]);
  if constexpr (N == 1) {
    if constexpr (W == 1) {
      return v[0];
    } else {
      v[0] = add_segment_halves<W>(v[0], v[0], std::make_index_sequence<L>());
      return merge_segments<1, W / 2>(v);
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < N / 2; ++i)
      v[i] = add_segment_halves<W>(v[2 * i], v[2 * i + 1], std::make_index_sequence<L>());
    return merge_segments<N / 2, W / 2>(v);
  }
}
}  // namespace detail

// Lane i of the result is the sum of v[i]'s lanes, for N (a power of two, at
// most lanes) vectors at once: a transposing tree of about 2N shuffles and N
// adds, where N separate horizontal sums take log2(lanes) of each. Clobbers v.
template <int N, typename V>
inline V transposed_sums(V* v) {
  constexpr int L = sizeof(V) / sizeof(v[0][0]);
  static_assert(N >= 1 && N <= L && (N & (N - 1)) == 0, "N must be a power of two, at most the lane count");
  return detail::merge_segments<N, L>(v);
}

}  // namespace shufflenet_ops::cpu
