"""float16 on CPU: every registered op computes it (the stock ATen computation inside the
op's CPU kernel, where the vectorized kernels lack it), against so.reference in float64,
forward and gradients, through the public functions and the registered ops that fused
models call. A floating dtype that stock PyTorch cannot compute on CPU either (float8) is
rejected with an error that names it and what to do."""

import pytest
import torch
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from tests.test_depthwise_conv3x3 import check_against_reference as check_depthwise
from tests.test_pointwise_group_conv import check_against_reference as check_conv
from tests.test_pool3x3 import check_against_oracles as check_pool
from tests.test_stem_conv3x3_maxpool import stem_inputs
from tests.utils import assert_close_to, random_activation

OPS = torch.ops.shufflenet_ops
DTYPE = torch.float16
FLOAT8 = [torch.float8_e4m3fn, torch.float8_e5m2]
UNCOMPUTABLE = r"dtype Float8_\w+ is computed neither by this kernel nor by PyTorch's own cpu operators .*" \
               r"convert the tensors to float32"


# (N, C_in, C_out, H, W, groups)
CONV_SHAPES = [
    (2, 24, 12, 5, 7, 3),
    (1, 60, 240, 7, 7, 3),
    (2, 16, 16, 1, 1, 16),
    (0, 12, 12, 4, 4, 3),
]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", ["none", "both"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_pointwise_group_conv(shape, placement, channels_last, residual):
    """Output and the gradients of x, weight, bias (and the residual) through the backward ops."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    check_conv(*shape, DTYPE, placement=placement, bias=True, relu=True, channels_last=channels_last,
               residual_format=layout if residual else None)


@pytest.mark.parametrize("shuffles", [(1, 1), (3, 2), (2, 6)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_backward_ops_called_directly(shuffles, channels_last):
    """Each backward op against the float64 reference's autograd (the ReLU-free conv)."""
    gen = torch.Generator().manual_seed(3)
    x = random_activation((2, 12, 3, 5), DTYPE, rng=gen, channels_last=channels_last)
    w = (torch.randn(6, 4, 1, 1, generator=gen, dtype=torch.float64) / 2).to(DTYPE)
    grad = random_activation((2, 6, 3, 5), DTYPE, rng=gen, channels_last=channels_last)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    y64 = so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=shuffles[0], output_shuffle=shuffles[1])
    y64.backward(grad.double())
    gx = OPS.pointwise_group_conv_grad_input(grad, w, 3, *shuffles)
    gw = OPS.pointwise_group_conv_grad_weight(grad, x, 3, *shuffles)
    gb = OPS.pointwise_group_conv_grad_bias(grad, shuffles[1])
    assert gx.dtype == gw.dtype == gb.dtype == DTYPE
    assert gx.is_contiguous(memory_format=suggest_memory_format(grad))
    assert_close_to(gx, x64.grad, DTYPE, "grad_input")
    assert_close_to(gw, w64.grad, DTYPE, "grad_weight")
    assert_close_to(gb, b64.grad, DTYPE, "grad_bias")


def test_empty_reduction():
    """C_in = 0 (an empty sum) in float16 too: the bias, plus the residual, then the ReLU."""
    x = torch.randn(2, 0, 3, 4, dtype=DTYPE)
    w = torch.randn(6, 0, 1, 1, dtype=DTYPE)
    b = torch.randn(6, dtype=DTYPE)
    residual = torch.randn(2, 6, 3, 4, dtype=DTYPE)
    y = OPS.pointwise_group_conv(x, w, b, 3, 1, 2, True, residual)
    expected = torch.relu(so.reference.channel_shuffle(b.reshape(1, 6, 1, 1).expand(2, 6, 3, 4), 2) + residual)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (0, 4, 5, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_depthwise_conv3x3(shape, stride, channels_last):
    check_depthwise(shape, DTYPE, stride=stride, bias=True, relu=True, channels_last=channels_last)


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 1, 1), (0, 4, 5, 5)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_pool3x3(kind, shape, stride, channels_last):
    check_pool(random_activation(shape, DTYPE, channels_last=channels_last), stride, kind)


