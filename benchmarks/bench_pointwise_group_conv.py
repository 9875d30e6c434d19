"""Op benchmark of pointwise_group_conv with the output shuffle, at ShuffleNet
v1 1x layer shapes: the fused op against F.conv2d(groups) + torch.channel_shuffle
(the reference) and against the bare batched matmul of the same GEMMs (what the
convolution would cost if the shuffle were free). The forward runs under
torch.inference_mode (no autograd bookkeeping for any contender); the backward
is timed alone, from a recorded forward. The contenders of each shape are timed
in interleaved rounds; each ratio is the median of its per-round ratios.

    python benchmarks/bench_pointwise_group_conv.py [--device cuda] [--quick] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from shufflenet_ops.bench import op_level  # noqa: E402


FORWARD = ("reference", "native", op_level.FLOOR)
BACKWARD = ("reference", "native")


def forward_fns(shape: common.LayerShape, device, dtype, channels_last: bool) -> dict:
    x, w = op_level.make_inputs(shape, device, dtype, channels_last, requires_grad=False)
    return {name: op_level.make_forward(name, shape, x, w)[0] for name in FORWARD}


def backward_fns(shape: common.LayerShape, device, dtype, channels_last: bool) -> dict:
    """Gradients of x and weight given the output gradient (the backward pass alone)."""
    x, w = op_level.make_inputs(shape, device, dtype, channels_last, requires_grad=True)
    fns = {}
    for name in BACKWARD:
        forward, leaves = op_level.make_forward(name, shape, x, w)
        y = forward()
        grad = torch.randn_like(y)
        fns[f"{name}_backward"] = lambda y=y, leaves=leaves, grad=grad: torch.autograd.grad(
            y, leaves, grad, retain_graph=True)
    return fns


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--channels-last", action="store_true", help="channels_last inputs")
    parser.add_argument("--no-backward", action="store_true", help="skip the backward measurements")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches, min_run_time = common.batches_and_run_time(args)

    results, rows = [], []
    for shape in common.shufflenet_layer_shapes(batches):
        with torch.inference_mode():
            rounds = common.interleaved_rounds(forward_fns(shape, device, dtype, args.channels_last), device,
                                               min_run_time, args.rounds)
        if not args.no_backward:
            rounds.update(common.interleaved_rounds(backward_fns(shape, device, dtype, args.channels_last), device,
                                                    min_run_time, args.rounds))
        times = common.round_medians(rounds)
        ratios = {
            "speedup_vs_reference": common.paired_ratio(rounds["reference"], rounds["native"]),
            "time_vs_matmul": common.paired_ratio(rounds["native"], rounds[op_level.FLOOR]),
            "reference_vs_matmul": common.paired_ratio(rounds["reference"], rounds[op_level.FLOOR]),
        }
        if not args.no_backward:
            ratios["backward_speedup_vs_reference"] = common.paired_ratio(rounds["reference_backward"],
                                                                          rounds["native_backward"])
            # grad_input and grad_weight: two GEMMs of the forward's size.
            for name in BACKWARD:
                ratios[f"{name}_backward_gflops"] = 4 * shape.macs / times[f"{name}_backward"] / 1e9
        results.append({"shape": shape, "times_s": times, "rounds_s": rounds, **ratios})
        rows.append(
            [shape.name, f"{times['reference'] * 1e6:.0f}", f"{times['native'] * 1e6:.0f}", f"{times[op_level.FLOOR] * 1e6:.0f}",
             f"{ratios['speedup_vs_reference']:.2f}x", f"{ratios['time_vs_matmul']:.2f}",
             f"{ratios['reference_vs_matmul']:.2f}"]
            + ([f"{ratios['backward_speedup_vs_reference']:.2f}x", f"{ratios['reference_backward_gflops']:.0f}",
                f"{ratios['native_backward_gflops']:.0f}"] if not args.no_backward else [])
        )
    header = ["shape", "ref us", "fused us", "matmul us", "fused speedup", "fused/matmul", "ref/matmul"]
    if not args.no_backward:
        header += ["bwd speedup", "ref bwd GFLOP/s", "fused bwd GFLOP/s"]
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
        summary["worst_backward_speedup_vs_reference"] = min(r["backward_speedup_vs_reference"] for r in results)
    print("geometric means / extremes:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "channels_last": args.channels_last, "results": results, "summary": summary})


if __name__ == "__main__":
    main()
