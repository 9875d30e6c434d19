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
    batches = (1,) if args.quick else (1, 8)
    min_run_time = args.min_run_time / 2 if args.quick else args.min_run_time
    results, rows = [], []
    for batch in batches:
        for kind, channels, size, stride in POOL_SHAPES:
            stock, ours = CONTENDERS[kind]
            for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
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
                             f"{times['torch'] * 1e6:.1f}", f"{times['ours'] * 1e6:.1f}", f"{speedup:.2f}x"])
    print(f"pool3x3 (kernel 3, padding 1), {args.dtype}, inference mode, {common.environment(device)}")
    common.print_table(["shape", "layout", "torch us", "ours us", "speedup"], rows)
    summary = {}
    for fmt_name in ("NCHW", "NHWC"):
        speedups = [r["speedup_vs_torch"] for r in results if r["format"] == fmt_name]
        summary[f"{fmt_name}_speedup_vs_torch"] = common.geometric_mean(speedups)
        summary[f"{fmt_name}_worst_speedup_vs_torch"] = min(speedups)
    print("geometric mean / worst:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "results": results, "summary": summary})


if __name__ == "__main__":
    main()
