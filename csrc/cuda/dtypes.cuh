// Element types of the CUDA kernels: the accumulation type of each, conversions
// through it, and whether the tensor cores take it.
#pragma once

#include "params.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace shufflenet_ops::cuda {

template <typename T>
struct Element {
  using Acc = float;
  static constexpr bool kTensorCore = false;
  __device__ __forceinline__ static Acc to_acc(T v) { return static_cast<Acc>(v); }
  __device__ __forceinline__ static T from_acc(Acc v) { return static_cast<T>(v); }
};

template <>
struct Element<double> {
  using Acc = double;
  static constexpr bool kTensorCore = false;
  __device__ __forceinline__ static double to_acc(double v) { return v; }
  __device__ __forceinline__ static double from_acc(double v) { return v; }
};

template <>
struct Element<__half> {
  using Acc = float;
  static constexpr bool kTensorCore = true;
  __device__ __forceinline__ static float to_acc(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_acc(float v) { return __float2half_rn(v); }
};

template <>
struct Element<__nv_bfloat16> {
  using Acc = float;
  static constexpr bool kTensorCore = true;
  __device__ __forceinline__ static float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_acc(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <typename T>
using acc_t = typename Element<T>::Acc;

// Calls body(T{}) with T the C++ type of `dtype`.
template <typename Body>
cudaError_t dispatch_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::kFloat32: return body(float{});
    case DType::kFloat64: return body(double{});
    case DType::kFloat16: return body(__half{});
    case DType::kBFloat16: return body(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace shufflenet_ops::cuda
