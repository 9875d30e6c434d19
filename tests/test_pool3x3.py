"""so.max_pool3x3 / so.avg_pool3x3 (native CPU kernel, torch.ops.shufflenet_ops.pool3x3)
against two oracles: the padded window taken apart with Tensor.unfold (independent of
PyTorch's pooling kernels) and so.reference (F.max_pool2d / F.avg_pool2d), whose autograd
gives the expected gradients. Edge shapes, both memory formats, both strides, every vector
tail, NaN, opcheck, gradcheck and bad input through the public functions and the registered op."""

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from tests.utils import assert_close_to, random_activation

OP = torch.ops.shufflenet_ops.pool3x3
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
KINDS = {"max": (so.max_pool3x3, so.reference.max_pool3x3), "avg": (so.avg_pool3x3, so.reference.avg_pool3x3)}
# (N, C, H, W): 1x1 and 2x2 images, odd and even sizes, widths and channel counts
# around the vector widths, and an empty batch.
SHAPES = [
    (1, 3, 1, 1),
    (2, 5, 2, 2),
    (2, 4, 7, 7),
    (1, 6, 8, 8),
    (2, 3, 9, 13),
    (1, 1, 5, 40),
    (1, 21, 6, 17),
    (1, 24, 14, 14),
    (0, 4, 5, 5),
]


def window_oracle(x, stride, kind):
    """The 3x3 windows of x padded by one (-inf for max, never winning; 0 for the average,
    counted), reduced with amax or sum / 9: no pooling kernel involved."""
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf") if kind == "max" else 0.0)
    windows = padded.unfold(2, 3, stride).unfold(3, 3, stride)
    return windows.amax(dim=(-2, -1)) if kind == "max" else windows.sum(dim=(-2, -1)) / 9


def check_against_oracles(x, stride, kind, make_input=lambda x: x):
    """Output vs both oracles, gradient vs the reference's autograd in float64."""
    ours, reference = KINDS[kind]
    x = x.detach().requires_grad_(True)
    x_in = make_input(x)
    y = ours(x_in, stride)
    # The float64 oracles run on NCHW copies: the values are the same.
    x64 = x.detach().double().contiguous().requires_grad_(True)
    y64 = reference(make_input(x64), stride)
    assert y.shape == y64.shape and y.dtype == x.dtype
    assert_close_to(y, y64, x.dtype, "output vs reference")
    assert_close_to(y, window_oracle(make_input(x64.detach()), stride, kind), x.dtype, "output vs unfold oracle")
    if y.numel():
        assert y.is_contiguous(memory_format=suggest_memory_format(x_in))
    grad = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(grad.to(x.dtype))
    y64.backward(grad)
    assert_close_to(x.grad, x64.grad, x.dtype, "grad x")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_against_oracles(shape, kind, stride, channels_last, dtype):
    check_against_oracles(random_activation(shape, dtype, channels_last=channels_last), stride, kind)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_vector_tail(kind, stride, channels_last, dtype):
    # Every width (NCHW) or channel count (channels_last) from 1 to past two
    # 512-bit vectors of every dtype, so each ragged tail and each short row is met.
    ours = KINDS[kind][0]
    for size in range(1, 36):
        shape = (2, size, 3, 4) if channels_last else (2, 3, 3, size)
        x = random_activation(shape, dtype, channels_last=channels_last, rng=size)
        expected = window_oracle(x.double(), stride, kind)
        assert_close_to(ours(x, stride), expected, dtype, f"size {size}")


