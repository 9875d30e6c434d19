"""Presentation: a progress bar while measuring, tables on the terminal, and
JSON, CSV and PNG files in the output folder."""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, width: int = 30, stream=sys.stderr):
        self.total, self.width, self.stream = max(total, 1), width, stream
        self.done, self.start = 0, time.perf_counter()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {label[:60]:<60}")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """columns: (header, key) pairs."""
    print(f"\n{title}")
    if not rows:
        print("  (nothing measured)")
        return
    cells = [[format_cell(r.get(key, "")) for _, key in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (h, _) in enumerate(columns)]
    print("  ".join(h.rjust(w) for (h, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))


def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2))


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def _pyplot():
    """matplotlib's pyplot on a file backend, or None where matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_theory(path: Path, rows: list[dict], machine: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    if not rows:
        return False
    series = [("theoretical", "theoretical (FLOP ratio)"), ("measured_unfused", "measured, unfused"),
              ("measured_fused", "measured, fused"), ("paper_measured", "paper, Snapdragon 820")]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r.get(key, 0.0) for r in rows], width, label=label)
    ax.set_xticks(range(len(rows)), [r["pair"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.axhline(1.0, color="gray", linewidth=0.5)
    ax.set_ylabel("time ratio (larger / smaller model)")
    ax.set_title(f"ShuffleNet v1: theoretical vs measured speedup ({machine})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_ops(path: Path, rows: list[dict], machine: str) -> bool:
    plt = _pyplot()
    if plt is None:
        return False
    forward = [r for r in rows if r["pass"] == "fwd"]
    if not forward:
        return False
    shapes = list(dict.fromkeys(r["shape"] for r in forward))
    backends = list(dict.fromkeys(r["backend"] for r in forward))
    times = {(r["shape"], r["backend"]): r["seconds"] * 1e6 for r in forward}
    fig, ax = plt.subplots(figsize=(max(8, len(shapes) * 0.6), 4.5))
    width = 0.8 / len(backends)
    for i, backend in enumerate(backends):
        xs = [j + (i - (len(backends) - 1) / 2) * width for j in range(len(shapes))]
        ax.bar(xs, [times.get((s, backend), 0.0) for s in shapes], width, label=backend)
    ax.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("median forward time (us)")
    ax.set_title(f"pointwise_group_conv + output shuffle, per backend ({machine})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
