"""so.pointwise_group_conv (native backend) against so.reference: outputs and
the gradients of x, weight and bias, over ShuffleNet's layer shapes and edge
shapes, both memory formats, every shuffle placement, bias and ReLU."""

import itertools

import pytest
import torch
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from tests.utils import assert_close_to, conv_inputs, float64_leaves, random_residual

# (N, C_in, C_out, H, W, groups)
SHUFFLENET_SHAPES = [
    (2, 240, 60, 28, 28, 3),  # stage 2 bottleneck in, g=3
    (2, 60, 240, 28, 28, 3),  # stage 2 bottleneck out, g=3
    (1, 200, 50, 14, 14, 2),
    (1, 272, 68, 14, 14, 4),
    (2, 384, 96, 7, 7, 8),
    (1, 96, 384, 7, 7, 8),
    (2, 36, 144, 9, 9, 1),
]
EDGE_SHAPES = [
    (3, 16, 16, 5, 5, 16),  # groups == channels, one channel per group
    (2, 12, 24, 1, 1, 3),  # 1x1 spatial
    (2, 24, 12, 7, 9, 4),  # odd H x W
    (1, 48, 48, 3, 37, 2),  # columns not a multiple of the vector width
    (1, 120, 30, 5, 7, 3),  # a 3-column tail taken as dot products over a depth of 40
    (0, 12, 12, 4, 4, 3),  # empty batch
]
# (input_shuffle, output_shuffle) as multiples of groups: None = no shuffle.
PLACEMENTS = {"none": (None, None), "output": (None, "g"), "input": ("g", None), "both": ("g", "g")}
DTYPES = [torch.float32, torch.float64, torch.bfloat16]


def resolve(placement, groups, c_in, c_out):
    input_shuffle, output_shuffle = PLACEMENTS[placement]
    # groups == 1 would make a shuffle a no-op: shuffle by 2 instead where it divides.
    shuffle = groups if groups > 1 else 2
    return (
        None if input_shuffle is None or c_in % shuffle else shuffle,
        None if output_shuffle is None or c_out % shuffle else shuffle,
    )


