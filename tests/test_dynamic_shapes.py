"""torch.compile: with dynamic shapes every op and whole fused models compile
once and then run at other batch and image sizes, forward and backward, in
both memory formats, with ``dynamic=True`` and with ``mark_dynamic``; and
compiled autograd captures the ops' backward.

The per-op cases trace with AOTAutograd (backend "aot_eager"), where the
ops' fake kernels and autograd decide what is guarded. Inductor's own
convolution lowering guards the image size of a convolution's backward (a
stock model recompiles there too), so the Inductor cases vary the batch."""

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

import shufflenet_ops as so
from tests.stock_shufflenet import randomize_batch_norms
from tests.utils import assert_close_to

# (N, H, W) of the calls: no two sizes of the first call are equal, nor equal
# to a channel count (PyTorch gives equal sizes one symbol when it first
# traces), and every later call changes every dim.
SIZES = [(2, 5, 7), (3, 9, 10), (5, 6, 11), (7, 8, 13)]


def _weights():
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(*shape, generator=gen).requires_grad_()
            for name, shape in {"w": (6, 4, 1, 1), "b": (6,), "dw": (12, 1, 3, 3), "db": (12,),
                                "sw": (8, 3, 3, 3), "sb": (8,)}.items()}


W = _weights()
# name -> (function of x, input channels)
OPS = {
    "channel_shuffle": (lambda x: so.channel_shuffle(x, 3), 12),
    "pointwise_group_conv": (lambda x: so.pointwise_group_conv(x, W["w"], W["b"], 3, input_shuffle=3,
                                                               output_shuffle=2, relu=True), 12),
    "pointwise_group_conv+residual": (
        lambda x: so.pointwise_group_conv(x, W["w"], W["b"], 3, output_shuffle=3, relu=True, residual=x[:, :6]), 12),
    "depthwise_conv3x3": (lambda x: so.depthwise_conv3x3(x, W["dw"], W["db"], 2, relu=True), 12),
    "max_pool3x3": (lambda x: so.max_pool3x3(x, 2), 12),
    "avg_pool3x3": (lambda x: so.avg_pool3x3(x, 1), 12),
    "stem_conv3x3_maxpool": (lambda x: so.stem_conv3x3_maxpool(x, W["sw"], W["sb"]), 3),
}


def _input(n, c, h, w, channels_last, seed):
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _run_and_grads(fn, x):
    out = fn(x)
    leaves = [x] + list(W.values())
    grads = torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)
    return out, grads


@pytest.mark.parametrize("how", ["dynamic=True", "mark_dynamic"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(OPS))
def test_op_compiles_once(name, channels_last, how):
    fn, channels = OPS[name]
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, backend=counter, fullgraph=True, dynamic=True if how == "dynamic=True" else None)
    for i, (n, h, w) in enumerate(SIZES):
        x = _input(n, channels, h, w, channels_last, seed=i).requires_grad_()
        if how == "mark_dynamic":
            for dim in (0, 2, 3):
                torch._dynamo.mark_dynamic(x, dim)
        out, grads = _run_and_grads(compiled, x)
        out_ref, grads_ref = _run_and_grads(fn, x)
        assert_close_to(out, out_ref.double(), torch.float32, f"{name} output at {(n, h, w)}")
        for g, g_ref in zip(grads, grads_ref):
            assert (g is None) == (g_ref is None)
            if g is not None:
                assert_close_to(g, g_ref.double(), torch.float32, f"{name} gradient at {(n, h, w)}")
    assert counter.frame_count == 1, f"{name}: compiled {counter.frame_count} times for {len(SIZES)} sizes"


def _fused_twin(training):
    torch.manual_seed(0)
    stock = randomize_batch_norms(so.models.shufflenet_v1_unfused(groups=3, width_mult=0.25, num_classes=10))
    stock.train(training)
    return stock, so.fuse(copy.deepcopy(stock), torch.randn(4, 3, 64, 64))


def _compiled_frames(model, backend, sizes, check=None):
    """Frames compiled when ``model`` runs under torch.compile(dynamic=True) at each batch size, after the first
    size's; with the guards that failed. ``check(x, out)`` runs after each call."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(model, backend=counter, dynamic=True)
    first_frames = None
    for i, n in enumerate(sizes):
        x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(i))
        out = compiled(x)
        first_frames = counter.frame_count if first_frames is None else first_frames
        if check is not None:
            check(x, out)
    failures = [reason for reasons in torch._dynamo.utils.guard_failures.values() for reason in reasons]
    return counter.frame_count - first_frames, failures


def _check_against(stock, training):
    def check(x, out):
        with torch.no_grad():
            out_ref = stock(x)
        # Whole networks in float32; train mode normalizes with batch statistics.
        torch.testing.assert_close(out, out_ref, atol=1e-3 * out_ref.abs().max().item(), rtol=1e-3)
        if training:
            out.square().sum().backward()
    return check


# Batch sizes on both sides of every size the fused graph treats apart (batch 1
# aside: PyTorch specializes it; the first batch equals no other size of the
# model's input).
FUSED_MODEL_BATCHES = (5, 2, 8, 6)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_fused_model_compiles_once(training):
    stock, fused = _fused_twin(training)
    recompiles, reasons = _compiled_frames(fused, "aot_eager", FUSED_MODEL_BATCHES, _check_against(stock, training))
    assert recompiles == 0, f"recompiled {recompiles} times: {reasons}"


def test_fused_model_under_inductor():
    """Inductor's own choice of CPU kernels for the layers the fused graph keeps (the
    linear layer) depends on the processor and may guard the batch size, so a
    recompile is allowed; one per batch size would mean the batch is not dynamic.
    (The stock model itself fails to compile under Inductor with dynamic=True.)"""
    stock, fused = _fused_twin(False)
    recompiles, reasons = _compiled_frames(fused, "inductor", FUSED_MODEL_BATCHES, _check_against(stock, False))
    assert recompiles < len(FUSED_MODEL_BATCHES) - 1, f"recompiled at every batch size: {reasons}"


@pytest.mark.parametrize("name", list(OPS))
def test_compiled_autograd(name):
    """The ops' backward nodes under compiled autograd: captured, not run eagerly, and equal to eager."""
    from torch._dynamo.utils import counters

    fn, channels = OPS[name]
    x = _input(2, channels, 9, 7, channels_last=False, seed=0).requires_grad_()
    leaves = [x] + list(W.values())

    def step():
        fn(x).square().sum().backward()
        grads = [None if t.grad is None else t.grad.clone() for t in leaves]
        for t in leaves:
            t.grad = None
        return grads

    eager = step()
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(compiled_autograd=True):
        compiled = torch.compile(step, backend="aot_eager")()
    assert counters["compiled_autograd"]["captures"] >= 1
    for g, g_ref in zip(compiled, eager):
        assert (g is None) == (g_ref is None)
        if g is not None:
            assert_close_to(g, g_ref.double(), torch.float32, f"{name} gradient")
