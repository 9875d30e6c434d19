// Portable SIMD for the CPU kernels: GCC/Clang vector extensions sized to the
// widest vector unit the build targets, so one kernel source compiles to
// AVX-512, AVX2 or SSE/NEON code. bfloat16 is loaded into and stored from
// float32 vectors, so every kernel accumulates bfloat16 in float32.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>
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

// The first `count` (< kLanes) elements, the rest zero: for row tails.
template <typename T>
inline vec_t<T> load_vec_partial(const T* p, int64_t count) {
  T padded[kLanes<T>] = {};
  std::memcpy(padded, p, count * sizeof(T));
  return load_vec(padded);
}

template <typename T>
inline void store_vec_partial(T* p, vec_t<T> v, int64_t count) {
  T padded[kLanes<T>];
  store_vec(padded, v);
  std::memcpy(p, padded, count * sizeof(T));
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

}  // namespace shufflenet_ops::cpu
