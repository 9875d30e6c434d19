"""The native CUDA backend (csrc/cuda) against the reference: forward and every
gradient for each dtype, layout and shuffle placement over edge shapes, 64-bit
indexing, deterministic reductions, bad input, opcheck and torch.compile.
Skipped where no CUDA device is present."""

from __future__ import annotations

import os

import pytest
import torch
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from shufflenet_ops.ops import NATIVE
from tests.utils import assert_close_to, conv_inputs, float64_leaves

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

DEVICE = "cuda"
OPS = torch.ops.shufflenet_ops
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (n, c_in, c_out, h, w, groups, input_shuffle, output_shuffle): pixel counts off
# the 64-column tile, depths over one 16/32 step, groups over one 64-row tile,
# groups = channels, a ShuffleNet stage-4 layer, and an empty batch.
SHAPES = [
    (2, 12, 6, 5, 7, 3, 4, 2),
    (3, 96, 132, 9, 9, 1, 8, 4),
    (1, 24, 48, 1, 70, 6, 3, 12),
    (2, 6, 6, 4, 4, 6, 2, 3),
    (4, 240, 60, 7, 7, 3, 3, 3),
    (2, 64, 200, 3, 11, 2, 16, 5),
    (0, 12, 6, 3, 3, 3, 3, 2),
]
PLACEMENTS = ["none", "input", "output", "both"]


def kernels_registered() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(NATIVE.qualname("pointwise_group_conv"), "CUDA")


def test_cuda_kernels_registered():
    if os.environ.get("SHUFFLENET_OPS_SKIP_CUDA") == "1":
        pytest.skip("built with SHUFFLENET_OPS_SKIP_CUDA=1")
    for name in ("channel_shuffle", "pointwise_group_conv", "pointwise_group_conv_grad_input",
                 "pointwise_group_conv_grad_weight", "pointwise_group_conv_grad_bias"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(NATIVE.qualname(name), "CUDA"), name
    assert "native" in so.available_backends("cuda")
    assert so.backends.select("auto", torch.device(DEVICE)).name == "native"


needs_kernels = pytest.mark.skipif(torch.cuda.is_available() and not kernels_registered(),
                                   reason="extension built without the CUDA kernels")


def shuffles(shape, placement):
    *_, input_shuffle, output_shuffle = shape
    return (input_shuffle if placement in ("input", "both") else None,
            output_shuffle if placement in ("output", "both") else None)


def run_native(x, w, b, groups, input_shuffle, output_shuffle, relu):
    return so.pointwise_group_conv(x, w, b, groups, input_shuffle=input_shuffle, output_shuffle=output_shuffle,
                                   relu=relu, backend="native")


@needs_kernels
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients(shape, dtype, channels_last, placement, relu):
    n, c_in, c_out, h, w_, groups, *_ = shape
    input_shuffle, output_shuffle = shuffles(shape, placement)
    x, w, b = conv_inputs(n, c_in, c_out, h, w_, groups, dtype, channels_last=channels_last, device=DEVICE,
                          seed=SHAPES.index(shape) * len(PLACEMENTS) + PLACEMENTS.index(placement))
    y = run_native(x, w, b, groups, input_shuffle, output_shuffle, relu)
    assert y.dtype == dtype and y.device == x.device and y.shape == (n, c_out, h, w_)
    assert y.is_contiguous(memory_format=suggest_memory_format(x))

    x64, w64, b64 = float64_leaves(x, w, b)
    expected = so.reference.pointwise_group_conv(x64, w64, b64, groups, input_shuffle=input_shuffle,
                                                 output_shuffle=output_shuffle, relu=relu)
    assert_close_to(y, expected, dtype, "forward")

    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    grad_out = grad_out.to(DEVICE, dtype).contiguous(memory_format=suggest_memory_format(y))
    grads = torch.autograd.grad(y, (x, w, b), grad_out)
    # The ReLU mask is the tested output's: compare the backward ops, not the
    # rounding of outputs near zero.
    masked = grad_out.double() * (y > 0) if relu else grad_out.double()
    linear = so.reference.pointwise_group_conv(x64, w64, b64, groups, input_shuffle=input_shuffle,
                                               output_shuffle=output_shuffle)
    expected_grads = torch.autograd.grad(linear, (x64, w64, b64), masked)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, expected_grads):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close_to(got, want, dtype, name)
    assert grads[0].is_contiguous(memory_format=suggest_memory_format(x))


