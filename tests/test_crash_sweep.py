"""Crash sweep: every registered op (the native ops, their backward ops, the
triton_ family under Triton's interpreter) and every public function, over
empty and size-1 dimensions x dtypes x layouts (contiguous, channels_last,
strided views).

Each case runs in a process of its own, so that a segfault, a stack overflow
or a hang fails that case alone. Starting an interpreter per case would take
minutes, so two child interpreters (one per core) import torch and
shufflenet_ops once and sweep half of the ops each, forking a grandchild per
case, which they wait for with a timeout. A child never runs an ATen parallel
region itself: an OpenMP thread team does not survive a fork, and a grandchild
of a process that had started one could hang in its first parallel region.
Every tensor of a case is therefore made in its grandchild, and the child's
one warm-up of the Triton interpreter runs on a single thread.

A case passes when the op returns what stock PyTorch (so.reference, or the
stock operators that define a pointwise group conv) computes, or raises a
clean Python exception where the oracle raises too or where the case is an
argument error with a clear message (C_out = 0, a dtype a backend lacks). A
signal, a timeout, a wrong result or any other exception fails it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASE_TIMEOUT_S = 30
CHILD_TIMEOUT_S = 600

FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16")
# channel_shuffle copies bits: every element size (1, 2, 4, 8 and 16 bytes) of integer, bool,
# floating and complex dtypes.
SHUFFLE_DTYPES = FLOAT_DTYPES + ("int8", "int64", "bool", "complex64", "complex128")
LAYOUTS = ("contiguous", "channels_last", "strided")
TRITON_DTYPES = ("float32", "float16", "bfloat16")

C_OUT_ZERO = r"(weight\.size\(0\)|grad_out\.size\(1\)) \(C_out = 0\) to be a positive multiple of groups"


@dataclass(frozen=True)
class Case:
    entry: str
    variant: str
    dtype: str
    layout: str
    params: dict = field(hash=False)

    @property
    def id(self) -> str:
        return f"{self.variant}-{self.dtype}-{self.layout}"

    def describe(self) -> str:
        return f"{self.entry}[{self.id}] {self.params}"


# ---------------------------------------------------------------- cases (plain data)

def _shuffle_variants():
    # (shape, groups): empty and size-1 dimensions of 3-D, 4-D and 5-D inputs. A 1x1 image
    # counts as contiguous and channels_last at once.
    return {
        "base": ((2, 6, 3, 4), 3),
        "n0": ((0, 6, 3, 4), 3),
        "c0": ((2, 0, 3, 4), 2),
        "w0": ((2, 6, 3, 0), 3),
        "1x1": ((2, 4, 1, 1), 2),
        "all-ones": ((1, 1, 1, 1), 1),
        "3d": ((2, 6, 5), 2),
        "5d": ((2, 6, 2, 3, 1), 3),
        "5d-1x1x1": ((1, 4, 1, 1, 1), 2),
    }


_BASE_CONV = dict(n=2, c_in=6, c_out=6, h=3, w=4, groups=3, input_shuffle=3, output_shuffle=2,
                  bias=True, relu=True, residual=True, weight_2d=False)


def _conv_variants():
    def v(**changes):
        return {**_BASE_CONV, **changes}

    return {
        "base": v(),
        "plain-2d-weight": v(c_out=4, groups=1, input_shuffle=1, output_shuffle=1, bias=False, relu=False,
                             residual=False, weight_2d=True),
        "n0": v(n=0),
        "c_in0": v(c_in=0, input_shuffle=1),
        "c_in0-no-bias": v(c_in=0, groups=1, input_shuffle=1, bias=False, residual=False),
        "k1": v(c_in=3),
        "c_out0": v(c_out=0, output_shuffle=1),
        "m1": v(c_out=3, output_shuffle=3),
        "h0": v(h=0),
        "1x1": v(h=1, w=1),
        "all-ones": v(n=1, c_in=1, c_out=1, h=1, w=1, groups=1, input_shuffle=1, output_shuffle=1),
    }


def _grad_bias_variants():
    """grad_bias reads only grad_out [N, C_out, H, W] and the output shuffle."""
    variants = _conv_variants()
    return {name: variants[name] for name in ("base", "n0", "c_out0", "m1", "h0", "1x1", "all-ones")}


def _window_variants(**options):
    """Depthwise conv and pooling: (N, C, H, W, stride) plus the op's own options."""
    base = dict(n=2, c=4, h=5, w=6, stride=1, **options)
    return {
        "base": base,
        "stride2": {**base, "stride": 2},
        "n0": {**base, "n": 0},
        "c0": {**base, "c": 0},
        "w0-stride2": {**base, "w": 0, "stride": 2},
        "1x1": {**base, "n": 1, "c": 1, "h": 1, "w": 1},
        "1x1-stride2": {**base, "h": 1, "w": 1, "stride": 2},
        "h1": {**base, "h": 1, "w": 7, "stride": 2},
        "w1": {**base, "h": 7, "w": 1},
    }


