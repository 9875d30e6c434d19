"""Shared setup of the op benchmarks: the ShuffleNet layer shapes, timing and
reporting. Every ratio is taken from medians measured in the same run."""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as tbench


@dataclass(frozen=True)
class LayerShape:
    """A 1x1 group conv of ShuffleNet v1 1x: C_in -> C_out at H x W with g groups."""

    batch: int
    c_in: int
    c_out: int
    size: int
    groups: int

    @property
    def name(self) -> str:
        return f"N{self.batch} {self.c_in}->{self.c_out} {self.size}x{self.size} g{self.groups}"

    @property
    def macs(self) -> int:
        return self.batch * self.size * self.size * self.c_out * self.c_in // self.groups


def shufflenet_layer_shapes(batches=(1, 8), groups_list=(3, 8)) -> list[LayerShape]:
    """The bottleneck-in and bottleneck-out 1x1 convs of every stage of
    ShuffleNet v1 1x (Table 1 of the paper): stage widths 240/480/960 (g=3) and
    384/768/1536 (g=8) at 28/14/7, bottleneck a quarter of the width."""
    stage_widths = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
    shapes = []
    for batch in batches:
        for groups in groups_list:
            for stage, size in enumerate((28, 14, 7)):
                width = stage_widths[groups] * 2**stage
                shapes.append(LayerShape(batch, width, width // 4, size, groups))
                shapes.append(LayerShape(batch, width // 4, width, size, groups))
    return shapes


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device: torch.device, min_run_time: float) -> float:
    """Median time of fn() after a warm-up; CUDA work is synchronized."""
    for _ in range(3):
        fn()
    synchronize(device)
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=max(50, int(min_run_time * 1000)), return_mode="median") / 1e3
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def geometric_mean(values) -> float:
    return statistics.geometric_mean(values) if values else float("nan")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cpu", help="device to run on: cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                        help="element type (default: float32)")
    parser.add_argument("--min-run-time", type=float, default=0.2,
                        help="seconds of timed runs per measurement (default: 0.2)")
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
