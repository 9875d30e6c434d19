"""so.stem_conv3x3_maxpool (native CPU kernel) against so.reference.stem_conv3x3_maxpool
(F.conv2d, F.relu, F.max_pool2d): outputs and the gradients of x, weight and bias over
edge shapes, both memory formats, with and without bias; NaN, opcheck, gradcheck,
torch.compile and bad input through the public function and the registered op."""

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch.utils.flop_counter import FlopCounterMode

import shufflenet_ops as so
from tests.utils import BAD_INPUT_ENTRIES, assert_close_to, expect_rejected, random_activation

OP = torch.ops.shufflenet_ops.stem_conv3x3_maxpool
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# (N, C_in, C_out, H, W): odd and even sizes down to 1x1, convolution widths
# below, at and above the vector width, output channels that are not a
# multiple of the register tile (5, 17), an empty batch.
SHAPES = [
    (1, 3, 24, 1, 1),
    (2, 3, 5, 2, 3),
    (1, 3, 8, 7, 7),
    (2, 4, 17, 9, 13),
    (1, 1, 3, 5, 40),
    (1, 3, 24, 35, 66),
    (2, 2, 6, 6, 1),
    (0, 3, 4, 5, 5),
]


def stem_inputs(n, c_in, c_out, h, w, dtype, *, bias=True, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = random_activation((n, c_in, h, w), dtype, rng=gen, channels_last=channels_last)
    weight = (torch.randn(c_out, c_in, 3, 3, generator=gen, dtype=torch.float64) / (3 * c_in**0.5)).to(dtype)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    return tuple(None if t is None else t.requires_grad_(True) for t in (x, weight, b))


def leaves_like(*tensors, dtype=None):
    return tuple(None if t is None else t.detach().to(dtype or t.dtype).requires_grad_(True) for t in tensors)


def check_against_reference(shape, dtype, *, bias, channels_last, make_input=lambda x: x):
    x, weight, b = stem_inputs(*shape, dtype, bias=bias, channels_last=channels_last)
    x_in = make_input(x)
    y = so.stem_conv3x3_maxpool(x_in, weight, b)

    x64, w64, b64 = leaves_like(x, weight, b, dtype=torch.float64)
    y64 = so.reference.stem_conv3x3_maxpool(make_input(x64), w64, b64)
    assert y.shape == y64.shape and y.dtype == dtype
    assert_close_to(y, y64, dtype, "output")
    if y.numel():
        assert y.is_contiguous(memory_format=suggest_memory_format(x_in))

    # The gradient follows each window's maximum: against the reference in the
    # precision the backward computes in (float32 for bfloat16), so that both pick
    # the same element where rounding makes two nearly equal.
    xr, wr, br = leaves_like(x, weight, b, dtype=torch.float32 if dtype == torch.bfloat16 else dtype)
    yr = so.reference.stem_conv3x3_maxpool(make_input(xr), wr, br)
    grad = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(dtype)
    y.backward(grad)
    yr.backward(grad.to(yr.dtype))
    assert_close_to(x.grad, xr.grad.double(), dtype, "grad x")
    assert_close_to(weight.grad, wr.grad.double(), dtype, "grad weight")
    if bias:
        assert_close_to(b.grad, br.grad.double(), dtype, "grad bias")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_against_reference(shape, channels_last, dtype):
    check_against_reference(shape, dtype, bias=True, channels_last=channels_last)


@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[3]], ids=lambda s: "x".join(map(str, s)))
def test_without_bias(shape):
    check_against_reference(shape, torch.float32, bias=False, channels_last=False)


@pytest.mark.parametrize("batch", [1, 3])
def test_shufflenet_stem(batch):
    # 224x224 -> 112x112 -> 56x56, 3 -> 24 channels: split across threads and row bands.
    check_against_reference((batch, 3, 24, 224, 224), torch.float32, bias=True, channels_last=False)


@pytest.mark.parametrize(
    "make_input",
    [lambda x: x[:, :, ::2, 1:], lambda x: x.transpose(2, 3), lambda x: x[..., 1:]],
    ids=["strided-spatial", "transposed", "sliced-width"],
)
def test_non_contiguous_input(make_input):
    check_against_reference((2, 3, 6, 11, 12), torch.float32, bias=True, channels_last=False, make_input=make_input)


def test_nan_propagates_as_in_the_reference():
    x, weight, b = (t.detach() for t in stem_inputs(1, 3, 8, 12, 12, torch.float32))
    x[0, 1, 5, 6] = float("nan")
    expected = so.reference.stem_conv3x3_maxpool(x, weight, b)
    assert expected.isnan().any()
    torch.testing.assert_close(so.stem_conv3x3_maxpool(x, weight, b), expected, equal_nan=True)


def test_only_requested_gradients_are_computed():
    x, weight, b = stem_inputs(2, 3, 4, 6, 6, torch.float32)
    x.requires_grad_(False)
    so.stem_conv3x3_maxpool(x, weight, b).sum().backward()
    assert x.grad is None and weight.grad is not None and b.grad is not None


def opcheck_samples():
    x, w, b = stem_inputs(2, 3, 5, 9, 8, torch.float32)
    yield (x, w, b)
    yield (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, None)
    yield (x.detach()[..., 1:].requires_grad_(), w, b)


@pytest.mark.parametrize("args", list(opcheck_samples()))
def test_opcheck(args):
    torch.library.opcheck(OP, args)


@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck(bias):
    x, w, b = stem_inputs(2, 2, 3, 7, 6, torch.float64, bias=bias, seed=3)
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(lambda *a: so.stem_conv3x3_maxpool(*a), inputs)
    # Second derivatives too: the backward runs on differentiable ATen ops.
    assert torch.autograd.gradgradcheck(lambda *a: so.stem_conv3x3_maxpool(*a), inputs)


