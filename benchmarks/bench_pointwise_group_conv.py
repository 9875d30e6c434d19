"""Op benchmark of pointwise_group_conv with the output shuffle, at ShuffleNet
v1 1x layer shapes: the fused op against F.conv2d(groups) + torch.channel_shuffle
(the reference) and against the bare batched matmul of the same GEMMs (what the
convolution would cost if the shuffle were free).

    python benchmarks/bench_pointwise_group_conv.py [--device cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402


def make_case(shape: common.LayerShape, device, dtype, channels_last: bool):
    g = shape.groups
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape.c_out, shape.c_in // g, 1, 1, device=device, dtype=dtype) * 0.1
    k, m, hw = shape.c_in // g, shape.c_out // g, shape.size * shape.size
    x_groups = x.contiguous().view(shape.batch, g, k, hw)
    w_groups = w.view(g, m, k)
    forward = {
        "reference": lambda: torch.channel_shuffle(F.conv2d(x, w, groups=g), g),
        "native": lambda: so.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend="native"),
        "matmul": lambda: torch.matmul(w_groups, x_groups),
    }
    return x, w, forward


def backward_fns(x, w, shape):
    """Gradient of x and weight given the output gradient, for each implementation."""
    g = shape.groups
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y_ref = torch.channel_shuffle(F.conv2d(x, w, groups=g), g)
    y_nat = so.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend="native")
    grad = torch.randn_like(y_ref)
    return {
        "reference": lambda: torch.autograd.grad(y_ref, (x, w), grad, retain_graph=True),
        "native": lambda: torch.autograd.grad(y_nat, (x, w), grad, retain_graph=True),
    }


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs")
    parser.add_argument("--no-backward", action="store_true", help="skip the backward measurements")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = (1,) if args.quick else (1, 8)
    min_run_time = args.min_run_time / 2 if args.quick else args.min_run_time

    results, rows = [], []
    for shape in common.shufflenet_layer_shapes(batches):
        x, w, forward = make_case(shape, device, dtype, args.channels_last)
        times = {name: common.median_seconds(fn, device, min_run_time) for name, fn in forward.items()}
        if not args.no_backward:
            for name, fn in backward_fns(x, w, shape).items():
                times[f"{name}_backward"] = common.median_seconds(fn, device, min_run_time)
        ratios = {
            "speedup_vs_reference": times["reference"] / times["native"],
            "time_vs_matmul": times["native"] / times["matmul"],
            "reference_vs_matmul": times["reference"] / times["matmul"],
        }
        if not args.no_backward:
            ratios["backward_speedup_vs_reference"] = times["reference_backward"] / times["native_backward"]
        results.append({"shape": shape, "times_s": times, **ratios})
        rows.append(
            [shape.name, f"{times['reference'] * 1e6:.0f}", f"{times['native'] * 1e6:.0f}", f"{times['matmul'] * 1e6:.0f}",
             f"{ratios['speedup_vs_reference']:.2f}x", f"{ratios['time_vs_matmul']:.2f}",
             f"{ratios['reference_vs_matmul']:.2f}"]
            + ([f"{ratios['backward_speedup_vs_reference']:.2f}x"] if not args.no_backward else [])
        )
    header = ["shape", "ref us", "fused us", "matmul us", "fused speedup", "fused/matmul", "ref/matmul"]
    if not args.no_backward:
        header.append("bwd speedup")
    print(f"pointwise_group_conv + output shuffle, {args.dtype}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {common.environment(device)}")
    common.print_table(header, rows)
    summary = {
        key: common.geometric_mean([r[key] for r in results])
        for key in ("speedup_vs_reference", "time_vs_matmul", "reference_vs_matmul")
    }
    summary["worst_speedup_vs_reference"] = min(r["speedup_vs_reference"] for r in results)
    summary["worst_time_vs_matmul"] = max(r["time_vs_matmul"] for r in results)
    if not args.no_backward:
        summary["backward_speedup_vs_reference"] = common.geometric_mean(
            [r["backward_speedup_vs_reference"] for r in results])
    print("geometric means / extremes:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "channels_last": args.channels_last, "results": results, "summary": summary})


if __name__ == "__main__":
    main()
