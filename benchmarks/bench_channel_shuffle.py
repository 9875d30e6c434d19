"""Op benchmark of channel_shuffle: so.channel_shuffle against torch.channel_shuffle
(and a plain copy of the same tensor, the bandwidth bound) at ShuffleNet activation
shapes, NCHW and channels_last.

    python benchmarks/bench_channel_shuffle.py [--device cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = (1,) if args.quick else (1, 8)
    min_run_time = args.min_run_time / 2 if args.quick else args.min_run_time
    results, rows = [], []
    # The shuffle runs on the bottleneck activations (C_out of the first 1x1 conv).
    shapes = [s for s in common.shufflenet_layer_shapes(batches) if s.c_out < s.c_in]
    for shape in shapes:
        for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            x = torch.randn(shape.batch, shape.c_out, shape.size, shape.size, device=device, dtype=dtype)
            x = x.to(memory_format=fmt)
            fns = {
                "torch": lambda: torch.channel_shuffle(x, shape.groups),
                "native": lambda: so.channel_shuffle(x, shape.groups, backend="native"),
                "copy": lambda: x.clone(),
            }
            times = {name: common.median_seconds(fn, device, min_run_time) for name, fn in fns.items()}
            speedup = times["torch"] / times["native"]
            results.append({"shape": [shape.batch, shape.c_out, shape.size, shape.size], "groups": shape.groups,
                            "format": fmt_name, "times_s": times, "speedup_vs_torch": speedup,
                            "time_vs_copy": times["native"] / times["copy"]})
            rows.append([f"N{shape.batch} C{shape.c_out} {shape.size}x{shape.size} g{shape.groups}", fmt_name,
                         f"{times['torch'] * 1e6:.1f}", f"{times['native'] * 1e6:.1f}", f"{times['copy'] * 1e6:.1f}",
                         f"{speedup:.2f}x", f"{times['native'] / times['copy']:.2f}"])
    print(f"channel_shuffle, {args.dtype}, {common.environment(device)}")
    common.print_table(["shape", "layout", "torch us", "ours us", "copy us", "speedup", "ours/copy"], rows)
    summary = {"speedup_vs_torch": common.geometric_mean([r["speedup_vs_torch"] for r in results]),
               "worst_speedup_vs_torch": min(r["speedup_vs_torch"] for r in results)}
    print("geometric mean / worst:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "results": results, "summary": summary})


if __name__ == "__main__":
    main()
