"""Op benchmark of pool3x3: so.max_pool3x3 / so.avg_pool3x3 against F.max_pool2d /
F.avg_pool2d (kernel 3, padding 1) at the pooling layers of ShuffleNet v1 1x (g=3),
NCHW and channels_last, under torch.inference_mode(), both timed in interleaved rounds.

    python benchmarks/bench_pool3x3.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402

# (kind, channels, input size, stride) of ShuffleNet v1 1x g=3's pooling: the stem's
# max pool, then the average-pooled shortcut of each stage's first (stride-2) unit.
POOL_SHAPES = [("max", 24, 112, 2), ("avg", 24, 56, 2), ("avg", 240, 28, 2), ("avg", 480, 14, 2)]
CONTENDERS = {"max": (F.max_pool2d, so.max_pool3x3), "avg": (F.avg_pool2d, so.avg_pool3x3)}


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches, min_run_time = common.batches_and_run_time(args)
    results, rows = [], []
    for batch in batches:
        for kind, channels, size, stride in POOL_SHAPES:
            stock, ours = CONTENDERS[kind]
            for fmt_name, fmt in common.LAYOUTS:
                x = torch.randn(batch, channels, size, size, device=device, dtype=dtype).to(memory_format=fmt)
                with torch.inference_mode():
                    times = common.interleaved_medians({
                        "torch": lambda: stock(x, 3, stride, 1),
                        "ours": lambda: ours(x, stride),
                    }, device, min_run_time)
                speedup = times["torch"] / times["ours"]
                results.append({"kind": kind, "shape": [batch, channels, size, size], "stride": stride,
                                "format": fmt_name, "times_s": times, "speedup_vs_torch": speedup})
                rows.append([f"{kind} N{batch} C{channels} {size}x{size} s{stride}", fmt_name,
                             *common.speedup_cells(times)])
    speedups = {fmt_name: [r["speedup_vs_torch"] for r in results if r["format"] == fmt_name]
                for fmt_name, _ in common.LAYOUTS}
    common.report_speedups(args, device, f"pool3x3 (kernel 3, padding 1), {args.dtype}, inference mode",
                           ["shape", "layout", "torch us", "ours us", "speedup"], rows, results, speedups)


if __name__ == "__main__":
    main()
