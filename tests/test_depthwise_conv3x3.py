"""so.depthwise_conv3x3 (native CPU kernel) against so.reference.depthwise_conv3x3
(F.conv2d with groups=C): outputs and the gradients of x, weight and bias over
edge shapes, both memory formats, both strides, bias and ReLU; opcheck,
gradcheck and bad input through the public function and the registered op."""

import pytest
import torch
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from tests.test_pointwise_group_conv import assert_same_floats
from tests.utils import BAD_INPUT_ENTRIES, assert_close_to, expect_rejected, float64_leaves, random_activation

OP = torch.ops.shufflenet_ops.depthwise_conv3x3
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
# (N, C, H, W): odd sizes, widths below, at and above the vector width,
# channel counts that are not a multiple of the vector width (21), and planes
# that NCHW computes in several bands of rows (80x100).
SHAPES = [
    (1, 3, 1, 1),
    (2, 5, 2, 3),
    (2, 4, 7, 7),
    (1, 4, 9, 10),
    (1, 20, 14, 14),
    (2, 3, 9, 13),
    (1, 1, 5, 40),
    (1, 21, 6, 17),
    (1, 2, 80, 100),
    (0, 4, 5, 5),
]


def depthwise_inputs(n, c, h, w, dtype, *, bias=True, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = random_activation((n, c, h, w), dtype, rng=gen, channels_last=channels_last)
    weight = (torch.randn(c, 1, 3, 3, generator=gen, dtype=torch.float64) / 3).to(dtype)
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    return tuple(None if t is None else t.requires_grad_(True) for t in (x, weight, b))


def reference_leaves(x, weight, b):
    # The float64 oracle runs on NCHW copies: PyTorch's float64 channels_last
    # depthwise backward is orders of magnitude slower, and the values are the same.
    return float64_leaves(x.detach().contiguous(), weight, b)


def check_against_reference(shape, dtype, *, stride, bias, relu, channels_last, make_input=lambda x: x):
    x, weight, b = depthwise_inputs(*shape, dtype, bias=bias, channels_last=channels_last)
    x_in = make_input(x)
    y = so.depthwise_conv3x3(x_in, weight, b, stride, relu=relu)

    x64, w64, b64 = reference_leaves(x, weight, b)
    y64 = so.reference.depthwise_conv3x3(make_input(x64), w64, b64, stride, relu=relu)
    assert y.shape == y64.shape and y.dtype == dtype
    assert_close_to(y, y64, dtype, "output")
    if y.numel():
        assert y.is_contiguous(memory_format=suggest_memory_format(x_in))

    grad = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(grad.to(dtype))
    y64.backward(grad)
    assert_close_to(x.grad, x64.grad, dtype, "grad x")
    assert_close_to(weight.grad, w64.grad, dtype, "grad weight")
    if bias:
        assert_close_to(b.grad, b64.grad, dtype, "grad bias")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_against_reference(shape, stride, channels_last, dtype):
    check_against_reference(shape, dtype, stride=stride, bias=True, relu=True, channels_last=channels_last)


@pytest.mark.parametrize("bias,relu", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_bias_and_relu_options(bias, relu, stride, channels_last):
    check_against_reference((2, 6, 9, 13), torch.float32, stride=stride, bias=bias, relu=relu,
                            channels_last=channels_last)


@pytest.mark.parametrize("shape", [(1, 60, 28, 28), (1, 36, 56, 56), (2, 240, 7, 7)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_shufflenet_shapes(shape, stride, channels_last):
    # Large enough to be split across threads and into row bands.
    check_against_reference(shape, torch.float32, stride=stride, bias=True, relu=True, channels_last=channels_last)


@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (1, 2, 14, 13), (1, 2, 28, 28), (1, 1, 80, 100)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_nan_and_inf_stay_in_their_windows(shape, stride, channels_last):
    # At the first and last columns, and on the input rows where float32 NCHW bands of rows meet
    # at 80x100 (38 output rows a band at stride 1, 18 at stride 2, so input rows 35-39): a NaN or
    # inf reaches exactly the outputs whose window holds it, never a neighbouring row's edge.
    x, weight, b = (t.detach() for t in depthwise_inputs(*shape, torch.float32, channels_last=channels_last))
    h, w = shape[2:]
    for row, column, value in [(0, w - 1, float("nan")), (1, 0, float("inf")), (h // 2, w - 1, float("-inf")),
                               (35, w - 1, float("nan")), (36, 0, float("inf")), (38, 0, float("nan")),
                               (39, w - 1, float("nan")), (h - 1, 0, float("nan"))]:
        if row < h:
            x[:, :, row, column] = value
    y = so.depthwise_conv3x3(x, weight, b, stride)
    expected = so.reference.depthwise_conv3x3(x.double(), weight.double(), b.double(), stride)
    assert torch.equal(y.isnan(), expected.isnan())
    infinite = expected.isinf()
    assert torch.equal(y.isinf(), infinite) and torch.equal(y[infinite], expected[infinite].float())
    finite = expected.isfinite()
    assert_close_to(y[finite], expected[finite], torch.float32, "finite outputs")


@pytest.mark.parametrize(
    "make_input",
    [lambda x: x[:, :, ::2, 1:], lambda x: x.transpose(2, 3), lambda x: x[..., 1:], lambda x: x[:, 1:]],
    ids=["strided-spatial", "transposed", "sliced-width", "sliced-channels"],
)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_non_contiguous_input(make_input, stride, channels_last):
    x, weight, b = depthwise_inputs(2, 7, 8, 10, torch.float32, channels_last=channels_last)
    x_in = make_input(x)
    c = x_in.shape[1]  # a channel slice keeps the last c channels and their weights
    w_in, b_in = weight[-c:], b[-c:]
    y = so.depthwise_conv3x3(x_in, w_in, b_in, stride, relu=True)
    x64, w64, b64 = reference_leaves(x, weight, b)
    y64 = so.reference.depthwise_conv3x3(make_input(x64), w64[-c:], b64[-c:], stride, relu=True)
    assert_close_to(y, y64, torch.float32, "output")
    grad = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y.backward(grad.float())
    y64.backward(grad)
    for name, got, want in [("x", x.grad, x64.grad), ("weight", weight.grad, w64.grad), ("bias", b.grad, b64.grad)]:
        assert_close_to(got, want, torch.float32, f"grad {name}")


def test_only_requested_gradients_are_computed():
    x, weight, b = depthwise_inputs(2, 4, 5, 5, torch.float32)
    x.requires_grad_(False)
    so.depthwise_conv3x3(x, weight, b, 2, relu=True).sum().backward()
    assert x.grad is None and weight.grad is not None and b.grad is not None


def opcheck_samples():
    for stride in (1, 2):
        for relu in (False, True):
            x, w, b = depthwise_inputs(2, 5, 6, 7, torch.float32, seed=stride)
            yield (x, w, b, stride, relu)
            yield (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, None, stride, relu)
            yield (x.detach()[..., 1:].requires_grad_(), w, b, stride, relu)


@pytest.mark.parametrize("args", list(opcheck_samples()))
def test_opcheck(args):
    torch.library.opcheck(OP, args)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradcheck(stride, relu, channels_last):
    x, w, b = depthwise_inputs(2, 3, 5, 6, torch.float64, channels_last=channels_last, seed=3)
    assert torch.autograd.gradcheck(lambda x, w, b: so.depthwise_conv3x3(x, w, b, stride, relu=relu), (x, w, b))
    # Second derivatives too: the backward runs on differentiable ATen ops.
    assert torch.autograd.gradgradcheck(lambda x, w, b: so.depthwise_conv3x3(x, w, b, stride, relu=relu), (x, w, b))


def test_compiles():
    x, w, b = depthwise_inputs(1, 6, 8, 8, torch.float32)
    fn = torch.compile(lambda x, w, b: so.depthwise_conv3x3(x, w, b, 2, relu=True), fullgraph=True)
    with torch.no_grad():
        assert_close_to(fn(x, w, b), so.reference.depthwise_conv3x3(x, w, b, 2, relu=True), torch.float32, "output")


def bad_args(**overrides):
    args = dict(x=torch.randn(2, 6, 5, 5), weight=torch.randn(6, 1, 3, 3), bias=torch.randn(6), stride=1)
    args.update(overrides)
    return args


# (overrides, exception type, message pattern)
BAD_CASES = {
    "x-not-4d": (dict(x=torch.randn(6, 5, 5)), ValueError, r"x to be a 4-D tensor"),
    "integer-x": (
        dict(x=torch.ones(2, 6, 5, 5, dtype=torch.int32), weight=torch.ones(6, 1, 3, 3, dtype=torch.int32), bias=None),
        TypeError,
        r"x to be a floating-point tensor",
    ),
    "weight-channels": (dict(weight=torch.randn(5, 1, 3, 3)), ValueError, r"weight of shape \[C, 1, 3, 3\] = \[6, 1, 3, 3\]"),
    "weight-kernel-5x5": (dict(weight=torch.randn(6, 1, 5, 5)), ValueError, r"weight of shape \[C, 1, 3, 3\]"),
    "weight-grouped": (dict(weight=torch.randn(6, 2, 3, 3)), ValueError, r"weight of shape \[C, 1, 3, 3\]"),
    "weight-2d": (dict(weight=torch.randn(6, 9)), ValueError, r"weight of shape \[C, 1, 3, 3\]"),
    "weight-dtype": (dict(weight=torch.randn(6, 1, 3, 3, dtype=torch.float64)), TypeError, r"weight to have the same dtype as x"),
    "weight-device": (dict(weight=torch.randn(6, 1, 3, 3, device="meta")), ValueError, r"weight to be on the same device as x"),
    "stride-zero": (dict(stride=0), ValueError, r"stride to be 1 or 2, got 0"),
    "stride-three": (dict(stride=3), ValueError, r"stride to be 1 or 2, got 3"),
    "stride-negative": (dict(stride=-1), ValueError, r"stride to be 1 or 2, got -1"),
    "bias-shape": (dict(bias=torch.randn(5)), ValueError, r"bias of shape \[C\] = \[6\]"),
    "bias-2d": (dict(bias=torch.randn(6, 1)), ValueError, r"bias of shape \[C\] = \[6\]"),
    "bias-dtype": (dict(bias=torch.randn(6, dtype=torch.bfloat16)), TypeError, r"bias to have the same dtype as x"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
@pytest.mark.parametrize("entry", BAD_INPUT_ENTRIES)
def test_bad_input(case, entry, monkeypatch):
    overrides, error, pattern = BAD_CASES[case]
    a = bad_args(**overrides)
    expect_rejected(entry, monkeypatch, "_DEPTHWISE_NATIVE_DEVICES", error, pattern,
                    public=lambda: so.depthwise_conv3x3(a["x"], a["weight"], a["bias"], a["stride"]),
                    registered=lambda: OP(a["x"], a["weight"], a["bias"], a["stride"], False))


def test_floating_dtype_no_cpu_operator_computes_is_named():
    # float16 runs PyTorch's own convolution inside the op (tests/test_dtypes.py); float8 has none.
    x, w = torch.zeros(1, 4, 3, 3, dtype=torch.float8_e5m2), torch.zeros(4, 1, 3, 3, dtype=torch.float8_e5m2)
    with pytest.raises(TypeError, match=r"dtype Float8_e5m2 is computed neither by this kernel nor by PyTorch's "
                                        r"own cpu operators .*; convert the tensors to float32"):
        OP(x, w, None, 1, False)


@pytest.mark.parametrize("stride", [2.0, True, "1"])
def test_python_stride_type(stride):
    with pytest.raises(TypeError, match=r"stride to be an int"):
        so.depthwise_conv3x3(torch.randn(1, 2, 3, 3), torch.randn(2, 1, 3, 3), None, stride)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_relu_and_signed_zeros(stride, channels_last, dtype):
    """Sums of zeros (channels with zero weights and a bias of -0.0 over negative inputs, whose
    products are all -0.0) and NaN: the fused ReLU is F.relu bit for bit on the op's own sums,
    and every zero has the reference's sign: +0.0, whatever the signs of its terms."""
    gen = torch.Generator().manual_seed(11)
    x = -(torch.rand(2, 6, 7, 9, generator=gen, dtype=torch.float64) + 0.1).to(dtype)
    x[1, 3, 4, 5] = float("nan")
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = (torch.randn(6, 1, 3, 3, generator=gen, dtype=torch.float64) / 3).to(dtype)
    weight[::2] = 0
    bias = torch.randn(6, generator=gen, dtype=torch.float64).to(dtype)
    bias[::2] = -0.0
    y = OP(x, weight, bias, stride, True)
    linear = OP(x, weight, bias, stride, False)
    assert (linear == 0).any() and (linear < 0).any() and linear.isnan().any()
    assert_same_floats(y, torch.nn.functional.relu(linear))
    # The reference on channels_last input: ATen's NCHW float32 and float64 kernels start their
    # sums at the bias and so leave -0.0 there, its channels_last ones (like ours, in both
    # layouts) at +0.0.
    expected = so.reference.depthwise_conv3x3(x.contiguous(memory_format=torch.channels_last), weight, bias, stride,
                                              relu=True)
    assert torch.equal(y.isnan(), expected.isnan())
    zeros = expected == 0
    assert zeros.any() and torch.equal(y[zeros].signbit(), expected[zeros].signbit())
    assert_close_to(y.nan_to_num(), expected.double().nan_to_num(), dtype, "output")