def _stem_variants():
    base = dict(n=2, c_in=3, c_out=4, h=9, w=7, bias=True)
    return {
        "base": base,
        "no-bias": {**base, "bias": False},
        "n0": {**base, "n": 0},
        "c_in0": {**base, "c_in": 0},
        "c_out0": {**base, "c_out": 0},
        "h0": {**base, "h": 0},
        "1x1": {**base, "h": 1, "w": 1},
        "h1": {**base, "h": 1},
        "w2": {**base, "w": 2},
        "all-ones": {**base, "n": 1, "c_in": 1, "c_out": 1, "h": 1, "w": 1},
    }


# entry -> (kind, variants, dtypes)
ENTRIES = {
    "channel_shuffle": ("shuffle", _shuffle_variants, SHUFFLE_DTYPES),
    "triton_channel_shuffle": ("shuffle", _shuffle_variants, SHUFFLE_DTYPES),
    "so.channel_shuffle": ("shuffle", _shuffle_variants, SHUFFLE_DTYPES),
    "pointwise_group_conv": ("conv", _conv_variants, FLOAT_DTYPES),
    "triton_pointwise_group_conv": ("conv", _conv_variants, FLOAT_DTYPES),
    "so.pointwise_group_conv": ("conv", _conv_variants, FLOAT_DTYPES),
    "pointwise_group_conv_grad_input": ("grad_input", _conv_variants, FLOAT_DTYPES),
    "triton_pointwise_group_conv_grad_input": ("grad_input", _conv_variants, FLOAT_DTYPES),
    "pointwise_group_conv_grad_weight": ("grad_weight", _conv_variants, FLOAT_DTYPES),
    "triton_pointwise_group_conv_grad_weight": ("grad_weight", _conv_variants, FLOAT_DTYPES),
    "pointwise_group_conv_grad_bias": ("grad_bias", _grad_bias_variants, FLOAT_DTYPES),
    "triton_pointwise_group_conv_grad_bias": ("grad_bias", _grad_bias_variants, FLOAT_DTYPES),
    "depthwise_conv3x3": ("depthwise", lambda: _window_variants(bias=True, relu=True), FLOAT_DTYPES),
    "so.depthwise_conv3x3": ("depthwise", lambda: _window_variants(bias=False, relu=False), FLOAT_DTYPES),
    "pool3x3-max": ("pool", lambda: _window_variants(average=False), FLOAT_DTYPES),
    "pool3x3-avg": ("pool", lambda: _window_variants(average=True), FLOAT_DTYPES),
    "so.max_pool3x3": ("pool", lambda: _window_variants(average=False), FLOAT_DTYPES),
    "so.avg_pool3x3": ("pool", lambda: _window_variants(average=True), FLOAT_DTYPES),
    "stem_conv3x3_maxpool": ("stem", _stem_variants, FLOAT_DTYPES),
    "so.stem_conv3x3_maxpool": ("stem", _stem_variants, FLOAT_DTYPES),
}


def cases_for(entry: str) -> list[Case]:
    _, variants, dtypes = ENTRIES[entry]
    cases = []
    for dtype in dtypes:
        # A dtype the Triton backend lacks is rejected before any size is looked at: one variant.
        rejected = entry.startswith("triton_") and dtype not in TRITON_DTYPES
        for name, params in list(variants().items())[:1] if rejected else variants().items():
            if not isinstance(params, dict):
                params = dict(shape=params[0], groups=params[1])
            cases += [Case(entry, name, dtype, layout, params) for layout in LAYOUTS]
    return cases


