// Task grains for at::parallel_for. It runs a range of at most `grain` tasks
// inline and gives each thread at least `grain` tasks, so a grain that holds
// `min_work` units of work (bytes, outputs, multiply-adds) keeps small problems
// off the thread team: waking it and joining it cost microseconds, more than
// such work takes on one core.
#pragma once

#include <algorithm>
#include <cstdint>

namespace shufflenet_ops::cpu {

inline int64_t grain_for(int64_t work_per_task, int64_t min_work) {
  return std::max<int64_t>(1, min_work / std::max<int64_t>(1, work_per_task));
}

}  // namespace shufflenet_ops::cpu
