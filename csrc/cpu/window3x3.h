// The output setup shared by the CPU kernels of 3x3 window ops with padding 1
// and stride 1 or 2 (depthwise conv, pooling; the stem takes the sizes): sizes,
// the output allocated in the input's suggested memory format (NCHW or
// channels_last, as F.conv2d chooses), and the input made dense in that format,
// so a kernel needs only those two layouts.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstdint>

namespace shufflenet_ops::cpu {

// Output rows (or columns) of a 3x3 window with padding 1 over `in` rows.
inline int64_t window3x3_output_size(int64_t in, int64_t stride) {
  return in == 0 ? 0 : (in - 1) / stride + 1;
}

struct Window3x3Shape {
  int64_t batch, channels, in_h, in_w, out_h, out_w, stride;
};

struct Window3x3Problem {
  Window3x3Shape shape;
  at::MemoryFormat format;
  at::Tensor x;  // dense in `format`
  at::Tensor y;  // uninitialized
};

// `x_in` must have passed the op's validation (4-D, stride 1 or 2).
inline Window3x3Problem window3x3_problem(const at::Tensor& x_in, int64_t stride) {
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const Window3x3Shape shape{N, C, H, W, window3x3_output_size(H, stride), window3x3_output_size(W, stride),
                             stride};
  const at::MemoryFormat format = x_in.suggest_memory_format();
  return {shape, format, x_in.contiguous(format),
          at::empty({N, C, shape.out_h, shape.out_w}, x_in.options().memory_format(format))};
}

}  // namespace shufflenet_ops::cpu
