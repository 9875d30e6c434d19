"""The shared shuffle index arithmetic (csrc/kernels/shuffle_index.h), compiled
for the host with the C++ compiler, against the reference permutation."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import shufflenet_ops as so

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "csrc" / "kernels" / "shuffle_index.h"
CXX = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")

# Reads "channels groups" pairs; prints each pair's source and destination maps, channel by
# channel, then as the filled lookup tables.
PROGRAM = r"""
#include "shuffle_index.h"
#include <cstdio>
#include <vector>
int main() {
  long long channels, groups;
  while (std::scanf("%lld %lld", &channels, &groups) == 2) {
    for (long long c = 0; c < channels; ++c)
      std::printf("%lld ", (long long)shufflenet_ops::shuffle_source_channel(c, groups, channels));
    std::printf("\n");
    for (long long c = 0; c < channels; ++c)
      std::printf("%lld ", (long long)shufflenet_ops::shuffle_destination_channel(c, groups, channels));
    std::printf("\n");
    std::vector<int64_t> source(channels), destination(channels);
    shufflenet_ops::fill_shuffle_source_table(groups, channels, source.data());
    shufflenet_ops::fill_shuffle_destination_table(groups, channels, destination.data());
    for (int64_t c : source) std::printf("%lld ", (long long)c);
    std::printf("\n");
    for (int64_t c : destination) std::printf("%lld ", (long long)c);
    std::printf("\n");
  }
}
"""

CASES = [(1, 1), (2, 2), (6, 1), (6, 2), (6, 3), (6, 6), (12, 4), (240, 3), (384, 8), (1536, 8), (97, 97),
         (1000, 10), (4096, 64)]


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler found")
    build = tmp_path_factory.mktemp("shuffle_index")
    (build / "main.cpp").write_text(PROGRAM)
    binary = build / "shuffle_index"
    subprocess.run([CXX, "-std=c++17", "-O1", f"-I{HEADER.parent}", str(build / "main.cpp"), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    stdin = "".join(f"{c} {g}\n" for c, g in CASES)
    lines = subprocess.run([str(binary)], input=stdin, check=True, capture_output=True, text=True).stdout.splitlines()
    assert len(lines) == 4 * len(CASES)
    parsed = [[int(v) for v in line.split()] for line in lines]
    return {case: tuple(parsed[4 * i:4 * i + 4]) for i, case in enumerate(CASES)}


@pytest.mark.parametrize("channels,groups", CASES)
def test_source_channel_is_the_reference_permutation(tables, channels, groups):
    source, _, _, _ = tables[(channels, groups)]
    # Channel c of the reference shuffle of arange holds the input channel it read.
    expected = so.reference.channel_shuffle(torch.arange(channels).view(1, channels, 1), groups).flatten()
    assert source == expected.tolist()
    assert torch.equal(torch.tensor(source), torch.channel_shuffle(torch.arange(channels).view(1, channels, 1),
                                                                   groups).flatten())


@pytest.mark.parametrize("channels,groups", CASES)
def test_destination_channel_inverts_the_shuffle(tables, channels, groups):
    source, destination, _, _ = tables[(channels, groups)]
    shuffled = so.reference.channel_shuffle(torch.arange(channels).view(1, channels, 1), groups).flatten()
    # Input channel c lands at destination[c]: the shuffled tensor holds c there.
    assert [shuffled[d].item() for d in destination] == list(range(channels))
    assert sorted(destination) == list(range(channels))
    assert [source[d] for d in destination] == list(range(channels))


@pytest.mark.parametrize("channels,groups", CASES)
def test_filled_tables_equal_the_per_channel_maps(tables, channels, groups):
    source, destination, source_table, destination_table = tables[(channels, groups)]
    assert source_table == source
    assert destination_table == destination
