"""Shared setup of the op benchmarks: command line, environment and reporting.
The layer shapes and the timing are the package's own (shufflenet_ops.bench),
so these scripts and `shufflenet-bench` measure the same way. Every ratio is
taken from measurements in the same run: a median of per-round ratios where
contenders are timed in interleaved rounds."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from shufflenet_ops.bench.shapes import LayerShape, shufflenet_layer_shapes  # noqa: F401
from shufflenet_ops.bench.timing import (  # noqa: F401
    geometric_mean, interleaved_medians, interleaved_rounds, median_seconds, paired_ratio, round_medians)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="device to run on: cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                        help="element type (default: float32)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of timed runs per measurement (default: 0.2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds the run time is split into; more rounds ride out longer "
                             "slow spells of a shared machine (default: 3)")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, shorter timing")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement to this JSON file")
    return parser


def environment(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | None, payload: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join(f"{{:>{w}}}" for w in widths)
    print(line.format(*header))
    for row in rows:
        print(line.format(*row))


# (name, memory format) of the two layouts the 3x3 op benchmarks measure.
LAYOUTS = (("NCHW", torch.contiguous_format), ("NHWC", torch.channels_last))


def batches_and_run_time(args: argparse.Namespace) -> tuple[tuple[int, ...], float]:
    """Batch sizes to measure and seconds per measurement: --quick measures batch 1 only, half as long."""
    if args.quick:
        return (1,), args.min_run_time / 2
    return (1, 8), args.min_run_time


def speedup_cells(times: dict[str, float]) -> list[str]:
    """Table cells of one torch-vs-ours measurement: both times in microseconds, then the speedup."""
    return [f"{times['torch'] * 1e6:.1f}", f"{times['ours'] * 1e6:.1f}", f"{times['torch'] / times['ours']:.2f}x"]


def report_speedups(args: argparse.Namespace, device: torch.device, title: str, header: list[str],
                    rows: list[list[str]], results: list[dict], speedups: dict[str, list[float]]) -> None:
    """Prints the table and each group's geometric mean and worst speedup over torch, and writes
    every measurement to --json."""
    print(f"{title}, {environment(device)}")
    print_table(header, rows)
    summary = {}
    for group, values in speedups.items():
        summary[f"{group}_speedup_vs_torch"] = geometric_mean(values)
        summary[f"{group}_worst_speedup_vs_torch"] = min(values)
    print("geometric mean / worst:", ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    write_json(args.json, {"environment": environment(device), "dtype": args.dtype,
                           "results": results, "summary": summary})