@pytest.mark.parametrize("shape", [(1, 24, 112, 112), (2, 240, 28, 28), (1, 480, 14, 14)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_shufflenet_shapes(shape, kind, channels_last):
    # Large enough to be split across threads and into row bands.
    x = random_activation(shape, torch.float32, channels_last=channels_last)
    for stride in (1, 2):
        assert_close_to(KINDS[kind][0](x, stride), window_oracle(x.double(), stride, kind), torch.float32, "output")


@pytest.mark.parametrize(
    "make_input",
    [lambda x: x[:, :, ::2, 1:], lambda x: x.transpose(2, 3), lambda x: x[..., 1:], lambda x: x[:, 1:]],
    ids=["strided-spatial", "transposed", "sliced-width", "sliced-channels"],
)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_non_contiguous_input(make_input, kind, stride, channels_last):
    x = random_activation((2, 7, 8, 21), torch.float32, channels_last=channels_last)
    check_against_oracles(x, stride, kind, make_input)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_max_propagates_nan_and_padding_never_wins(stride, channels_last, dtype):
    # All values negative, so a zero from the padding would show; NaNs on the
    # borders, in the middle and in the last columns (vector tails).
    x = -random_activation((2, 5, 9, 19), dtype).abs() - 1
    gen = torch.Generator().manual_seed(2)
    x.view(-1)[torch.randint(0, x.numel(), (12,), generator=gen)] = float("nan")
    x[0, 0, 0, 0] = x[0, 1, -1, -1] = x[1, 2, 4, 18] = x[1, 3, 8, 0] = float("nan")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = so.max_pool3x3(x, stride)
    expected = F.max_pool2d(x.double(), 3, stride, 1)
    assert torch.equal(y.isnan(), expected.isnan())
    assert expected.isnan().any() and not expected.isnan().all()
    assert_close_to(y.nan_to_num(0.0), expected.nan_to_num(0.0), dtype, "output")
    assert (y.nan_to_num(-1.0) < 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_infinities(kind, channels_last):
    x = random_activation((1, 3, 6, 7), torch.float32)
    x[0, 0] = float("-inf")  # a plane of -inf: max is -inf, not the padding's value
    x[0, 1, 2, 3] = float("inf")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours, reference = KINDS[kind]
    for stride in (1, 2):
        torch.testing.assert_close(ours(x, stride), reference(x, stride), atol=1e-6, rtol=1e-6)


def test_empty_channels_and_images():
    # F.max_pool2d refuses these; the op returns the empty result and an empty gradient.
    for shape, out in [((1, 0, 5, 5), (1, 0, 3, 3)), ((2, 3, 0, 4), (2, 3, 0, 2))]:
        x = torch.randn(shape, requires_grad=True)
        for ours in (so.max_pool3x3, so.avg_pool3x3):
            y = ours(x, 2)
            assert y.shape == out
            y.sum().backward()
            assert x.grad.shape == x.shape


def opcheck_samples():
    for stride in (1, 2):
        for average in (False, True):
            x = random_activation((2, 5, 6, 7), torch.float32, rng=stride).requires_grad_()
            yield (x, stride, average)
            yield (x.detach().to(memory_format=torch.channels_last).requires_grad_(), stride, average)
            yield (x.detach()[..., 1:].requires_grad_(), stride, average)


@pytest.mark.parametrize("args", list(opcheck_samples()))
def test_opcheck(args):
    torch.library.opcheck(OP, args)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradcheck(kind, stride, channels_last):
    x = random_activation((2, 3, 5, 6), torch.float64, channels_last=channels_last, rng=3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: KINDS[kind][0](x, stride), (x,))
    # Second derivatives too: the backward runs on differentiable ATen ops.
    assert torch.autograd.gradgradcheck(lambda x: KINDS[kind][0](x, stride), (x,))


def test_no_gradient_requested():
    x = random_activation((1, 2, 5, 5), torch.float32)
    for ours in (so.max_pool3x3, so.avg_pool3x3):
        assert not ours(x, 2).requires_grad


# (x, stride, exception type, message pattern)
BAD_CASES = {
    "x-not-4d": (torch.randn(6, 5, 5), 2, ValueError, r"pool3x3: expected x to be a 4-D tensor"),
    "x-5d": (torch.randn(1, 2, 3, 5, 5), 2, ValueError, r"pool3x3: expected x to be a 4-D tensor"),
    "integer-x": (torch.ones(2, 3, 5, 5, dtype=torch.int32), 2, TypeError,
                  r"pool3x3: expected x to be a floating-point tensor"),
    "stride-zero": (torch.randn(2, 3, 5, 5), 0, ValueError, r"stride to be 1 or 2, got 0"),
    "stride-three": (torch.randn(2, 3, 5, 5), 3, ValueError, r"stride to be 1 or 2, got 3"),
    "stride-negative": (torch.randn(2, 3, 5, 5), -1, ValueError, r"stride to be 1 or 2, got -1"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("entry", ["max_pool3x3", "avg_pool3x3", "max_pool3x3-reference", "avg_pool3x3-reference",
                                   "registered"])
def test_bad_input(case, entry, monkeypatch):
    x, stride, error, pattern = BAD_CASES[case]
    function, _, path = entry.partition("-")
    if path == "reference":  # as on a device without a native kernel
        monkeypatch.setattr(so.functional, "_POOL_NATIVE_DEVICES", frozenset())
    with pytest.raises(error, match=pattern):
        if entry == "registered":
            OP(x, stride, False)
        else:
            getattr(so, function)(x, stride)


@pytest.mark.parametrize("entry", ["max_pool3x3", "registered"])
def test_device_without_a_kernel(entry):
    # A sparse CPU tensor dispatches to a backend the op has no kernel for.
    x = torch.randn(1, 2, 4, 4).to_sparse()
    with pytest.raises(NotImplementedError, match=r"shufflenet_ops::pool3x3.*SparseCPU"):
        OP(x, 2, False) if entry == "registered" else so.max_pool3x3(x, 2)


@pytest.mark.parametrize("average", [False, True])
def test_floating_dtype_no_cpu_operator_computes_is_named(average):
    # float16 runs PyTorch's own pooling inside the op (tests/test_dtypes.py); float8 has none.
    with pytest.raises(TypeError, match=r"dtype Float8_e4m3fn is computed neither by this kernel nor by PyTorch's "
                                        r"own cpu operators .*; convert the tensors to float32"):
        OP(torch.zeros(1, 4, 3, 3, dtype=torch.float8_e4m3fn), 1, average)


@pytest.mark.parametrize("stride", [2.0, True, "1"])
def test_python_stride_type(stride):
    with pytest.raises(TypeError, match=r"stride to be an int"):
        so.avg_pool3x3(torch.randn(1, 2, 3, 3), stride)
