"""shufflenet-bench: theoretical vs measured speedup of ShuffleNet v1, with op-
and model-level benchmarks of the fused ops. Every ratio it reports is taken
from medians measured in this one run."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from ..backends import available_backends
from . import anchors, model_level, op_level, report, theory
from .shapes import shufflenet_layer_shapes

SECTIONS = ("ops", "models", "theory")
GROUPS = (1, 2, 3, 4, 8)


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _sections(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    unknown = [s for s in names if s not in SECTIONS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(SECTIONS)}, got {text!r}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shufflenet-bench", description=__doc__)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: auto = cuda when available, else cpu (default: auto)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="element type of inputs and models (default: float32)")
    p.add_argument("--quick", action="store_true",
                   help="batch 1, g=3 and 8 only, shorter timings, no training-step compile (under 2 minutes on CPU)")
    p.add_argument("--out", type=Path, default=Path("shufflenet-bench-results"),
                   help="folder for results.json, the CSV files and the plots (default: ./shufflenet-bench-results)")
    p.add_argument("--sections", type=_sections, default=list(SECTIONS),
                   help=f"what to measure, comma-separated subset of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--batch-sizes", type=_positive_ints, default=None,
                   help="batch sizes of the op and model benchmarks (default: 1,8; quick: 1)")
    p.add_argument("--groups", type=_positive_ints, default=None,
                   help="group counts of the op benchmark, from 1,2,3,4,8 (default: all; quick: 3,8)")
    p.add_argument("--resolution", type=int, default=224, help="input size of the model benchmarks (default: 224)")
    p.add_argument("--channels-last", action="store_true", help="channels_last inputs and models")
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds of timed runs per measurement (default: 0.2; quick: 0.05)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's default)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-anchors", action="store_true",
                   help="skip the ONNX Runtime / OpenVINO rows (measured on CPU where installed: pip install .[bench])")
    return p


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def _resolve(args, p) -> None:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.dtype == "float16" and args.device == "cpu":
        p.error("--dtype float16: the CPU kernels support float32 and bfloat16 here")
    if args.groups and any(g not in GROUPS for g in args.groups):
        p.error(f"--groups: ShuffleNet v1 defines groups {','.join(map(str, GROUPS))}, got {args.groups}")
    if args.resolution < 32:
        p.error(f"--resolution: expected at least 32, got {args.resolution}")
    if args.threads is not None:
        if args.threads <= 0:
            p.error(f"--threads: expected a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    args.batch_sizes = args.batch_sizes or ([1] if args.quick else [1, 8])
    args.groups = args.groups or ([3, 8] if args.quick else list(GROUPS))
    args.min_run_time = args.min_run_time or (0.05 if args.quick else 0.2)


def main(argv=None) -> None:
    """The console script: measure, print, write the output folder."""
    run(argv)


def run(argv=None) -> dict:
    """Runs the benchmark for command-line arguments ``argv`` and returns every number it wrote."""
    p = parser()
    args = p.parse_args(argv)
    _resolve(args, p)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    machine = machine_name(device)
    common = dict(device=device, dtype=dtype, min_run_time=args.min_run_time)

    op_jobs = []
    if "ops" in args.sections:
        for shape in shufflenet_layer_shapes(args.batch_sizes, args.groups):
            for training in (False, True):
                for backend in op_level.backends_to_time(device):
                    op_jobs.append((shape, backend, training))
    model_jobs = []
    if "models" in args.sections:
        # The anchors run the float32 model on CPU, in the same rounds as the inference variants.
        anchor_runtimes = anchors.installed() if (
            device.type == "cpu" and dtype == torch.float32 and not args.no_anchors) else []
        for training in (False, True):
            variants = [v for v in model_level.VARIANTS
                        if v != "compiled" or not (args.no_compile or (training and args.quick))]
            for batch in args.batch_sizes:
                model_jobs.append((variants, [] if training else anchor_runtimes, training, batch))
    theory_models = []
    if "theory" in args.sections:
        theory_models = list(dict.fromkeys(m for pair in theory.WIDTH_PAIRS + theory.GROUP_PAIRS for m in pair))

    progress = report.Progress(len(op_jobs) + len(model_jobs) + len(theory_models))
    op_rows, model_rows, measured_models = [], [], {}
    for shape, backend, training in op_jobs:
        progress.step(f"op {backend} {'fwd+bwd' if training else 'fwd'} {shape.name}")
        op_rows.append(op_level.measure(shape, backend, channels_last=args.channels_last, training=training, **common))
    op_level.add_speedups(op_rows)
    for variants, anchor_runtimes, training, batch in model_jobs:
        progress.step(f"model {'train' if training else 'inference'} batch {batch}: "
                      f"{', '.join(variants + anchor_runtimes)}")
        model_rows += model_level.measure(variants, training=training, batch=batch, groups=3, width_mult=1.0,
                                          resolution=args.resolution, channels_last=args.channels_last,
                                          anchor_runtimes=anchor_runtimes, **common)
    for width_mult, groups in theory_models:
        progress.step(f"theory {width_mult}x g{groups}")
        measured_models[(width_mult, groups)] = theory.measure_model(width_mult, groups, resolution=args.resolution,
                                                                     **common)
    progress.close()
    theory_rows = theory.pair_rows(measured_models, theory.WIDTH_PAIRS + theory.GROUP_PAIRS)

    print(f"shufflenet-bench on {machine}, {args.dtype}, backends {available_backends(device)}")
    for r in op_rows:
        r["us"] = r["seconds"] * 1e6
    report.print_table("Op level: pointwise_group_conv + output shuffle (median us; speedup over reference)", op_rows,
                       [("shape", "shape"), ("pass", "pass"), ("backend", "backend"), ("us", "us"),
                        ("GB/s", "gb_per_s"), ("GFLOP/s", "gflop_per_s"), ("speedup", "speedup_vs_reference")])
    model_rows.sort(key=lambda r: (r["mode"] != "inference", r["batch"]))
    for r in model_rows:
        r["ms"] = r["seconds"] * 1e3
    report.print_table("Model level: ShuffleNet v1 1x g3 (median ms; time over fused, paired per round)", model_rows,
                       [("mode", "mode"), ("batch", "batch"), ("variant", "variant"), ("ms", "ms"),
                        ("images/s", "images_per_s"), ("x fused", "time_vs_fused")])
    report.print_table("Theoretical vs measured speedup (time ratio larger / smaller model, batch 1)", theory_rows,
                       [("pair", "pair"), ("MFLOPs", "mflops_big"), ("vs", "mflops_small"),
                        ("theory", "theoretical"), ("unfused", "measured_unfused"), ("eff.", "efficiency_unfused"),
                        ("fused", "measured_fused"), ("eff.", "efficiency_fused"), ("paper", "paper_measured"),
                        ("paper eff.", "paper_efficiency")])

    results = {"machine": machine, "device": str(device), "dtype": args.dtype, "torch": torch.__version__,
               "channels_last": args.channels_last, "quick": args.quick, "ops": op_rows, "models": model_rows,
               "theory": theory_rows,
               "theory_models": [{"width_mult": k[0], "groups": k[1], **v} for k, v in measured_models.items()]}
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "results.json", results)
    report.write_csv(args.out / "ops.csv", op_rows)
    report.write_csv(args.out / "models.csv", model_rows)
    report.write_csv(args.out / "theory.csv", theory_rows)
    plots = [name for name, ok in (("theory.png", report.plot_theory(args.out / "theory.png", theory_rows, machine)),
                                   ("ops.png", report.plot_ops(args.out / "ops.png", op_rows, machine))) if ok]
    if not plots and (op_rows or theory_rows):
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
    print(f"\nwrote {args.out}/: results.json, ops.csv, models.csv, theory.csv" + "".join(f", {n}" for n in plots))
    return results