def reject_pattern(case: Case) -> str | None:
    """The clear error a case must raise, where its arguments are invalid for the op (either
    error, where two apply)."""
    kind = ENTRIES[case.entry][0]
    patterns = []
    if case.entry.startswith("triton_") and case.dtype not in TRITON_DTYPES:
        patterns.append(r"\(Triton\): this backend supports dtypes \{float32, float16, bfloat16\}, "
                        r"got \w+ of torch\.\w+")
    if kind in ("conv", "grad_input", "grad_weight") and case.params["c_out"] == 0:
        patterns.append(C_OUT_ZERO)
    if kind == "stem" and (case.params["h"] == 0 or case.params["w"] == 0):
        patterns.append(r"stem_conv3x3_maxpool: expected x to have a positive height and width")
    return "|".join(patterns) or None


# ---------------------------------------------------------------- one case (runs in the grandchild)

def _torch_dtype(name):
    import torch

    return getattr(torch, name)


def _values(shape, dtype_name, gen):
    import torch

    dtype = _torch_dtype(dtype_name)
    if dtype_name == "bool":
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype_name == "uint8":
        return torch.randint(0, 256, shape, generator=gen).to(dtype)
    if dtype_name.startswith("int"):
        return torch.randint(-100, 100, shape, generator=gen).to(dtype)
    if dtype_name.startswith("complex"):
        return torch.randn(shape, generator=gen, dtype=torch.complex128).to(dtype)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)


def _activation(shape, case, gen):
    """An input in the case's layout: dense NCHW, channels_last (channels innermost, for 3-D
    too), or a strided view (every other element of a twice as wide last dimension)."""
    import torch

    if case.layout == "strided":
        wide = _values((*shape[:-1], 2 * shape[-1]), case.dtype, gen)
        return wide[..., ::2]
    x = _values(shape, case.dtype, gen)
    if case.layout == "channels_last":
        if x.dim() == 3:
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        # Channels-last strides even where size-1 dimensions make x count as both layouts
        # (x.contiguous(memory_format=...) would keep x's NCHW strides there).
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return torch.empty(x.shape, dtype=x.dtype, memory_format=memory_format).copy_(x)
    return x


def _dense(shape, case, gen):
    return _values(shape, case.dtype, gen)


def _float64(t):
    import torch

    return None if t is None else t.detach().to(torch.float64)


def _shuffle(t, groups):
    """reference.channel_shuffle, where a tensor without channels has nothing to shuffle."""
    import shufflenet_ops as so

    if groups <= 1 or t.shape[1] == 0:
        return t
    return so.reference.channel_shuffle(t, groups)


