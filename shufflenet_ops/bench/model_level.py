"""Model level: ShuffleNet v1 as stock PyTorch code runs it (eager, unfused),
after ``so.fuse``, and under ``torch.compile``: median latency per batch size
for inference and for a training step (forward, cross-entropy, backward, SGD)."""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

from ..fuse import fuse
from ..models import shufflenet_v1_unfused
from .timing import median_seconds

VARIANTS = ("unfused", "fused", "compiled")


def build(variant: str, model: torch.nn.Module, example: torch.Tensor):
    """The module to time for ``variant``; ``model`` is the unfused stock model."""
    if variant == "unfused":
        return model
    if variant == "fused":
        return fuse(model, example)
    return torch.compile(model)


def inference_seconds(module, x, device, min_run_time) -> float:
    with torch.inference_mode():
        return median_seconds(lambda: module(x), device, min_run_time)


def training_step_seconds(module, parameters, x, device, min_run_time) -> float:
    target = torch.randint(0, 1000, (x.shape[0],), device=device)
    optimizer = torch.optim.SGD(parameters, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(module(x), target).backward()
        optimizer.step()

    return median_seconds(step, device, min_run_time)


# Each variant is timed this many times, in turns, and the median kept: the
# variants see the same drift of a shared machine.
ROUNDS = 3


def measure(variants, *, training: bool, batch: int, groups: int, width_mult: float, resolution: int,
            device, dtype, channels_last: bool, min_run_time: float) -> list[dict]:
    torch.manual_seed(0)
    model = shufflenet_v1_unfused(groups=groups, width_mult=width_mult).to(device=device, dtype=dtype)
    model.train(training)
    x = torch.randn(batch, 3, resolution, resolution, device=device, dtype=dtype)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    modules = {variant: build(variant, model, x) for variant in variants}
    rounds = {variant: [] for variant in variants}
    for _ in range(ROUNDS):
        for variant, module in modules.items():
            if training:
                seconds = training_step_seconds(module, list(model.parameters()), x, device, min_run_time)
            else:
                seconds = inference_seconds(module, x, device, min_run_time)
            rounds[variant].append(seconds)
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
        }
        for variant, times in rounds.items()
    ]
