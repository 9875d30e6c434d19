// The op families: the same conv and shuffle schemas under one prefix per
// backend. The native kernels (CPU and CUDA) register under no prefix; the
// Triton kernels run on the same CUDA tensors, so they need names of their own.
// shufflenet_ops/ops.py mirrors these prefixes in its OpFamily objects.
#pragma once

namespace shufflenet_ops {

struct NativeFamily {
  static constexpr const char* prefix = "";
};

struct TritonFamily {
  static constexpr const char* prefix = "triton_";
};

}  // namespace shufflenet_ops
