"""Op level: pointwise_group_conv with the output shuffle (the paper's
placement) per backend, against the reference (F.conv2d(groups) +
torch.channel_shuffle) and the bare grouped matmul of the same GEMMs, the
"shuffle costs nothing" floor."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import functional
from ..backends import available_backends
from .shapes import LayerShape
from .timing import median_seconds

FLOOR = "matmul"


def backends_to_time(device: torch.device) -> list[str]:
    """The compiled backends that run natively on ``device`` (not interpreted)."""
    names = [b for b in available_backends(device) if b != "reference"]
    if device.type == "cpu":
        names = [b for b in names if b != "triton"]  # on CPU only the Triton interpreter runs
    return ["reference"] + names + [FLOOR]


def make_inputs(shape: LayerShape, device, dtype, channels_last: bool, requires_grad: bool):
    x = torch.randn(shape.batch, shape.c_in, shape.size, shape.size, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(shape.c_out, shape.c_in // shape.groups, 1, 1, device=device, dtype=dtype) * 0.1
    return x.requires_grad_(requires_grad), w.requires_grad_(requires_grad)


def make_forward(backend: str, shape: LayerShape, x, w):
    g = shape.groups
    if backend == FLOOR:
        k, m, hw = shape.c_in // g, shape.c_out // g, shape.size * shape.size
        x_groups = x.detach().contiguous().view(shape.batch, g, k, hw).requires_grad_(x.requires_grad)
        w_groups = w.detach().view(g, m, k).requires_grad_(w.requires_grad)
        return (lambda: torch.matmul(w_groups, x_groups)), (x_groups, w_groups)
    if backend == "reference":
        return (lambda: torch.channel_shuffle(F.conv2d(x, w, groups=g), g)), (x, w)
    return (lambda: functional.pointwise_group_conv(x, w, None, g, output_shuffle=g, backend=backend)), (x, w)


def measure(shape: LayerShape, backend: str, *, device, dtype, channels_last: bool, training: bool,
            min_run_time: float) -> dict:
    """Median seconds of the forward (training=False) or forward + backward of
    x and weight (training=True), with the achieved GB/s and GFLOP/s."""
    x, w = make_inputs(shape, device, dtype, channels_last, training)
    forward, leaves = make_forward(backend, shape, x, w)
    if training:
        grad = torch.randn_like(forward())

        def step():
            torch.autograd.grad(forward(), leaves, grad)

        seconds = median_seconds(step, device, min_run_time)
    else:
        # Inference, as the model level times it: no autograd bookkeeping for any contender.
        with torch.inference_mode():
            seconds = median_seconds(forward, device, min_run_time)
    # Minimal traffic: forward reads x and w, writes y; backward also reads
    # grad_out and x again and writes grad_x and grad_w.
    passes, weight_passes, flop_factor = (3, 3, 6) if training else (1, 2, 2)
    element = x.element_size()
    traffic = (passes * shape.activation_elements() + weight_passes * shape.weight_elements()) * element
    return {
        "shape": shape.name,
        "batch": shape.batch,
        "c_in": shape.c_in,
        "c_out": shape.c_out,
        "size": shape.size,
        "groups": shape.groups,
        "backend": backend,
        "pass": "fwd+bwd" if training else "fwd",
        "seconds": seconds,
        "gb_per_s": traffic / seconds / 1e9,
        "gflop_per_s": flop_factor * shape.macs / seconds / 1e9,
    }


def add_speedups(rows: list[dict]) -> None:
    """speedup = reference time / this time, for rows of the same shape and pass."""
    reference = {(r["shape"], r["pass"]): r["seconds"] for r in rows if r["backend"] == "reference"}
    for r in rows:
        r["speedup_vs_reference"] = reference[(r["shape"], r["pass"])] / r["seconds"]
