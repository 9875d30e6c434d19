// The channel shuffle written with stock tensor ops, for the code that runs
// ATen rather than a kernel: the derivatives (csrc/autograd.cpp) and the CPU
// kernels' stock computation (csrc/cpu/stock_computation.h). Sizes stay
// symbolic under torch.compile.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <vector>

namespace shufflenet_ops {

// reference.channel_shuffle: view the channels (dim 1) as (groups, C / groups), transpose, flatten.
inline at::Tensor shuffle_channels(const at::Tensor& x, int64_t groups) {
  if (groups == 1) return x;
  const c10::SymIntArrayRef sizes = x.sym_sizes();
  std::vector<c10::SymInt> split(sizes.begin(), sizes.end());
  split[1] = sizes[1] / groups;
  split.insert(split.begin() + 1, c10::SymInt(groups));
  return x.reshape_symint(split).transpose(1, 2).reshape_symint(sizes);
}

// The group count of the shuffle that undoes a shuffle by `groups` of x's
// channels: a shuffle by g of C channels is undone by the one by C / g (under
// torch.compile only the channel count is guarded).
inline int64_t inverse_shuffle_groups(const at::Tensor& x, int64_t groups) {
  return x.sym_size(1).guard_int(__FILE__, __LINE__) / groups;
}

inline at::Tensor unshuffle_channels(const at::Tensor& x, int64_t groups) {
  return shuffle_channels(x, inverse_shuffle_groups(x, groups));
}

}  // namespace shufflenet_ops
