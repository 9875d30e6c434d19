// Small operands (weights, biases) copied once per call into the accumulation
// type, so that the inner loops of a bfloat16 kernel read float32 directly.
#pragma once

#include "simd.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace shufflenet_ops::cpu {

template <typename T>
std::vector<acc_t<T>> accumulator_copy(const at::Tensor& t) {
  const at::Tensor dense = t.contiguous();
  const T* data = dense.const_data_ptr<T>();
  std::vector<acc_t<T>> out(dense.numel());
  for (int64_t i = 0; i < dense.numel(); ++i) out[i] = load_scalar(data + i);
  return out;
}

// Empty when there is no tensor (an absent bias).
template <typename T>
std::vector<acc_t<T>> accumulator_copy(const std::optional<at::Tensor>& t) {
  return t.has_value() ? accumulator_copy<T>(*t) : std::vector<acc_t<T>>{};
}

}  // namespace shufflenet_ops::cpu
