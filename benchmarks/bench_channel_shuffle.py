"""Op benchmark of channel_shuffle: ours against torch.channel_shuffle at
ShuffleNet activation shapes, NCHW and channels_last, with a plain copy of the
same tensor as the bandwidth bound.

Two comparisons, each measured in the same run:
  kernel  the registered ops called the same way, torch.ops.shufflenet_ops
          against torch.ops.aten (dispatch, allocation, autograd and the copy);
  call    the public functions, so.channel_shuffle against torch.channel_shuffle
          (adds our Python argument checks and backend choice, about 1-2 us).

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
    batches, min_run_time = common.batches_and_run_time(args)
    ours_op, torch_op = torch.ops.shufflenet_ops.channel_shuffle.default, torch.ops.aten.channel_shuffle.default
    results, rows = [], []
    # The shuffle runs on the bottleneck activations (C_out of the first 1x1 conv).
    shapes = [s for s in common.shufflenet_layer_shapes(batches) if s.c_out < s.c_in]
    for shape in shapes:
        for fmt_name, fmt in (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last)):
            x = torch.randn(shape.batch, shape.c_out, shape.size, shape.size, device=device, dtype=dtype)
            x = x.to(memory_format=fmt)
            g = shape.groups
            times = common.interleaved_medians({
                "torch_op": lambda: torch_op(x, g),
                "ours_op": lambda: ours_op(x, g),
                "torch_call": lambda: torch.channel_shuffle(x, g),
                "ours_call": lambda: so.channel_shuffle(x, g, backend="native"),
                "copy": lambda: x.clone(),
            }, device, min_run_time, args.rounds)
            kernel = times["torch_op"] / times["ours_op"]
            call = times["torch_call"] / times["ours_call"]
            results.append({"shape": [shape.batch, shape.c_out, shape.size, shape.size], "groups": g,
                            "format": fmt_name, "times_s": times, "kernel_speedup_vs_torch": kernel,
                            "call_speedup_vs_torch": call, "kernel_time_vs_copy": times["ours_op"] / times["copy"]})
            rows.append([f"N{shape.batch} C{shape.c_out} {shape.size}x{shape.size} g{g}", fmt_name,
                         *(f"{times[k] * 1e6:.1f}" for k in ("torch_op", "ours_op", "torch_call", "ours_call", "copy")),
                         f"{kernel:.2f}x", f"{call:.2f}x", f"{times['ours_op'] / times['copy']:.2f}"])
    print(f"channel_shuffle, {args.dtype}, {common.environment(device)}")
    common.print_table(["shape", "layout", "torch op us", "our op us", "torch() us", "so() us", "copy us",
                        "kernel speedup", "call speedup", "our op/copy"], rows)
    summary = {}
    for key in ("kernel_speedup_vs_torch", "call_speedup_vs_torch"):
        summary[key] = common.geometric_mean(r[key] for r in results)
        summary["worst_" + key] = min(r[key] for r in results)
    print("geometric mean / worst:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "results": results, "summary": summary})


if __name__ == "__main__":
    main()
