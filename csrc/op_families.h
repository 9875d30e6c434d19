// The op families: the same conv and shuffle schemas under one prefix per
// backend. The native kernels (CPU and CUDA) register under no prefix; the
// Triton kernels run on the same CUDA tensors, so they need names of their own.
// shufflenet_ops/ops.py mirrors these prefixes in its OpFamily objects.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <string>

namespace shufflenet_ops {

struct NativeFamily {
  static constexpr const char* prefix = "";
};

struct TritonFamily {
  static constexpr const char* prefix = "triton_";
};

// The handle of the registered op shufflenet_ops::<prefix><name>.
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* prefix, const char* name) {
  const std::string qualified = std::string("shufflenet_ops::") + prefix + name;
  return c10::Dispatcher::singleton().findSchemaOrThrow(qualified.c_str(), "").typed<Signature>();
}

}  // namespace shufflenet_ops
