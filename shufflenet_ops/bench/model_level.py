"""Model level: ShuffleNet v1 as stock PyTorch code runs it (eager, unfused),
after ``so.fuse``, and under ``torch.compile``, and for inference the anchor
runtimes on the exported stock model: median latency per batch size for
inference and for a training step (forward, cross-entropy, backward, SGD)."""

from __future__ import annotations

import functools
import statistics

import torch
import torch.nn.functional as F

from ..fuse import fuse
from ..models import shufflenet_v1_unfused
from . import anchors
from .timing import median_seconds, paired_ratio

VARIANTS = ("unfused", "fused", "compiled")


def build(variant: str, model: torch.nn.Module, example: torch.Tensor):
    """The module to time for ``variant``; ``model`` is the unfused stock model."""
    if variant == "unfused":
        return model
    if variant == "fused":
        return fuse(model, example)
    return torch.compile(model)


def training_step(module, parameters, x):
    """One training step: forward, cross-entropy, backward and SGD update."""
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)
    optimizer = torch.optim.SGD(parameters, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), target).backward()
        optimizer.step()

    return step


# Each variant is timed this many times, in turns, and the median kept: the
# variants see the same drift of a shared machine.
ROUNDS = 3


def measure(variants, *, training: bool, batch: int, groups: int, width_mult: float, resolution: int,
            device, dtype, channels_last: bool, min_run_time: float, anchor_runtimes=()) -> list[dict]:
    """One row per variant and per anchor runtime (inference only), all timed
    in the same interleaved rounds. ``time_vs_fused`` is the median over the
    rounds of the row's time over the fused model's time in that round."""
    torch.manual_seed(0)
    model = shufflenet_v1_unfused(groups=groups, width_mult=width_mult).to(device=device, dtype=dtype)
    model.train(training)
    x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    if training:
        calls = {variant: training_step(build(variant, model, x), list(model.parameters()), x) for variant in variants}
    else:
        calls = {variant: functools.partial(build(variant, model, x), x) for variant in variants}
        calls.update({runtime: anchors.runner(runtime, model, x) for runtime in anchor_runtimes})
    rounds = {variant: [] for variant in calls}
    # Inference without autograd bookkeeping, as a deployed model runs.
    with torch.inference_mode(not training):
        for _ in range(ROUNDS):
            for variant, call in calls.items():
                rounds[variant].append(median_seconds(call, device, min_run_time))
    return [
        {
            "model": f"shufflenet_v1 {width_mult}x g{groups}",
            "variant": variant,
            "mode": "train step" if training else "inference",
            "batch": batch,
            "resolution": resolution,
            "seconds": statistics.median(times),
            "rounds_seconds": times,
            "images_per_s": batch / statistics.median(times),
            **({"time_vs_fused": paired_ratio(times, rounds["fused"])} if "fused" in rounds else {}),
        }
        for variant, times in rounds.items()
    ]
