"""Op benchmark of stem_conv3x3_maxpool: so.stem_conv3x3_maxpool against the stock
stem F.max_pool2d(F.relu(F.conv2d(x, w, b, 2, 1)), 3, 2, 1) and against the same
convolution followed by so.max_pool3x3 (what fusing the pooling into the
convolution saves), at ShuffleNet v1's stem (3 -> 24 channels, 224x224), NCHW and
channels_last, under torch.inference_mode(), timed in interleaved rounds; each
speedup is the median of the per-round ratios.

    python benchmarks/bench_stem_conv3x3_maxpool.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402

# (input channels, output channels, input size) of ShuffleNet v1's stem.
STEM_SHAPES = [(3, 24, 224)]


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches, min_run_time = common.batches_and_run_time(args)
    results, rows = [], []
    for batch in batches:
        for c_in, c_out, size in STEM_SHAPES:
            for fmt_name, fmt in common.LAYOUTS:
                x = torch.randn(batch, c_in, size, size, device=device, dtype=dtype).to(memory_format=fmt)
                w = torch.randn(c_out, c_in, 3, 3, device=device, dtype=dtype) / 5
                b = torch.randn(c_out, device=device, dtype=dtype)
                with torch.inference_mode():
                    rounds = common.interleaved_rounds({
                        "torch": lambda: F.max_pool2d(F.relu(F.conv2d(x, w, b, 2, 1)), 3, 2, 1),
                        "conv_then_pool3x3": lambda: so.max_pool3x3(F.relu(F.conv2d(x, w, b, 2, 1)), 2),
                        "ours": lambda: so.stem_conv3x3_maxpool(x, w, b),
                    }, device, min_run_time, args.rounds)
                times = common.round_medians(rounds)
                speedup = common.paired_ratio(rounds["torch"], rounds["ours"])
                fusion_speedup = common.paired_ratio(rounds["conv_then_pool3x3"], rounds["ours"])
                results.append({"shape": [batch, c_in, size, size], "out_channels": c_out, "format": fmt_name,
                                "times_s": times, "speedup_vs_torch": speedup,
                                "speedup_vs_conv_then_pool3x3": fusion_speedup})
                rows.append([f"N{batch} {c_in}->{c_out} {size}x{size}", fmt_name,
                             *(f"{times[k] * 1e6:.1f}" for k in ("torch", "conv_then_pool3x3", "ours")),
                             f"{speedup:.2f}x", f"{fusion_speedup:.2f}x"])
    speedups = {fmt_name: [r["speedup_vs_torch"] for r in results if r["format"] == fmt_name]
                for fmt_name, _ in common.LAYOUTS}
    common.report_speedups(
        args, device, f"stem_conv3x3_maxpool (conv 3x3 s2 + ReLU + max pool 3x3 s2), {args.dtype}, inference mode",
        ["shape", "layout", "torch us", "conv + pool3x3 us", "ours us", "speedup", "vs conv + pool3x3"],
        rows, results, speedups)


if __name__ == "__main__":
    main()
