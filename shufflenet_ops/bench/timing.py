"""How the benchmarks time: warm-up, then the median of timed runs; on CUDA
with triton.testing.do_bench (CUDA events), elsewhere torch.utils.benchmark."""

from __future__ import annotations

import statistics

import torch
import torch.utils.benchmark as torch_benchmark


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn, device: torch.device, min_run_time: float = 0.2, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        import triton.testing

        rep_ms = max(50, int(min_run_time * 1000))
        return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median") / 1e3
    # Timer runs single-threaded unless told otherwise; measure with the threads the user has.
    timer = torch_benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def interleaved_rounds(fns: dict, device: torch.device, min_run_time: float = 0.2, rounds: int = 3) -> dict:
    """Per-round median seconds of each ``fns[name]()``: ``rounds`` rounds,
    each timing every contender in turn, so that a slow spell of a shared
    machine hits the contenders of a round alike."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_seconds(fn, device, min_run_time / rounds))
    return times


def round_medians(rounds: dict) -> dict:
    """The median over rounds of each contender's per-round seconds."""
    return {name: statistics.median(values) for name, values in rounds.items()}


def interleaved_medians(fns: dict, device: torch.device, min_run_time: float = 0.2, rounds: int = 3) -> dict:
    """Median seconds of each ``fns[name]()`` over interleaved rounds (the median of the per-round medians)."""
    return round_medians(interleaved_rounds(fns, device, min_run_time, rounds))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of one contender's time over another's in the same
    round: the machine's drift between rounds cancels out."""
    return statistics.median(n / d for n, d in zip(numerator, denominator, strict=True))


def geometric_mean(values) -> float:
    values = list(values)
    return statistics.geometric_mean(values) if values else float("nan")