def check_against_reference(n, c_in, c_out, h, w, groups, dtype, *, placement, bias, relu, channels_last,
                            make_input=lambda x: x, backend="native", residual_format=None):
    """With ``residual_format`` (a memory format), a residual of the output's shape is added too."""
    input_shuffle, output_shuffle = resolve(placement, groups, c_in, c_out)
    x, weight, b = conv_inputs(n, c_in, c_out, h, w, groups, dtype, bias=bias, channels_last=channels_last)
    kwargs = dict(input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu)
    residual = None
    if residual_format is not None:
        with torch.no_grad():
            conv64 = so.reference.pointwise_group_conv(make_input(x.double()), weight.double(),
                                                       None if b is None else b.double(), groups,
                                                       **kwargs | {"relu": False})
        residual = random_residual(conv64, dtype, channels_last=residual_format == torch.channels_last)
    x_in = make_input(x)
    y = so.pointwise_group_conv(x_in, weight, b, groups, backend=backend, residual=residual, **kwargs)

    x64, w64, b64, r64 = float64_leaves(x, weight, b, residual)
    y64 = so.reference.pointwise_group_conv(make_input(x64), w64, b64, groups, residual=r64, **kwargs)
    assert y.shape == y64.shape and y.dtype == dtype
    assert_close_to(y, y64, dtype, "output")
    if y.numel() and backend != "reference":  # the output keeps the input's memory format
        assert y.is_contiguous(memory_format=suggest_memory_format(x_in))

    grad = torch.randn(y64.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(grad.to(dtype))
    y64.backward(grad)
    assert_close_to(x.grad, x64.grad, dtype, "grad x")
    assert_close_to(weight.grad, w64.grad, dtype, "grad weight")
    if bias:
        assert_close_to(b.grad, b64.grad, dtype, "grad bias")
    if residual is not None:
        assert_close_to(residual.grad, r64.grad, dtype, "grad residual")


@pytest.mark.parametrize("shape", SHUFFLENET_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_shufflenet_shapes(shape, placement, channels_last, dtype):
    check_against_reference(*shape, dtype, placement=placement, bias=True, relu=True, channels_last=channels_last)


@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("bias,relu", list(itertools.product([False, True], [False, True])))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edge_shapes(shape, placement, bias, relu, channels_last, dtype):
    check_against_reference(*shape, dtype, placement=placement, bias=bias, relu=relu, channels_last=channels_last)


@pytest.mark.parametrize("shape", [SHUFFLENET_SHAPES[1], SHUFFLENET_SHAPES[4], *EDGE_SHAPES],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("placement", ["none", "both"])
@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("residual_layout", ["same", "other"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_residual(shape, placement, relu, channels_last, residual_layout, dtype):
    # "other": the residual in the other memory format than x (and the output).
    same = torch.channels_last if channels_last else torch.contiguous_format
    other = torch.contiguous_format if channels_last else torch.channels_last
    check_against_reference(*shape, dtype, placement=placement, bias=True, relu=relu, channels_last=channels_last,
                            residual_format=same if residual_layout == "same" else other)


@pytest.mark.parametrize("tail", range(1, 9))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ragged_column_tails(tail, dtype):
    # 48 + tail pixels: a ragged tail of every width the dot-product path takes,
    # over a depth of 100 (not whole vectors) and 13 rows (not whole row batches).
    check_against_reference(1, 200, 26, 1, 48 + tail, 2, dtype, placement="output", bias=True, relu=True,
                            channels_last=False)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["", "residual"])
def test_relu_keeps_nan(channels_last, with_residual):
    # F.relu keeps a NaN: so does the fused epilogue, in the register tiles, the
    # ragged column tail (7x7 = 49 pixels) and the shuffled stores.
    x, weight, bias = conv_inputs(1, 12, 24, 7, 7, 3, torch.float32, bias=True, channels_last=channels_last)
    with torch.no_grad():
        x[0, 1, 2, 3] = float("nan")
        x[0, 4, 6, 6] = float("nan")
    residual = torch.randn(1, 24, 7, 7) if with_residual else None
    kwargs = dict(output_shuffle=3, relu=True, residual=residual)
    y = so.pointwise_group_conv(x, weight, bias, 3, **kwargs)
    expected = so.reference.pointwise_group_conv(x, weight, bias, 3, **kwargs)
    assert expected.isnan().any()
    torch.testing.assert_close(y, expected, equal_nan=True)


@pytest.mark.parametrize(
    "make_input",
    [
        lambda x: x[:, :, ::2, 1:],
        lambda x: x.transpose(2, 3),
        lambda x: x[..., 1:],
    ],
    ids=["strided-spatial", "transposed", "sliced"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("placement", ["output", "both"])
def test_non_contiguous_input(make_input, channels_last, placement):
    check_against_reference(2, 24, 12, 6, 8, 3, torch.float32, placement=placement, bias=True, relu=True,
                            channels_last=channels_last, make_input=make_input)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_zero_spatial_size(channels_last):
    # F.conv2d rejects an empty spatial size, so the oracle here is the
    # definition: an empty output, and zero gradients for weight and bias.
    x, weight, b = conv_inputs(2, 12, 6, 0, 5, 3, torch.float32, channels_last=channels_last)
    y = so.pointwise_group_conv(x, weight, b, 3, input_shuffle=3, output_shuffle=2, relu=True)
    assert y.shape == (2, 6, 0, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    assert torch.equal(b.grad, torch.zeros_like(b))


def test_two_dimensional_weight():
    x, weight, b = conv_inputs(2, 12, 6, 4, 4, 3, torch.float32)
    flat = weight.detach().view(6, 4).requires_grad_()
    y = so.pointwise_group_conv(x, flat, b, 3, output_shuffle=3)
    y_ref = so.reference.pointwise_group_conv(x, weight, b, 3, output_shuffle=3)
    assert_close_to(y, y_ref, torch.float32, "output")
    y.sum().backward()
    y_ref.sum().backward()
    assert flat.grad.shape == (6, 4)
    assert_close_to(flat.grad, weight.grad.view(6, 4), torch.float32, "grad weight")


def test_gradient_of_non_contiguous_grad_output():
    x, weight, b = conv_inputs(2, 12, 6, 5, 5, 3, torch.float32, channels_last=True)
    y = so.pointwise_group_conv(x, weight, b, 3, input_shuffle=3, output_shuffle=3, relu=True)
    y.sum().backward()  # the incoming gradient is an expanded, zero-stride tensor
    x64, w64, b64 = float64_leaves(x, weight, b)
    so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=3, output_shuffle=3, relu=True).sum().backward()
    for name, got, want in [("x", x.grad, x64.grad), ("weight", weight.grad, w64.grad), ("bias", b.grad, b64.grad)]:
        assert_close_to(got, want, torch.float32, f"grad {name}")


def test_only_requested_gradients_are_computed():
    x, weight, b = conv_inputs(2, 12, 6, 4, 4, 3, torch.float32)
    x.requires_grad_(False)
    so.pointwise_group_conv(x, weight, b, 3, output_shuffle=3).sum().backward()
    assert x.grad is None and weight.grad is not None and b.grad is not None


def _reduced_gradients(channels_last):
    """The gradients the library's CPU kernels reduce over pixels, the pointwise
    conv's weight and bias, at a size the kernels split. (The depthwise conv's
    and the stem's come from ATen's convolution backward, whose oneDNN reduction
    depends on the thread count.)"""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 96, 28, 28, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(96, 12, 1, 1, generator=gen), torch.randn(96, generator=gen)
    x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    y = so.pointwise_group_conv(x, w, b, 8, output_shuffle=8, relu=True)
    return torch.autograd.grad(y.square().sum(), (w, b))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_reductions_are_deterministic(channels_last):
    """Bit for bit the same gradients on every run and at every thread count: the
    summation order depends on the problem's shape alone."""
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2, 3, 1, 2):
            torch.set_num_threads(count)
            runs.append(_reduced_gradients(channels_last))
    finally:
        torch.set_num_threads(threads)
    for run, count in zip(runs[1:], (2, 3, 1, 2)):
        for name, g, g_first in zip(["weight", "bias"], run, runs[0]):
            assert torch.equal(g, g_first), f"{name} gradient with {count} threads differs from 1 thread's"


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
def test_every_cpu_backend_matches_reference(backend):
    check_against_reference(2, 24, 12, 5, 5, 3, torch.float32, placement="both", bias=True, relu=True,
                            channels_last=False, backend=backend)


def test_unknown_backend_names_the_available_ones():
    x, weight, _ = conv_inputs(1, 4, 4, 2, 2, 1, torch.float32, bias=False)
    with pytest.raises(ValueError, match=r"unknown or unavailable backend 'cudnn'.*'native'"):
        so.pointwise_group_conv(x, weight, backend="cudnn")
    with pytest.raises(ValueError, match=r"unknown or unavailable backend"):
        so.channel_shuffle(x, 2, backend="nope")
    assert {"reference", "native"} <= set(so.available_backends())
    assert "native" in so.available_backends("cpu")


OPS = torch.ops.shufflenet_ops


def one_zero_channel_per_group(x, weight, groups):
    """The operands of the same conv with one zero input channel per group: an empty sum becomes
    a sum of zero products, which stock conv2d computes (for C_in = 0 it returns no channels)."""
    n, _, h, w = x.shape
    zeros = torch.zeros(n, groups, h, w, dtype=x.dtype).to(memory_format=suggest_memory_format(x))
    return zeros, torch.zeros(weight.shape[0], 1, 1, 1, dtype=weight.dtype)


@pytest.mark.parametrize("groups,output_shuffle", [(1, None), (3, 3), (3, 2)], ids=["g1", "g3-shuffle3", "g3-shuffle2"])
@pytest.mark.parametrize("bias,residual", [(False, False), (True, False), (True, True)], ids=["", "bias", "bias-res"])
@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("entry", ["public", "registered"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_reduction(groups, output_shuffle, bias, residual, layout, entry, dtype):
    """C_in = 0 (C_in / groups = 0): the output is the bias (or zeros), shuffled, plus the
    residual, then the ReLU; the gradients of bias and residual are the output's."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(2, 0, 3, 8 if layout == "strided" else 4, dtype=torch.float64)
    x = base.to(dtype)[..., ::2] if layout == "strided" else base.to(dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 0, 1, 1, dtype=dtype, requires_grad=True)
    b = torch.randn(6, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if bias else None
    r = torch.randn(2, 6, 3, 4, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if residual else None
    x.requires_grad_()
    if entry == "public":
        y = so.pointwise_group_conv(x, weight, b, groups, input_shuffle=groups, output_shuffle=output_shuffle,
                                    relu=True, residual=r)
    else:
        y = OPS.pointwise_group_conv(x, weight, b, groups, groups, output_shuffle or 1, True, r)
    padded_x, padded_w = one_zero_channel_per_group(x.detach(), weight.detach(), groups)
    x64, w64, b64, r64 = float64_leaves(padded_x, padded_w, b, r)
    y64 = so.reference.pointwise_group_conv(x64, w64, b64, groups, output_shuffle=output_shuffle, relu=True,
                                            residual=r64)
    assert y.shape == (2, 6, 3, 4) and y.dtype == dtype
    assert y.is_contiguous(memory_format=suggest_memory_format(x))
    assert_close_to(y, y64, dtype, "output")

    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(grad.to(dtype))
    y64.backward(grad)
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape
    if bias:
        assert_close_to(b.grad, b64.grad, dtype, "grad bias")
    if residual:
        assert_close_to(r.grad, r64.grad, dtype, "grad residual")


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("weight_dim", [2, 4])
def test_zero_output_channels_is_rejected_as_by_the_reference(groups, weight_dim):
    x = torch.randn(2, 6, 3, 3)
    weight = torch.randn(0, 6 // groups, *([1, 1] if weight_dim == 4 else []))
    with pytest.raises(RuntimeError, match=r"expected weight to be at least"):  # stock conv2d
        so.reference.pointwise_group_conv(x, weight, None, groups)
    pattern = (r"pointwise_group_conv: expected weight.size\(0\) \(C_out = 0\) to be a positive multiple of "
               rf"groups \({groups}\)")
    with pytest.raises(ValueError, match=pattern):
        so.pointwise_group_conv(x, weight, None, groups)
    with pytest.raises(ValueError, match=pattern):
        OPS.pointwise_group_conv(x.to(memory_format=torch.channels_last), weight, None, groups, 1, 1, True)
    with pytest.raises(ValueError, match=r"weight.size\(0\) \(C_out = 0\)"):
        OPS.pointwise_group_conv_grad_input(torch.randn(2, 0, 3, 3), weight, groups, 1, 1)
    with pytest.raises(ValueError, match=r"grad_out.size\(1\) \(C_out = 0\)"):
        OPS.pointwise_group_conv_grad_weight(torch.randn(2, 0, 3, 3), x, groups, 1, 1)


def assert_same_floats(actual, expected):
    """Equal bit for bit, -0.0 and +0.0 told apart, NaN where expected has NaN (of any payload:
    ATen's bfloat16 ReLU writes its own)."""
    nan = expected.isnan()
    assert torch.equal(actual.isnan(), nan)
    as_bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    assert torch.equal(actual[~nan].view(as_bits), expected[~nan].view(as_bits))


# (C_in, C_out, H, W, groups, output_shuffle, channels_last): each epilogue that fuses the
# ReLU: full vectors stored from registers, a ragged tail through the tile, a short tail
# as dot products, channels_last rows, and channels_last scalar stores through a shuffle.
RELU_EPILOGUES = {
    "nchw-registers": (12, 16, 4, 16, 1, None, False),
    "nchw-ragged-tail": (12, 16, 3, 7, 1, None, False),
    "nchw-dot-tail": (200, 26, 1, 51, 2, 2, False),
    "nhwc-rows": (12, 16, 3, 5, 1, None, True),
    "nhwc-shuffled-stores": (12, 18, 3, 5, 3, 3, True),
}


def relu_edge_inputs(c_in, c_out, h, w, groups, channels_last, dtype):
    """Inputs whose sums before the ReLU include NaN (a NaN input pixel), values of both signs,
    and exact zeros (output channels with zero weights and a bias of -0.0), plus a residual of
    -0.0, which adds nothing."""
    x, weight, _ = conv_inputs(2, c_in, c_out, h, w, groups, dtype, bias=False, channels_last=channels_last)
    x, weight = x.detach(), weight.detach()
    x[0, 0, 0, 0] = float("nan")
    x[1, -1, h - 1, w - 1] = float("nan")
    weight[::3] = 0
    bias = torch.randn(c_out, generator=torch.Generator().manual_seed(7)).to(dtype)
    bias[::3] = -0.0
    residual = torch.full((2, c_out, h, w), -0.0, dtype=dtype)
    return x, weight, bias, residual


@pytest.mark.parametrize("residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("epilogue", list(RELU_EPILOGUES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_relu_is_f_relu(epilogue, residual, dtype):
    """The fused ReLU is F.relu bit for bit (x < 0 ? 0 : x: NaN stays NaN, -0.0 stays -0.0)
    applied to the op's own sums, and matches the reference: NaN where it has NaN, and the
    sign of every zero."""
    c_in, c_out, h, w, groups, output_shuffle, channels_last = RELU_EPILOGUES[epilogue]
    x, weight, bias, r = relu_edge_inputs(c_in, c_out, h, w, groups, channels_last, dtype)
    r = r if residual else None
    kwargs = dict(output_shuffle=output_shuffle, residual=r)
    y = so.pointwise_group_conv(x, weight, bias, groups, relu=True, **kwargs)
    linear = so.pointwise_group_conv(x, weight, bias, groups, relu=False, **kwargs)
    assert linear.isnan().any() and (linear == 0).any() and (linear < 0).any()
    assert_same_floats(y, torch.nn.functional.relu(linear))

    expected = so.reference.pointwise_group_conv(x, weight, bias, groups, relu=True, **kwargs)
    assert torch.equal(y.isnan(), expected.isnan())
    torch.testing.assert_close(y, expected, equal_nan=True, atol=1e-2 if dtype == torch.bfloat16 else 1e-5,
                               rtol=1.6e-2 if dtype == torch.bfloat16 else 1e-5)
    # ATen's float64 convolution starts its sums at the bias, its float32 and bfloat16 ones
    # (oneDNN) at +0.0, as ours do: a sum of zeros is +0.0 whatever the signs of its terms.
    if dtype != torch.float64:
        zeros = expected == 0
        assert torch.equal(y[zeros].signbit(), expected[zeros].signbit())