def test_compiles():
    x, w, b = stem_inputs(1, 3, 8, 16, 16, torch.float32)
    fn = torch.compile(so.stem_conv3x3_maxpool, fullgraph=True)
    with torch.no_grad():
        assert_close_to(fn(x, w, b), so.reference.stem_conv3x3_maxpool(x, w, b), torch.float32, "output")


def test_flops_count_like_the_stock_convolution():
    x, w, b = (t.detach() for t in stem_inputs(2, 3, 8, 15, 12, torch.float32))

    def count(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    stock = count(lambda: F.max_pool2d(F.relu(F.conv2d(x, w, b, 2, 1)), 3, 2, 1))
    assert count(lambda: so.stem_conv3x3_maxpool(x, w, b)) == stock > 0


def bad_args(**overrides):
    args = dict(x=torch.randn(2, 3, 5, 5), weight=torch.randn(6, 3, 3, 3), bias=torch.randn(6))
    args.update(overrides)
    return args


# (overrides, exception type, message pattern)
BAD_CASES = {
    "x-not-4d": (dict(x=torch.randn(3, 5, 5)), ValueError, r"x to be a 4-D tensor"),
    "x-empty-height": (dict(x=torch.randn(2, 3, 0, 5)), ValueError, r"x to have a positive height and width"),
    "x-empty-width": (dict(x=torch.randn(2, 3, 5, 0)), ValueError, r"x to have a positive height and width"),
    "integer-x": (
        dict(x=torch.ones(2, 3, 5, 5, dtype=torch.int32), weight=torch.ones(6, 3, 3, 3, dtype=torch.int32), bias=None),
        TypeError,
        r"x to be a floating-point tensor",
    ),
    "weight-in-channels": (dict(weight=torch.randn(6, 4, 3, 3)), ValueError,
                           r"weight of shape \[C_out, C_in, 3, 3\] with C_in = 3"),
    "weight-kernel-5x5": (dict(weight=torch.randn(6, 3, 5, 5)), ValueError, r"weight of shape \[C_out, C_in, 3, 3\]"),
    "weight-2d": (dict(weight=torch.randn(6, 27)), ValueError, r"weight of shape \[C_out, C_in, 3, 3\]"),
    "weight-dtype": (dict(weight=torch.randn(6, 3, 3, 3, dtype=torch.float64)), TypeError,
                     r"weight to have the same dtype as x"),
    "weight-device": (dict(weight=torch.randn(6, 3, 3, 3, device="meta")), ValueError,
                      r"weight to be on the same device as x"),
    "bias-shape": (dict(bias=torch.randn(5)), ValueError, r"bias of shape \[C_out\] = \[6\]"),
    "bias-2d": (dict(bias=torch.randn(6, 1)), ValueError, r"bias of shape \[C_out\] = \[6\]"),
    "bias-dtype": (dict(bias=torch.randn(6, dtype=torch.bfloat16)), TypeError, r"bias to have the same dtype as x"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("entry", BAD_INPUT_ENTRIES)
def test_bad_input(case, entry, monkeypatch):
    overrides, error, pattern = BAD_CASES[case]
    a = bad_args(**overrides)
    expect_rejected(entry, monkeypatch, "_STEM_NATIVE_DEVICES", error, pattern,
                    public=lambda: so.stem_conv3x3_maxpool(a["x"], a["weight"], a["bias"]),
                    registered=lambda: OP(a["x"], a["weight"], a["bias"]))


def test_floating_dtype_no_cpu_operator_computes_is_named():
    # float16 runs PyTorch's own convolution and pooling inside the op (tests/test_dtypes.py); float8 has none.
    x, w = torch.zeros(1, 3, 5, 5, dtype=torch.float8_e4m3fn), torch.zeros(4, 3, 3, 3, dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"dtype Float8_e4m3fn is computed neither by this kernel nor by PyTorch's "
                                        r"own cpu operators .*; convert the tensors to float32"):
        OP(x, w, None)


@pytest.mark.parametrize("value", [2.0, "x", None])
def test_python_argument_types(value):
    with pytest.raises(TypeError, match=r"x to be a torch.Tensor"):
        so.stem_conv3x3_maxpool(value, torch.randn(4, 3, 3, 3))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_signed_zeros_and_nan(channels_last, dtype):
    """Output channels with zero weights and a bias of -0.0 over negative inputs (sums of -0.0
    products), and a NaN: the ReLU and the pooling keep the reference's NaN and the sign of
    every zero, +0.0 whatever the signs of its terms."""
    gen = torch.Generator().manual_seed(12)
    x = -(torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    x[0, 1, 4, 4] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = (torch.randn(6, 3, 3, 3, generator=gen, dtype=torch.float64) / 5).to(dtype)
    weight[::2] = 0
    bias = torch.randn(6, generator=gen, dtype=torch.float64).to(dtype)
    bias[::2] = -0.0
    y = OP(x, weight, bias)
    # On channels_last input: ATen's NCHW float64 convolution starts its sums at the bias and
    # so leaves -0.0, its other kernels (like ours) start at +0.0.
    expected = so.reference.stem_conv3x3_maxpool(x.contiguous(memory_format=torch.channels_last), weight, bias)
    assert expected.isnan().any()
    assert torch.equal(y.isnan(), expected.isnan())
    zeros = expected == 0
    assert zeros.any() and torch.equal(y[zeros].signbit(), expected[zeros].signbit())
    assert_close_to(y.nan_to_num(), expected.double().nan_to_num(), dtype, "output")
