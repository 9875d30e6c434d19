"""Op benchmark of depthwise_conv3x3: so.depthwise_conv3x3 against F.conv2d(groups=C)
with the same bias and ReLU, at the depthwise layers of ShuffleNet v1 1x (g=3), NCHW and
channels_last, with autograd on (the inputs require grad, as in training) and under
torch.inference_mode() (kernel time without autograd bookkeeping).

    python benchmarks/bench_depthwise_conv3x3.py [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402

# (channels, input size, stride) of ShuffleNet v1 1x g=3's depthwise convs: the
# first unit of each stage downsamples, the others keep the size.
DEPTHWISE_SHAPES = [(60, 56, 2), (60, 28, 1), (120, 28, 2), (120, 14, 1), (240, 14, 2), (240, 7, 1)]
MODES = ("autograd", "inference")


def time_pair(x, weight, bias, stride, device, min_run_time, mode):
    fns = {
        "torch": lambda: F.relu(F.conv2d(x, weight, bias, stride, 1, groups=x.shape[1])),
        "ours": lambda: so.depthwise_conv3x3(x, weight, bias, stride, relu=True),
    }
    if mode == "inference":
        with torch.inference_mode():
            return {name: common.median_seconds(fn, device, min_run_time) for name, fn in fns.items()}
    return {name: common.median_seconds(fn, device, min_run_time) for name, fn in fns.items()}


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches, min_run_time = common.batches_and_run_time(args)
    results, rows = [], []
    for batch in batches:
        for channels, size, stride in DEPTHWISE_SHAPES:
            for fmt_name, fmt in common.LAYOUTS:
                x = torch.randn(batch, channels, size, size, device=device, dtype=dtype).to(memory_format=fmt)
                weight = torch.randn(channels, 1, 3, 3, device=device, dtype=dtype)
                bias = torch.randn(channels, device=device, dtype=dtype)
                for t in (x, weight, bias):
                    t.requires_grad_(True)
                row = [f"N{batch} C{channels} {size}x{size} s{stride}", fmt_name]
                entry = {"shape": [batch, channels, size, size], "stride": stride, "format": fmt_name}
                for mode in MODES:
                    times = time_pair(x, weight, bias, stride, device, min_run_time, mode)
                    speedup = times["torch"] / times["ours"]
                    entry[mode] = {"times_s": times, "speedup_vs_torch": speedup}
                    row += common.speedup_cells(times)
                results.append(entry)
                rows.append(row)
    header = ["shape", "layout"]
    for mode in MODES:
        header += [f"torch us ({mode})", f"ours us ({mode})", f"speedup ({mode})"]
    speedups = {mode: [r[mode]["speedup_vs_torch"] for r in results] for mode in MODES}
    common.report_speedups(args, device, f"depthwise_conv3x3 (+bias, ReLU), {args.dtype}", header, rows, results,
                           speedups)


if __name__ == "__main__":
    main()
