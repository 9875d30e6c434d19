// Channel-shuffle index arithmetic shared by every compiled backend.
// Torch-free and usable from host and device code, so the CUDA kernels and the
// CPU kernels agree on one definition of the permutation.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SHUFFLENET_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SHUFFLENET_HOST_DEVICE inline
#endif

namespace shufflenet_ops {

// channel_shuffle(x, groups) views the C channels as (groups, C / groups),
// transposes and flattens, so output channel i * groups + j reads input
// channel j * (C / groups) + i.
SHUFFLENET_HOST_DEVICE int64_t shuffle_source_channel(int64_t out_channel, int64_t groups,
                                                      int64_t channels) {
  const int64_t per_group = channels / groups;
  return (out_channel % groups) * per_group + out_channel / groups;
}

// The inverse map: where input channel `in_channel` lands after the shuffle.
SHUFFLENET_HOST_DEVICE int64_t shuffle_destination_channel(int64_t in_channel, int64_t groups,
                                                           int64_t channels) {
  const int64_t per_group = channels / groups;
  return (in_channel % per_group) * groups + in_channel / per_group;
}

// Both maps as lookup tables over every channel, filled in the order of the
// shuffle's (C / groups, groups) view: no division per channel, for host code
// that builds a table on every call. One group is the identity, filled as
// such: a loop of one-iteration inner loops costs a microsecond at 960 channels.
inline void fill_identity_table(int64_t channels, int64_t* table) {
  for (int64_t c = 0; c < channels; ++c) table[c] = c;
}

inline void fill_shuffle_source_table(int64_t groups, int64_t channels, int64_t* table) {
  if (groups == 1) return fill_identity_table(channels, table);
  const int64_t per_group = channels / groups;
  for (int64_t i = 0; i < per_group; ++i)
    for (int64_t j = 0; j < groups; ++j) table[i * groups + j] = j * per_group + i;
}

inline void fill_shuffle_destination_table(int64_t groups, int64_t channels, int64_t* table) {
  if (groups == 1) return fill_identity_table(channels, table);
  const int64_t per_group = channels / groups;
  for (int64_t i = 0; i < per_group; ++i)
    for (int64_t j = 0; j < groups; ++j) table[j * per_group + i] = i * groups + j;
}

}  // namespace shufflenet_ops
