// The CPU ops' computation for dtypes their vectorized kernels lack (float16 and
// whatever else stock PyTorch computes): the stock ATen operators that
// shufflenet_ops/reference.py calls, run inside the op's CPU kernel. Fused
// models call the registered ops directly, so the op itself must compute every
// dtype that the stock layers it replaced computed.
#pragma once

#include "../shuffle_tensor.h"
#include "../validation.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

namespace shufflenet_ops::cpu {

// The dtypes the vectorized CPU kernels implement (bfloat16 accumulated in float32).
inline bool has_vectorized_kernel(const at::Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kBFloat16;
}

// compute(), the op on stock ATen operators; where ATen cannot compute t's dtype
// either, a TypeError naming it (rather than ATen's message about one of its
// internal operators). The result is made dense in `format`, the memory format
// the op's fake kernel and vectorized kernel give.
template <typename Compute>
at::Tensor stock_computation(const char* op, const at::Tensor& t, at::MemoryFormat format, Compute&& compute) {
  try {
    return std::forward<Compute>(compute)().contiguous(format);
  } catch (const c10::NotImplementedError& e) {
    reject_uncomputable_dtype(op, t, e.what_without_backtrace());
  }
}

// A convolution without input channels, [N, C_out, H, W]: an empty sum plus the
// bias, as the GEMM kernels compute it (stock conv2d returns no output
// channels at all for C_in = 0).
inline at::Tensor stock_empty_sum(at::IntArrayRef shape, const at::TensorOptions& options,
                                  const std::optional<at::Tensor>& bias) {
  at::Tensor sum = at::zeros(shape, options);
  if (bias.has_value()) sum.add_(bias->reshape({1, shape[1], 1, 1}));
  return sum;
}

}  // namespace shufflenet_ops::cpu
