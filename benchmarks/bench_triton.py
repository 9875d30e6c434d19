"""Op benchmark of the Triton backend at ShuffleNet v1 layer shapes: forward
pointwise_group_conv with the output shuffle against the device's measured copy
bandwidth (bytes = read x once + write y once) and against cuDNN
F.conv2d(groups) + torch.channel_shuffle; backward (grad x and weight) against
the reference's autograd. Both memory formats.

    python benchmarks/bench_triton.py --device cuda --dtype bfloat16 [--quick] [--json out.json]

--quick measures only the stage-2 shapes of g=3 (240 <-> 60 channels at 28x28).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import shufflenet_ops as so  # noqa: E402

COPY_BYTES = 512 * 2**20


def copy_bandwidth(device, min_run_time: float) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    src = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * COPY_BYTES / common.median_seconds(lambda: dst.copy_(src), device, min_run_time)


def shapes(args) -> list[common.LayerShape]:
    if args.quick:
        return [common.LayerShape(args.batch, 240, 60, 28, 3), common.LayerShape(args.batch, 60, 240, 28, 3)]
    return common.shufflenet_layer_shapes(batches=(args.batch,))


def measure(shape: common.LayerShape, device, dtype, channels_last: bool, min_run_time: float) -> dict:
    g = shape.groups
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape.c_out, shape.c_in // g, 1, 1, device=device, dtype=dtype) * 0.1

    def reference(x, w):
        return torch.channel_shuffle(F.conv2d(x, w, groups=g), g)

    def triton(x, w):
        return so.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend="triton")

    times = {
        "reference": common.median_seconds(lambda: reference(x, w), device, min_run_time),
        "triton": common.median_seconds(lambda: triton(x, w), device, min_run_time),
    }
    xg, wg = x.detach().requires_grad_(), w.detach().requires_grad_()
    for name, fn in (("reference", reference), ("triton", triton)):
        y = fn(xg, wg)
        grad = torch.randn_like(y)
        times[f"{name}_backward"] = common.median_seconds(
            lambda: torch.autograd.grad(y, (xg, wg), grad, retain_graph=True), device, min_run_time
        )
    element = x.element_size()
    forward_bytes = (x.numel() + w.numel() + shape.batch * shape.c_out * shape.size**2) * element
    return {"times_s": times, "forward_bytes": forward_bytes}


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="batch size N (default: 128)")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if "triton" not in so.available_backends(device):
        parser.error(f"the Triton backend does not run on {device} here (CUDA, or CPU under TRITON_INTERPRET=1)")
    bandwidth = copy_bandwidth(device, args.min_run_time)

    results, rows = [], []
    for channels_last in (False, True):
        for shape in shapes(args):
            m = measure(shape, device, dtype, channels_last, args.min_run_time)
            t = m["times_s"]
            result = {
                "shape": shape,
                "channels_last": channels_last,
                **m,
                "fraction_of_copy_bandwidth": m["forward_bytes"] / t["triton"] / bandwidth,
                "speedup_vs_reference": t["reference"] / t["triton"],
                "backward_speedup_vs_reference": t["reference_backward"] / t["triton_backward"],
            }
            results.append(result)
            rows.append([
                shape.name, "NHWC" if channels_last else "NCHW",
                f"{t['reference'] * 1e6:.0f}", f"{t['triton'] * 1e6:.0f}",
                f"{result['fraction_of_copy_bandwidth']:.0%}", f"{result['speedup_vs_reference']:.2f}x",
                f"{t['reference_backward'] * 1e6:.0f}", f"{t['triton_backward'] * 1e6:.0f}",
                f"{result['backward_speedup_vs_reference']:.2f}x",
            ])  # fmt: skip
    print(f"Triton pointwise_group_conv + output shuffle, {args.dtype}, copy bandwidth {bandwidth / 1e9:.0f} GB/s, "
          f"{common.environment(device)}")
    common.print_table(
        ["shape", "layout", "ref us", "triton us", "of copy bw", "speedup", "ref bwd us", "triton bwd us",
         "bwd speedup"],
        rows,
    )  # fmt: skip
    summary = {
        key: common.geometric_mean([r[key] for r in results])
        for key in ("fraction_of_copy_bandwidth", "speedup_vs_reference", "backward_speedup_vs_reference")
    }
    print("geometric means:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    common.write_json(args.json, {"environment": common.environment(device), "dtype": args.dtype,
                                  "copy_bandwidth_bytes_per_s": bandwidth, "results": results, "summary": summary})


if __name__ == "__main__":
    main()
