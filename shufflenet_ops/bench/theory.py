"""Theoretical vs measured speedup, the paper's "4x fewer FLOPs gives ~2.6x
real speedup": for pairs of ShuffleNet v1 models, the FLOP ratio (from
FlopCounterMode) against the measured time ratio, unfused and fused."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import shufflenet_v1_unfused
from . import model_level

# Table 8 of the paper: single-thread inference on a Snapdragon 820, 224 x 224.
PAPER_MFLOPS = {0.5: 38, 1.0: 140, 2.0: 524}
PAPER_MS = {0.5: 15.2, 1.0: 37.8, 2.0: 108.8}

# (larger, smaller) model configs (width_mult, groups): the widths at g=3, then
# every g against g=1 at 1x, where the paper's FLOPs are (nearly) equal.
WIDTH_PAIRS = [((1.0, 3), (0.5, 3)), ((2.0, 3), (1.0, 3)), ((2.0, 3), (0.5, 3))]
GROUP_PAIRS = [((1.0, g), (1.0, 1)) for g in (2, 3, 4, 8)]


def multiply_adds(width_mult: float, groups: int, resolution: int) -> int:
    model = shufflenet_v1_unfused(groups=groups, width_mult=width_mult).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    # The counter counts a multiply-add as 2 FLOPs; the paper's "FLOPs" are multiply-adds.
    return counter.get_total_flops() // 2


def measure_model(width_mult: float, groups: int, *, resolution: int, device, dtype, min_run_time) -> dict:
    rows = model_level.measure(("unfused", "fused"), training=False, batch=1, groups=groups, width_mult=width_mult,
                               resolution=resolution, device=device, dtype=dtype, channels_last=False,
                               min_run_time=min_run_time)
    times = {row["variant"]: row["seconds"] for row in rows}
    return {"width_mult": width_mult, "groups": groups, "macs": multiply_adds(width_mult, groups, resolution),
            "seconds": times}


def pair_rows(models: dict[tuple[float, int], dict], pairs) -> list[dict]:
    rows = []
    for big, small in pairs:
        if big not in models or small not in models:
            continue
        b, s = models[big], models[small]
        theoretical = b["macs"] / s["macs"]
        row = {
            "pair": f"{big[0]}x g{big[1]} vs {small[0]}x g{small[1]}",
            "mflops_big": b["macs"] / 1e6,
            "mflops_small": s["macs"] / 1e6,
            "theoretical": theoretical,
        }
        for variant in ("unfused", "fused"):
            measured = b["seconds"][variant] / s["seconds"][variant]
            row[f"measured_{variant}"] = measured
            row[f"efficiency_{variant}"] = measured / theoretical
        if big[1] == small[1] == 3 and big[0] in PAPER_MS and small[0] in PAPER_MS:
            paper_theoretical = PAPER_MFLOPS[big[0]] / PAPER_MFLOPS[small[0]]
            paper_measured = PAPER_MS[big[0]] / PAPER_MS[small[0]]
            row.update(paper_theoretical=paper_theoretical, paper_measured=paper_measured,
                       paper_efficiency=paper_measured / paper_theoretical)
        rows.append(row)
    return rows
