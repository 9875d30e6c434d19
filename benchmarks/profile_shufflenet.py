"""Where the time of a ShuffleNet v1 forward goes: a torch.profiler breakdown
per ATen / shufflenet_ops op, for the stock model (unfused) and for
``so.fuse`` of it, measured in the same run under torch.inference_mode.

    python benchmarks/profile_shufflenet.py [--groups 3] [--batch 1] [--channels-last] [--rows 12]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from shufflenet_ops.bench.model_level import build
from shufflenet_ops.models import shufflenet_v1_unfused

WARMUP, PROFILED = 10, 30


def op_times(module, x) -> dict:
    """Self CPU time per op name, in ms per forward."""
    with torch.inference_mode():
        for _ in range(WARMUP):
            module(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            for _ in range(PROFILED):
                module(x)
    per_op = defaultdict(float)
    for event in profile.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1e3 / PROFILED
    return dict(per_op)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=3, help="ShuffleNet v1 group count (default: 3)")
    parser.add_argument("--width-mult", type=float, default=1.0, help="width multiplier (default: 1.0)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default: 1)")
    parser.add_argument("--resolution", type=int, default=224, help="input size (default: 224)")
    parser.add_argument("--channels-last", action="store_true", help="channels_last model and input")
    parser.add_argument("--rows", type=int, default=12, help="ops listed per variant (default: 12)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = shufflenet_v1_unfused(groups=args.groups, width_mult=args.width_mult).eval()
    x = torch.randn(args.batch, 3, args.resolution, args.resolution)
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    print(f"ShuffleNet v1 {args.width_mult}x g{args.groups}, batch {args.batch}, {args.resolution}x{args.resolution}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, {torch.get_num_threads()} threads; "
          f"self CPU ms per forward, {PROFILED} profiled forwards")
    for variant in ("unfused", "fused"):
        per_op = op_times(build(variant, model, x), x)
        total = sum(per_op.values())
        print(f"\n{variant}: {total:.2f} ms of op time per forward")
        for name, ms in sorted(per_op.items(), key=lambda item: -item[1])[: args.rows]:
            print(f"  {ms:7.3f} ms  {100 * ms / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