@needs_kernels
@pytest.mark.parametrize("residual_channels_last", [False, True], ids=["residual_nchw", "residual_channels_last"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual(dtype, channels_last, residual_channels_last):
    n, c_in, c_out, h, w_, groups, input_shuffle, output_shuffle = SHAPES[0]
    x, w, b = conv_inputs(n, c_in, c_out, h, w_, groups, dtype, channels_last=channels_last, device=DEVICE, seed=11)
    gen = torch.Generator().manual_seed(12)
    residual = torch.randn(n, c_out, h, w_, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    if residual_channels_last:
        residual = residual.contiguous(memory_format=torch.channels_last)
    residual.requires_grad_()
    kwargs = dict(input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=True)
    y = so.pointwise_group_conv(x, w, b, groups, residual=residual, backend="native", **kwargs)
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    x64, w64, b64, r64 = float64_leaves(x, w, b, residual)
    assert_close_to(y, so.reference.pointwise_group_conv(x64, w64, b64, groups, residual=r64, **kwargs), dtype,
                    "forward")

    grad_out = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEVICE, dtype)
    grads = torch.autograd.grad(y, (x, w, b, residual), grad_out)
    # The ReLU mask is the tested output's: compare the backward, not the rounding of outputs near zero.
    masked = grad_out.double() * (y > 0)
    linear = so.reference.pointwise_group_conv(x64, w64, b64, groups, residual=r64,
                                               **kwargs | {"relu": False})
    expected = torch.autograd.grad(linear, (x64, w64, b64, r64), masked)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias", "grad_residual"), grads, expected):
        assert_close_to(got, want, dtype, name)


@needs_kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_non_dense_inputs_and_2d_weight(dtype):
    x, w, b = conv_inputs(2, 12, 9, 6, 9, 3, dtype, device=DEVICE)
    x_view = x.detach()[:, :, 1:, ::2]  # strided, neither NCHW- nor channels_last-dense
    w2d = w.detach()[:, :, 0, 0]
    y = run_native(x_view, w2d, b.detach(), 3, 2, 3, True)
    x64, w64, b64 = float64_leaves(x_view, w2d, b)
    expected = so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=2, output_shuffle=3, relu=True)
    assert_close_to(y, expected, dtype)


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reductions_are_deterministic(dtype, channels_last):
    # N * H * W spans many reduction slices.
    x, w, b = conv_inputs(8, 48, 96, 31, 33, 4, dtype, channels_last=channels_last, device=DEVICE)
    grad = torch.randn(8, 96, 31, 33, device=DEVICE, dtype=dtype)
    if channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    xd = x.detach()
    first = (OPS.pointwise_group_conv_grad_weight(grad, xd, 4, 2, 3), OPS.pointwise_group_conv_grad_bias(grad, 3))
    for _ in range(3):
        again = (OPS.pointwise_group_conv_grad_weight(grad, xd, 4, 2, 3), OPS.pointwise_group_conv_grad_bias(grad, 3))
        assert all(torch.equal(a, b) for a, b in zip(first, again))
    x64, w64, b64 = float64_leaves(x, w, b)
    linear = so.reference.pointwise_group_conv(x64, w64, b64, 4, input_shuffle=2, output_shuffle=3)
    expected_w, expected_b = torch.autograd.grad(linear, (w64, b64), grad.double())
    assert_close_to(first[0], expected_w, dtype, "grad_weight")
    assert_close_to(first[1], expected_b, dtype, "grad_bias")


CHANNEL_SHUFFLE_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.uint8,
                          torch.bool, torch.complex128]


def shuffle_inputs(dtype):
    gen = torch.Generator().manual_seed(0)

    def make(*shape):
        t = torch.randn(*shape, generator=gen, dtype=torch.float64) * 100
        if dtype == torch.bool:
            return (t > 0).to(DEVICE)
        if dtype == torch.complex128:
            return torch.complex(t, -t).to(DEVICE)
        return t.to(DEVICE, dtype)

    yield "nchw_28x28", make(2, 240, 28, 28), 3
    yield "nchw_7x7", make(3, 96, 7, 7), 8
    yield "channels_last", make(2, 60, 14, 14).contiguous(memory_format=torch.channels_last), 3
    yield "channels_last_odd", make(3, 21, 5, 3).contiguous(memory_format=torch.channels_last), 7
    yield "3d", make(4, 12, 17), 4
    yield "5d_channels_last", make(2, 8, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d), 2
    yield "groups_equal_channels", make(2, 16, 3, 3), 16
    yield "one_group", make(2, 16, 3, 3), 1
    yield "strided_view", make(2, 24, 9, 10)[:, :, 1:, ::3], 6
    flat = make(2 * 24 * 8 * 8 + 1)
    yield "misaligned_storage", flat[1:].view(2, 24, 8, 8), 4
    yield "empty_batch", make(0, 24, 8, 8), 4