@pytest.mark.parametrize("shape", [(2, 3, 8, 9, 11), (1, 3, 4, 1, 1), (0, 3, 4, 5, 5)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_stem_conv3x3_maxpool(shape, channels_last):
    x, weight, b = stem_inputs(*shape, DTYPE, channels_last=channels_last)
    y = OPS.stem_conv3x3_maxpool(x, weight, b)
    x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, weight, b))
    y64 = so.reference.stem_conv3x3_maxpool(x64, w64, b64)
    assert y.dtype == DTYPE and y.shape == y64.shape
    assert_close_to(y, y64, DTYPE, "output")
    if y.numel():
        assert y.is_contiguous(memory_format=suggest_memory_format(x))
    # The gradient follows each window's maximum; the backward computes in float32, and so
    # does this oracle, so that both pick the same element where float16 rounding ties two.
    x32, w32, b32 = (t.detach().float().requires_grad_(True) for t in (x, weight, b))
    y32 = so.reference.stem_conv3x3_maxpool(x32, w32, b32)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(DTYPE)
    y.backward(grad)
    y32.backward(grad.float())
    for name, ours, expected in [("x", x, x32), ("weight", weight, w32), ("bias", b, b32)]:
        assert ours.grad.dtype == DTYPE
        assert_close_to(ours.grad, expected.grad.double(), DTYPE, f"grad {name}")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_channel_shuffle(channels_last):
    x = random_activation((2, 12, 5, 7), DTYPE, channels_last=channels_last).requires_grad_()
    y = so.channel_shuffle(x, 3)
    assert torch.equal(y, torch.channel_shuffle(x.detach(), 3))
    grad = torch.randn(y.shape, dtype=DTYPE)
    y.backward(grad)
    assert torch.equal(x.grad, so.reference.channel_shuffle(grad, 4))


UNCOMPUTABLE_CALLS = {
    "pointwise_group_conv": lambda x: OPS.pointwise_group_conv(x, torch.zeros(4, 2, 1, 1, dtype=x.dtype), None,
                                                               2, 1, 1, True),
    "pointwise_group_conv_grad_input": lambda x: OPS.pointwise_group_conv_grad_input(
        x, torch.zeros(4, 2, 1, 1, dtype=x.dtype), 2, 1, 1),
    "pointwise_group_conv_grad_weight": lambda x: OPS.pointwise_group_conv_grad_weight(x, x, 2, 1, 1),
    "depthwise_conv3x3": lambda x: OPS.depthwise_conv3x3(x, torch.zeros(4, 1, 3, 3, dtype=x.dtype), None, 1, True),
    "pool3x3-max": lambda x: OPS.pool3x3(x, 2, False),
    "pool3x3-avg": lambda x: OPS.pool3x3(x, 2, True),
    "stem_conv3x3_maxpool": lambda x: OPS.stem_conv3x3_maxpool(x, torch.zeros(3, 4, 3, 3, dtype=x.dtype), None),
}


@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
@pytest.mark.parametrize("op", list(UNCOMPUTABLE_CALLS))
def test_dtype_stock_pytorch_cannot_compute_is_named(op, dtype):
    x = torch.zeros(2, 4, 5, 5, dtype=dtype)
    name = op.split("-")[0]
    with pytest.raises(TypeError, match=rf"^{name} \(CPU\): {UNCOMPUTABLE}"):
        UNCOMPUTABLE_CALLS[op](x)
    # It is the dtype, not the call: the same call in float16 computes.
    assert UNCOMPUTABLE_CALLS[op](x.to(DTYPE)).dtype == DTYPE


@pytest.mark.parametrize("dtype", FLOAT8, ids=str)
def test_copies_and_sums_of_any_dtype_still_run(dtype):
    """channel_shuffle copies bits (torch.channel_shuffle has no float8 kernel, the reference's
    reshape and transpose do) and grad_bias is a sum, which stock PyTorch runs in float8."""
    x = torch.randn(2, 4, 3, 3).to(dtype)
    expected = so.reference.channel_shuffle(x, 2)
    assert torch.equal(OPS.channel_shuffle(x, 2).view(torch.uint8), expected.view(torch.uint8))
    torch.testing.assert_close(OPS.pointwise_group_conv_grad_bias(x, 2).float(),
                               so.reference.channel_shuffle(x.float(), 2).sum((0, 2, 3)).to(dtype).float())