def _unshuffle(t, groups):
    return _shuffle(t, t.shape[1] // groups if groups > 1 else 1)


# The pointwise group conv and its gradients as stock einsums over (N, groups, channels, pixels):
# defined for every size, including the empty sums of C_in = 0 and of no pixels, where
# F.conv2d gives no channels at all or raises.
def _grouped(t, groups):
    n, c = t.shape[:2]
    return t.reshape(n, groups, c // groups, math.prod(t.shape[2:]))


def _conv_oracle(x, w, b, groups, input_shuffle, output_shuffle, relu, residual):
    import torch

    n, _, h, width = x.shape
    c_out = w.shape[0]
    w = w.reshape(groups, c_out // groups, w.shape[1])
    y = torch.einsum("gmk,ngkp->ngmp", w, _grouped(_shuffle(x, input_shuffle), groups))
    y = y.reshape(n, c_out, h, width)
    if b is not None:
        y = y + b.reshape(1, -1, 1, 1)
    y = _shuffle(y, output_shuffle)
    if residual is not None:
        y = y + residual
    return torch.relu(y) if relu else y


def _grad_input_oracle(grad_out, w, groups, input_shuffle, output_shuffle):
    import torch

    n, c_out, h, width = grad_out.shape
    g = _grouped(_unshuffle(grad_out, output_shuffle), groups)
    gx = torch.einsum("gmk,ngmp->ngkp", w.reshape(groups, c_out // groups, w.shape[1]), g)
    return _unshuffle(gx.reshape(n, -1, h, width), input_shuffle)


def _grad_weight_oracle(grad_out, x, groups, input_shuffle, output_shuffle):
    import torch

    g = _grouped(_unshuffle(grad_out, output_shuffle), groups)
    gw = torch.einsum("ngmp,ngkp->gmk", g, _grouped(_shuffle(x, input_shuffle), groups))
    return gw.reshape(grad_out.shape[1], x.shape[1] // groups, 1, 1)


def _stem_oracle(x, w, b):
    """so.reference.stem_conv3x3_maxpool; without input channels (an empty sum, where stock conv2d
    returns no channels) on one zero input channel, which adds only zero products."""
    import torch
    import shufflenet_ops as so

    if x.shape[1] == 0:
        x = torch.zeros((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype)
        w = torch.zeros((w.shape[0], 1, 3, 3), dtype=w.dtype)
    return so.reference.stem_conv3x3_maxpool(x, w, b)


def _window_size(size, stride):
    return 0 if size == 0 else (size - 1) // stride + 1


def _build(case):
    """(call, oracle, expected shape, expected memory format (None: contiguous 1-D/weight-shaped))."""
    import torch
    import shufflenet_ops as so
    from torch._prims_common import suggest_memory_format

    ops = torch.ops.shufflenet_ops
    kind = ENTRIES[case.entry][0]
    p = case.params
    gen = torch.Generator().manual_seed(zlib.crc32(case.describe().encode()))
    prefix = "triton_" if case.entry.startswith("triton_") else ""
    public = case.entry.startswith("so.")

    if kind == "shuffle":
        shape, groups = p["shape"], p["groups"]
        x = _activation(shape, case, gen)
        op = so.channel_shuffle if public else getattr(ops, prefix + "channel_shuffle")
        call = lambda: op(x, groups)  # noqa: E731
        return call, lambda: so.reference.channel_shuffle(x, groups), tuple(shape), suggest_memory_format(x)

    if kind in ("conv", "grad_input", "grad_weight", "grad_bias"):
        groups, k = p["groups"], p["c_in"] // p["groups"]
        ish, osh = p["input_shuffle"], p["output_shuffle"]
        w = _dense((p["c_out"], k) if p["weight_2d"] else (p["c_out"], k, 1, 1), case, gen)
        if kind == "conv":
            x = _activation((p["n"], p["c_in"], p["h"], p["w"]), case, gen)
            b = _dense((p["c_out"],), case, gen) if p["bias"] else None
            r = _activation((p["n"], p["c_out"], p["h"], p["w"]), case, gen) if p["residual"] else None
            if public:
                def call():
                    return so.pointwise_group_conv(x, w, b, groups, input_shuffle=ish, output_shuffle=osh,
                                                   relu=p["relu"], residual=r)
            else:
                def call():
                    return getattr(ops, prefix + "pointwise_group_conv")(x, w, b, groups, ish, osh, p["relu"], r)

            def oracle():
                return _conv_oracle(_float64(x), _float64(w), _float64(b), groups, ish, osh, p["relu"], _float64(r))

            return call, oracle, (p["n"], p["c_out"], p["h"], p["w"]), suggest_memory_format(x)
        grad_out = _activation((p["n"], p["c_out"], p["h"], p["w"]), case, gen)
        if kind == "grad_input":
            def call():
                return getattr(ops, prefix + "pointwise_group_conv_grad_input")(grad_out, w, groups, ish, osh)

            def oracle():
                return _grad_input_oracle(_float64(grad_out), _float64(w), groups, ish, osh)

            return call, oracle, (p["n"], p["c_in"], p["h"], p["w"]), suggest_memory_format(grad_out)
        if kind == "grad_weight":
            x = _activation((p["n"], p["c_in"], p["h"], p["w"]), case, gen)

            def call():
                return getattr(ops, prefix + "pointwise_group_conv_grad_weight")(grad_out, x, groups, ish, osh)

            def oracle():
                return _grad_weight_oracle(_float64(grad_out), _float64(x), groups, ish, osh)

            return call, oracle, (p["c_out"], k, 1, 1), None

        def call():
            return getattr(ops, prefix + "pointwise_group_conv_grad_bias")(grad_out, osh)

        return call, lambda: _unshuffle(_float64(grad_out), osh).sum((0, 2, 3)), (p["c_out"],), None

    if kind == "depthwise":
        x = _activation((p["n"], p["c"], p["h"], p["w"]), case, gen)
        w = _dense((p["c"], 1, 3, 3), case, gen)
        b = _dense((p["c"],), case, gen) if p["bias"] else None
        s, relu = p["stride"], p["relu"]
        call = (lambda: so.depthwise_conv3x3(x, w, b, s, relu=relu)) if public else (
            lambda: ops.depthwise_conv3x3(x, w, b, s, relu))

        def oracle():
            return so.reference.depthwise_conv3x3(_float64(x), _float64(w), _float64(b), s, relu=relu)

        shape = (p["n"], p["c"], _window_size(p["h"], s), _window_size(p["w"], s))
        return call, oracle, shape, suggest_memory_format(x)

    if kind == "pool":
        x = _activation((p["n"], p["c"], p["h"], p["w"]), case, gen)
        s, average = p["stride"], p["average"]
        if public:
            call = (lambda: so.avg_pool3x3(x, s)) if average else (lambda: so.max_pool3x3(x, s))
        else:
            call = lambda: ops.pool3x3(x, s, average)  # noqa: E731
        reference = so.reference.avg_pool3x3 if average else so.reference.max_pool3x3
        shape = (p["n"], p["c"], _window_size(p["h"], s), _window_size(p["w"], s))
        return call, lambda: reference(_float64(x), s), shape, suggest_memory_format(x)

    assert kind == "stem", kind
    x = _activation((p["n"], p["c_in"], p["h"], p["w"]), case, gen)
    w = _dense((p["c_out"], p["c_in"], 3, 3), case, gen)
    b = _dense((p["c_out"],), case, gen) if p["bias"] else None
    call = (lambda: so.stem_conv3x3_maxpool(x, w, b)) if public else (lambda: ops.stem_conv3x3_maxpool(x, w, b))
    pooled = [_window_size(_window_size(size, 2), 2) for size in (p["h"], p["w"])]
    return call, lambda: _stem_oracle(_float64(x), _float64(w), _float64(b)), (p["n"], p["c_out"], *pooled), \
        suggest_memory_format(x)


def _bits(t):
    """The bytes of t in NCHW order, so that NaN payloads and -0.0 compare too."""
    import torch

    flat = torch.empty(t.numel(), dtype=t.dtype)
    flat.copy_(t.reshape(-1))
    return flat.view(torch.uint8)


def _compare(case, y, expected, shape, memory_format):
    """None if y is right, else what is wrong."""
    import torch
    from tests.utils import TOLERANCES

    if tuple(y.shape) != tuple(shape):
        return f"shape {tuple(y.shape)}, expected {tuple(shape)}"
    if y.dtype != _torch_dtype(case.dtype):
        return f"dtype {y.dtype}, expected {case.dtype}"
    if y.numel() and memory_format is not None and not y.is_contiguous(memory_format=memory_format):
        return f"strides {y.stride()}, expected dense in {memory_format}"
    if expected is None:
        return None if y.numel() == 0 else "a non-empty result where the oracle has none"
    if tuple(expected.shape) != tuple(shape):
        return f"the oracle's shape {tuple(expected.shape)} is not {tuple(shape)}"
    if ENTRIES[case.entry][0] == "shuffle":
        return None if torch.equal(_bits(y), _bits(expected)) else "channel_shuffle is not a bit-exact copy"
    atol, rtol = TOLERANCES[y.dtype]
    actual, expected = y.double(), expected.double()
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    close = torch.isclose(actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True)
    if bool(close.all()):
        return None
    worst = (actual - expected).abs().nan_to_num(float("inf")).max().item()
    return f"{int((~close).sum())} of {close.numel()} elements differ from the oracle (largest difference {worst:.3g})"


def _clean_error(error):
    return isinstance(error, (ValueError, TypeError, RuntimeError, NotImplementedError))


def evaluate(case: Case) -> dict:
    """The verdict on one case: status ok, raised (an allowed clean exception) or fail."""
    call, oracle, shape, memory_format = _build(case)
    try:
        y = call()
        error = None
    except Exception as e:  # judged below
        y, error = None, e
    try:
        expected = oracle()
        oracle_error = None
    except Exception as e:
        expected, oracle_error = None, e
    pattern = reject_pattern(case)
    if error is not None:
        message = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        if pattern is not None:
            if isinstance(error, (ValueError, TypeError)) and re.search(pattern, str(error)):
                return {"status": "raised", "reason": message}
            return {"status": "fail", "reason": f"expected a clear error matching {pattern!r}, got {message}"}
        if oracle_error is not None and _clean_error(error):
            return {"status": "raised", "reason": f"{message} (the oracle raises too)"}
        return {"status": "fail", "reason": f"raised {message} where the oracle computes"}
    if pattern is not None:
        return {"status": "fail", "reason": f"returned {tuple(y.shape)} where a clear error ({pattern!r}) is due"}
    problem = _compare(case, y, expected, shape, memory_format)
    if problem is not None:
        return {"status": "fail", "reason": problem}
    return {"status": "ok", "reason": ""}


# ---------------------------------------------------------------- the child: fork one grandchild per case

def _run_forked(case: Case) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # grandchild
        os.close(read_end)
        try:
            verdict = evaluate(case)
        except BaseException as error:  # noqa: BLE001  (reported, whatever it is)
            verdict = {"status": "fail", "reason": f"the case could not be evaluated: {error!r}"[:600]}
        os.write(write_end, json.dumps(verdict).encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + CASE_TIMEOUT_S
    chunks = []
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready = select.select([read_end], [], [], max(remaining, 0))[0] if remaining > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return {"status": "fail", "reason": f"timed out after {CASE_TIMEOUT_S} s"}
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"status": "fail", "reason": f"crashed: {signal.Signals(os.WTERMSIG(status)).name}"}
    if os.WEXITSTATUS(status) != 0 or not chunks:
        return {"status": "fail", "reason": f"exited with status {os.WEXITSTATUS(status)} and no verdict"}
    return json.loads(b"".join(chunks))


def _sweep_entry(entry: str) -> dict:
    import torch
    import shufflenet_ops as so

    if entry.startswith("triton_") and "triton" not in so.available_backends("cpu"):
        return {"unavailable": "the Triton backend (triton with TRITON_INTERPRET=1)"}
    cases = cases_for(entry)
    if entry.startswith("triton_"):
        # The interpreter's first launch of a kernel parses and rewrites it: done once here, not
        # in every grandchild. On one thread, ATen runs no parallel region.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            evaluate(next(c for c in cases if c.dtype in TRITON_DTYPES))
        finally:
            torch.set_num_threads(threads)
    # Objects the grandchildren only read stay out of their garbage collector's passes, which
    # would otherwise touch (and copy) every page of the heap.
    gc.freeze()
    return {"results": {case.id: _run_forked(case) for case in cases}}


def child_main(entries: list[str]) -> None:
    """Sweeps `entries` (one grandchild per case) and prints {entry: report} as one JSON line."""
    import torch  # noqa: F401
    # Imported here once, not in every grandchild: suggest_memory_format imports it lazily.
    import torch.fx.experimental.symbolic_shapes  # noqa: F401
    import shufflenet_ops  # noqa: F401
    import tests.utils  # noqa: F401

    print(json.dumps({entry: _sweep_entry(entry) for entry in entries}))


# ---------------------------------------------------------------- the tests

def _run_child(entries: list[str]) -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = "import sys; from tests.test_crash_sweep import child_main; child_main(sys.argv[1:])"
    proc = subprocess.run([sys.executable, "-c", code, *entries], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)
    assert proc.returncode == 0, f"the sweep child of {entries} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _weight(entry: str) -> int:
    """A case's relative cost: the Triton interpreter runs each kernel in Python."""
    return len(cases_for(entry)) * (2 if entry.startswith("triton_") else 1)


@pytest.fixture(scope="module")
def sweeps(request):
    """entry -> future of its report. The entries this session selected are split between two
    child interpreters (each imports torch once, two seconds), which run side by side."""
    selected = sorted({item.callspec.params["entry"] for item in request.session.items
                       if getattr(item, "module", None) is sys.modules[__name__] and hasattr(item, "callspec")
                       and "entry" in item.callspec.params}, key=_weight, reverse=True)
    groups = [[], []]
    for entry in selected:  # the heaviest first, each to the lighter group
        min(groups, key=lambda group: sum(map(_weight, group))).append(entry)
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {entry: future for group in groups if group for future in [pool.submit(_run_child, group)]
               for entry in group}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_sweep(entry, sweeps):
    report = sweeps[entry].result()[entry]
    if "unavailable" in report:
        pytest.skip(f"{report['unavailable']} is not installed")
    results = report["results"]
    cases = cases_for(entry)
    assert sorted(results) == sorted(c.id for c in cases), "the child reported other cases than it was given"
    failures = [f"  {c.describe()}: {results[c.id]['reason']}" for c in cases if results[c.id]["status"] == "fail"]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


def test_sweep_cases_every_registered_op():
    """The sweep's entries name every op the library registers, and every public function."""
    import torch
    import shufflenet_ops as so  # noqa: F401

    registered = {name.removeprefix("shufflenet_ops::") for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("shufflenet_ops::")}
    swept = {re.sub(r"-(max|avg)$", "", entry) for entry in ENTRIES if not entry.startswith("so.")}
    assert registered == swept
    public = {"channel_shuffle", "pointwise_group_conv", "depthwise_conv3x3", "max_pool3x3", "avg_pool3x3",
              "stem_conv3x3_maxpool"}
    assert {entry.removeprefix("so.") for entry in ENTRIES if entry.startswith("so.")} == public
