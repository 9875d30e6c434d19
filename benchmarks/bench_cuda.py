"""CUDA benchmark of the native backend against its performance goals: at the
ShuffleNet v1 stage shapes (batch large enough to fill the GPU), the forward of
pointwise_group_conv with the output shuffle as a fraction of the device's
measured copy bandwidth and against cuDNN F.conv2d(groups) + torch.channel_shuffle,
the backward against the reference's autograd, and channel_shuffle as a fraction
of copy bandwidth. Also times the Triton backend where it is registered, the data
for choosing between the two per shape.

    python benchmarks/bench_cuda.py [--dtype bfloat16] [--batch 64] [--skip-triton] [--json out.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402


def copy_bandwidth(device, min_run_time) -> float:
    """Bytes read plus bytes written per second by a 1 GiB device-to-device clone."""
    x = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
    seconds = common.median_seconds(lambda: x.clone(), device, min_run_time)
    return 2 * x.numel() / seconds


def conv_case(shape, device, dtype, channels_last):
    g = shape.groups
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape.c_out, shape.c_in // g, 1, 1, device=device, dtype=dtype) / (shape.c_in // g) ** 0.5
    return x, w


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(device="cuda", dtype="bfloat16", min_run_time=0.05)
    parser.add_argument("--batch", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--skip-triton", action="store_true",
                        help="leave the Triton backend out (its autotuning compiles many kernels per shape; "
                             "bench_triton.py measures it)")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    element = torch.empty((), dtype=dtype).element_size()
    triton = "triton" in so.available_backends(device) and not args.skip_triton
    bandwidth = copy_bandwidth(device, args.min_run_time)
    print(f"copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s")

    results, rows = [], []
    for channels_last in (False, True):
        for shape in common.shufflenet_layer_shapes(batches=(args.batch,)):
            x, w = conv_case(shape, device, dtype, channels_last)
            g = shape.groups
            forward = {
                "native": lambda: so.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend="native"),
                "cudnn_shuffle": lambda: torch.channel_shuffle(F.conv2d(x, w, groups=g), g),
            }
            if triton:
                forward["triton"] = lambda: so.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend="triton")
            times = {name: common.median_seconds(fn, device, args.min_run_time) for name, fn in forward.items()}

            xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
            y_native = so.pointwise_group_conv(xg, wg, None, g, output_shuffle=g, backend="native")
            y_ref = torch.channel_shuffle(F.conv2d(xg, wg, groups=g), g)
            grad = torch.randn_like(y_ref)
            backward = {
                "native_backward": lambda: torch.autograd.grad(y_native, (xg, wg), grad, retain_graph=True),
                "reference_backward": lambda: torch.autograd.grad(y_ref, (xg, wg), grad, retain_graph=True),
            }
            times.update({name: common.median_seconds(fn, device, args.min_run_time) for name, fn in backward.items()})

            moved = (x.numel() + w.numel() + y_ref.numel()) * element
            record = {
                "shape": shape, "channels_last": channels_last, "times_s": times, "bytes": moved,
                "forward_fraction_of_copy_bandwidth": moved / times["native"] / bandwidth,
                "forward_speedup_vs_cudnn_shuffle": times["cudnn_shuffle"] / times["native"],
                "backward_speedup_vs_reference": times["reference_backward"] / times["native_backward"],
            }
            if triton:
                record["native_vs_triton"] = times["triton"] / times["native"]
            results.append(record)
            rows.append([shape.name, "NHWC" if channels_last else "NCHW", f"{times['native'] * 1e6:.1f}",
                         f"{times['cudnn_shuffle'] * 1e6:.1f}", f"{times.get('triton', float('nan')) * 1e6:.1f}",
                         f"{record['forward_fraction_of_copy_bandwidth']:.0%}",
                         f"{record['forward_speedup_vs_cudnn_shuffle']:.2f}x",
                         f"{record['backward_speedup_vs_reference']:.2f}x"])
    print(f"pointwise_group_conv + output shuffle, {args.dtype}, {common.environment(device)}")
    common.print_table(["shape", "layout", "native us", "cudnn+shuffle us", "triton us", "of copy bw",
                        "fwd speedup", "bwd speedup"], rows)

    shuffle_results, shuffle_rows = [], []
    for channels_last in (False, True):
        for shape in common.shufflenet_layer_shapes(batches=(args.batch,)):
            if shape.c_out > shape.c_in:
                continue  # the shuffle runs on the bottleneck activations
            x = torch.randn(shape.batch, shape.c_out, shape.size, shape.size, device=device, dtype=dtype)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            seconds = common.median_seconds(lambda: so.channel_shuffle(x, shape.groups, backend="native"), device,
                                            args.min_run_time)
            fraction = 2 * x.numel() * element / seconds / bandwidth
            shuffle_results.append({"shape": list(x.shape), "groups": shape.groups, "channels_last": channels_last,
                                    "seconds": seconds, "fraction_of_copy_bandwidth": fraction})
            shuffle_rows.append([f"{list(x.shape)} g{shape.groups}", "NHWC" if channels_last else "NCHW",
                                 f"{seconds * 1e6:.1f}", f"{fraction:.0%}"])
    print(f"channel_shuffle, {args.dtype}")
    common.print_table(["shape", "layout", "native us", "of copy bw"], shuffle_rows)

    summary = {
        "copy_bandwidth_bytes_per_s": bandwidth,
        "forward_fraction_of_copy_bandwidth_min": min(r["forward_fraction_of_copy_bandwidth"] for r in results),
        "forward_fraction_of_copy_bandwidth_geomean": common.geometric_mean(
            [r["forward_fraction_of_copy_bandwidth"] for r in results]),
        "forward_speedup_vs_cudnn_shuffle_min": min(r["forward_speedup_vs_cudnn_shuffle"] for r in results),
        "forward_speedup_vs_cudnn_shuffle_geomean": common.geometric_mean(
            [r["forward_speedup_vs_cudnn_shuffle"] for r in results]),
        "backward_speedup_vs_reference_min": min(r["backward_speedup_vs_reference"] for r in results),
        "backward_speedup_vs_reference_geomean": common.geometric_mean(
            [r["backward_speedup_vs_reference"] for r in results]),
        "channel_shuffle_fraction_of_copy_bandwidth_min": min(r["fraction_of_copy_bandwidth"] for r in shuffle_results),
    }
    if triton:
        summary["native_faster_than_triton_cases"] = sum(r["native_vs_triton"] > 1 for r in results)
        summary["cases"] = len(results)
    print("summary:", ", ".join(f"{k} {v:.3g}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "batch": args.batch, "conv": results, "channel_shuffle": shuffle_results,
                                  "summary": summary})


if __name__ == "__main__":
    main()