@needs_kernels
@pytest.mark.parametrize("dtype", CHANNEL_SHUFFLE_DTYPES, ids=str)
def test_channel_shuffle(dtype):
    for name, x, groups in shuffle_inputs(dtype):
        y = so.channel_shuffle(x, groups, backend="native")
        expected = so.reference.channel_shuffle(x, groups)
        assert y.dtype == x.dtype and y.shape == x.shape, name
        assert y.is_contiguous(memory_format=suggest_memory_format(x)), name
        assert torch.equal(y, expected), name
        inverse = so.channel_shuffle(y, x.shape[1] // groups, backend="native")
        assert torch.equal(inverse, x), name


@needs_kernels
def test_channel_shuffle_gradient():
    x = torch.randn(2, 24, 5, 5, device=DEVICE, requires_grad=True)
    y = so.channel_shuffle(x, 3, backend="native")
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    xr = x.detach().requires_grad_()
    (expected,) = torch.autograd.grad(so.reference.channel_shuffle(xr, 3), xr, grad)
    assert torch.equal(gx, expected)


def large_enough(gib: float) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_properties(0).total_memory >= gib * 2**30


@needs_kernels
@pytest.mark.skipif(not large_enough(40), reason="needs a GPU with at least 40 GiB")
def test_64bit_indexing():
    # 2.4e9 elements per activation: offsets of the last image exceed 2^31.
    n, c, h, w = 3, 48, 2048, 8192
    x = torch.randn(n, c, h, w, device=DEVICE, dtype=torch.float16)
    weight = torch.randn(c, c // 3, 1, 1, device=DEVICE, dtype=torch.float16) / 4
    y = so.pointwise_group_conv(x, weight, None, 3, input_shuffle=2, output_shuffle=3, backend="native")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        expected = so.reference.pointwise_group_conv(x[-1:].float(), weight.float(), None, 3, input_shuffle=2,
                                                     output_shuffle=3)
    assert_close_to(y[-1:], expected.double(), torch.float16, "last image")
    del y, expected
    shuffled = so.channel_shuffle(x, 3, backend="native")
    assert torch.equal(shuffled[-1], so.reference.channel_shuffle(x[-1:], 3)[0])


@needs_kernels
def test_bad_input_through_torch_ops():
    x = torch.randn(2, 12, 4, 4, device=DEVICE)
    w = torch.randn(6, 4, 1, 1, device=DEVICE)
    with pytest.raises(ValueError, match="weight"):
        OPS.pointwise_group_conv(x, w.cpu(), None, 3, 1, 1, False)
    with pytest.raises(ValueError, match="groups"):
        OPS.pointwise_group_conv(x, torch.randn(6, 3, 1, 1, device=DEVICE), None, 5, 1, 1, False)
    with pytest.raises(ValueError, match="input_shuffle"):
        OPS.pointwise_group_conv(x, w, None, 3, 5, 1, False)
    with pytest.raises(ValueError, match="bias"):
        OPS.pointwise_group_conv(x, w, torch.randn(5, device=DEVICE), 3, 1, 1, False)
    with pytest.raises(TypeError, match="x"):
        OPS.pointwise_group_conv(x.int(), w.int(), None, 3, 1, 1, False)
    with pytest.raises(ValueError, match="groups"):
        OPS.channel_shuffle(x, 5)
    with pytest.raises(ValueError, match="grad_out"):
        OPS.pointwise_group_conv_grad_input(torch.randn(2, 7, 4, 4, device=DEVICE), w, 3, 1, 1)
    with pytest.raises(ValueError, match="agree"):
        OPS.pointwise_group_conv_grad_weight(torch.randn(2, 6, 4, 5, device=DEVICE), x, 3, 1, 1)
    with pytest.raises(ValueError, match="output_shuffle"):
        OPS.pointwise_group_conv_grad_bias(torch.randn(2, 6, 4, 4, device=DEVICE), 4)


@needs_kernels
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck(dtype, channels_last):
    x, w, b = conv_inputs(2, 12, 6, 3, 5, 3, dtype, channels_last=channels_last, device=DEVICE)
    for args in [(x, w, b, 3, 2, 3, True), (x, w, None, 3, 1, 1, False), (x, w, b, 3, 4, 1, False)]:
        torch.library.opcheck(OPS.pointwise_group_conv, args)
    torch.library.opcheck(OPS.channel_shuffle, (x, 4))
    grad = torch.randn(2, 6, 3, 5, device=DEVICE, dtype=dtype)
    if channels_last:
        grad = grad.contiguous(memory_format=torch.channels_last)
    xd, wd = x.detach(), w.detach()
    torch.library.opcheck(OPS.pointwise_group_conv_grad_input, (grad, wd, 3, 2, 3))
    torch.library.opcheck(OPS.pointwise_group_conv_grad_weight, (grad, xd, 3, 2, 3))
    torch.library.opcheck(OPS.pointwise_group_conv_grad_bias, (grad, 3))


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_torch_compile(dtype):
    def block(x, w, b):
        y = so.pointwise_group_conv(x, w, b, 3, input_shuffle=2, output_shuffle=3, relu=True, backend="native")
        return so.channel_shuffle(y, 2, backend="native")

    x, w, b = conv_inputs(4, 24, 12, 14, 14, 3, dtype, channels_last=True, device=DEVICE)
    compiled = torch.compile(block, fullgraph=True)
    y = compiled(x, w, b)
    x64, w64, b64 = float64_leaves(x, w, b)
    reference = so.reference.channel_shuffle(
        so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=2, output_shuffle=3, relu=True), 2)
    assert_close_to(y, reference, dtype, "compiled forward")
    # Gradients through the compiled graph equal those of the eager ops.
    grad = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), grad)
    eager_grads = torch.autograd.grad(block(x, w, b), (x, w, b), grad)
    for name, got, want in zip(("grad_x", "grad_weight", "grad_bias"), grads, eager_grads):
        assert_close_to(got, want.double(), dtype, f"compiled {name}")
