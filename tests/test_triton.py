"""The Triton backend against so.reference: outputs and the gradients of x,
weight and bias, over edge shapes (sizes that are not multiples of the tile),
groups 1/3/8, both memory formats, every shuffle placement, bias and ReLU;
bad input through the registered triton_* ops; opcheck and torch.compile.

Without a GPU the kernels run on CPU tensors under Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), so shapes stay small."""

import pytest
import torch
from torch._prims_common import suggest_memory_format

import shufflenet_ops as so
from shufflenet_ops import backends
from shufflenet_ops.ops import OpFamily
from tests.test_pointwise_group_conv import assert_same_floats, one_zero_channel_per_group, relu_edge_inputs
from tests.utils import assert_close_to, conv_inputs, float64_leaves, random_residual

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    "triton" not in so.available_backends(DEVICE),
    reason="the Triton backend needs triton and a CUDA device, or TRITON_INTERPRET=1 on CPU",
)
TRITON = OpFamily("triton_")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (N, C_in, C_out, H, W, groups, input_shuffle, output_shuffle, bias, relu)
CASES = {
    "g3-both-shuffles": (2, 12, 18, 5, 7, 3, 3, 3, True, True),
    "g8-input-shuffle": (1, 24, 40, 3, 6, 8, 8, None, False, False),
    "g8-output-shuffle": (2, 16, 48, 4, 5, 8, None, 8, True, False),
    "g1-shuffles-2-and-4": (3, 20, 36, 3, 3, 1, 2, 4, False, True),
    "1x1-spatial": (2, 9, 15, 1, 1, 3, None, None, True, True),
    "width-1-mixed-shuffles": (1, 6, 6, 2, 1, 3, 2, 3, True, False),
    # 800 pixels: several pixel tiles and several splits of the weight/bias reduction.
    "many-pixels": (2, 48, 24, 20, 20, 3, 3, 3, True, True),
    "empty-batch": (0, 12, 12, 4, 4, 3, 3, 3, True, True),
}


def check_conv(case, dtype, channels_last, make_input=lambda x: x, residual_channels_last=None):
    """With ``residual_channels_last`` (True or False), a residual in that layout is added too."""
    n, c_in, c_out, h, w, groups, input_shuffle, output_shuffle, bias, relu = case
    x, weight, b = conv_inputs(n, c_in, c_out, h, w, groups, dtype, bias=bias, channels_last=channels_last,
                               device=DEVICE)  # fmt: skip
    kwargs = dict(input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu)
    residual = None
    if residual_channels_last is not None:
        with torch.no_grad():
            conv64 = so.reference.pointwise_group_conv(make_input(x.double()), weight.double(),
                                                       None if b is None else b.double(), groups,
                                                       **kwargs | {"relu": False})
        residual = random_residual(conv64, dtype, channels_last=residual_channels_last)
    y = so.pointwise_group_conv(make_input(x), weight, b, groups, backend="triton", residual=residual, **kwargs)
    x64, w64, b64, r64 = float64_leaves(x, weight, b, residual)
    y64 = so.reference.pointwise_group_conv(make_input(x64), w64, b64, groups, residual=r64, **kwargs)
    assert y.shape == y64.shape and y.dtype == dtype
    assert y.is_contiguous(memory_format=suggest_memory_format(make_input(x)))
    assert_close_to(y, y64, dtype, "output")

    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grad = grad.to(device=DEVICE, dtype=dtype)
    y.backward(grad)
    y64.backward(grad.double())
    assert_close_to(x.grad, x64.grad, dtype, "grad x")
    assert_close_to(weight.grad, w64.grad, dtype, "grad weight")
    if bias:
        assert_close_to(b.grad, b64.grad, dtype, "grad bias")
    if residual is not None:
        assert_close_to(residual.grad, r64.grad, dtype, "grad residual")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_pointwise_group_conv_matches_reference(case, dtype, channels_last):
    check_conv(case, dtype, channels_last)


@pytest.mark.parametrize("residual_channels_last", [False, True], ids=["residual_nchw", "residual_channels_last"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", ["g3-both-shuffles", "g8-output-shuffle", "empty-batch"])
def test_residual_matches_reference(case, dtype, channels_last, residual_channels_last):
    check_conv(CASES[case], dtype, channels_last, residual_channels_last=residual_channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_strided_input_is_read_correctly(channels_last):
    # A spatially subsampled view: neither NCHW- nor channels_last-dense.
    check_conv(CASES["g3-both-shuffles"], torch.float32, channels_last, make_input=lambda x: x[:, :, ::2, 1:])


@pytest.mark.parametrize("pixels", [1, 255, 256, 257, 4096, 100_003, 3 * 2**20])
@pytest.mark.parametrize("tiles", [1, 3, 64, 600])
def test_reduction_split_depends_on_the_shape_alone(pixels, tiles, monkeypatch):
    """The weight and bias gradients sum per-split partials in a fixed order; the
    split, and so every bit of the result, must be the same on every card."""
    from shufflenet_ops.triton._launch import reduction_splits

    class Properties:
        def __init__(self, multiprocessors):
            self.multi_processor_count = multiprocessors

    results = set()
    for multiprocessors in (108, 132):
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *_, m=multiprocessors: Properties(m))
        results.add(reduction_splits(pixels, tiles))
    assert len(results) == 1
    (splits, chunk), = results
    assert chunk % 256 == 0 and (splits - 1) * chunk < pixels <= splits * chunk, "the splits cover the pixels once"


def test_weight_gradient_is_deterministic():
    n, c_in, c_out, h, w, groups, input_shuffle, output_shuffle, _, _ = CASES["many-pixels"]
    x, weight, _ = conv_inputs(n, c_in, c_out, h, w, groups, torch.float32, bias=False, device=DEVICE)
    grad = torch.randn(n, c_out, h, w, device=DEVICE)
    first = TRITON.grad_weight(grad, x.detach(), groups, input_shuffle, output_shuffle)
    for _ in range(3):
        assert torch.equal(TRITON.grad_weight(grad, x.detach(), groups, input_shuffle, output_shuffle), first)


# (shape, groups, memory format)
SHUFFLES = {
    "nchw-g3": ((2, 12, 5, 7), 3, torch.contiguous_format),
    "channels_last-g4": ((2, 12, 5, 7), 4, torch.channels_last),
    "many-channel-tiles-g8": ((1, 72, 3, 3), 8, torch.channels_last),
    "g1": ((2, 5, 3, 2), 1, torch.contiguous_format),
    "3d": ((2, 6, 10), 2, torch.contiguous_format),
    "channels_last_3d": ((1, 6, 2, 3, 4), 3, torch.channels_last_3d),
    "empty": ((0, 6, 2, 2), 3, torch.contiguous_format),
}


def test_double_backward_matches_reference():
    """Gradients of a loss built from the first gradients: the triton_* backward
    ops are differentiable, as the native ones are."""
    kwargs = dict(input_shuffle=3, output_shuffle=2, relu=True)

    def second_derivatives(conv, x, w, b):
        y = conv(x, w, b, 3, **kwargs)
        first = torch.autograd.grad(y.square().sum(), (x, w, b), create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in first), (x, w, b))

    x, w, b = conv_inputs(2, 12, 6, 3, 2, 3, torch.float32, device=DEVICE)
    got = second_derivatives(lambda *a, **k: so.pointwise_group_conv(*a, **k, backend="triton"), x, w, b)
    expected = second_derivatives(so.reference.pointwise_group_conv, *float64_leaves(x, w, b))
    for name, g, e in zip(("x", "weight", "bias"), got, expected):
        assert_close_to(g, e, torch.float32, f"second derivative of {name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups, memory_format", SHUFFLES.values(), ids=SHUFFLES.keys())
def test_channel_shuffle_matches_torch(shape, groups, memory_format, dtype):
    x = torch.randn(shape, dtype=dtype, device=DEVICE).contiguous(memory_format=memory_format).requires_grad_()
    y = so.channel_shuffle(x, groups, backend="triton")
    assert torch.equal(y, torch.channel_shuffle(x.detach(), groups))
    assert y.is_contiguous(memory_format=memory_format)
    grad = torch.randn(shape, dtype=dtype, device=DEVICE)
    y.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    so.reference.channel_shuffle(x_ref, groups).backward(grad)
    assert torch.equal(x.grad, x_ref.grad)


def test_backend_is_listed_and_auto_keeps_compiled_kernels_first():
    assert "triton" in so.available_backends(DEVICE)
    if DEVICE == "cpu":
        assert backends.select("auto", torch.device("cpu")).name == "native"


def conv_args(dtype=torch.float32, groups=3):
    x, weight, b = conv_inputs(2, 12, 18, 3, 4, groups, dtype, device=DEVICE)
    return x.detach(), weight.detach(), b.detach()


def test_bad_input_to_the_registered_ops_raises():
    x, weight, b = conv_args()
    grad = torch.randn(2, 18, 3, 4, device=DEVICE)
    with pytest.raises(TypeError, match=r"supports dtypes \{float32, float16, bfloat16\}, got x of torch.float64"):
        TRITON.pointwise_group_conv(x.double(), weight.double(), None, 3, 1, 1, False)
    with pytest.raises(TypeError, match=r"supports dtypes \{float32, float16, bfloat16\}, got grad_out of"):
        TRITON.grad_input(grad.double(), weight.double(), 3, 1, 1)
    with pytest.raises(TypeError, match=r"supports dtypes \{float32, float16, bfloat16\}, got x of"):
        TRITON.channel_shuffle(x.double(), 3)
    with pytest.raises(ValueError, match=r"expected groups \(5\) to divide the input channels \(12\)"):
        TRITON.pointwise_group_conv(x, weight, b, 5, 1, 1, False)
    with pytest.raises(ValueError, match=r"expected weight.size\(1\) \(4\) to equal C_in / groups \(12 / 2\)"):
        TRITON.pointwise_group_conv(x, weight[:12], b[:12], 2, 1, 1, False)
    with pytest.raises(ValueError, match=r"expected bias of shape \[C_out\] = \[18\]"):
        TRITON.pointwise_group_conv(x, weight, b[:6], 3, 1, 1, False)
    with pytest.raises(ValueError, match=r"expected input_shuffle to be a positive integer, got 0"):
        TRITON.pointwise_group_conv(x, weight, b, 3, 0, 1, False)
    with pytest.raises(ValueError, match=r"expected output_shuffle \(5\) to divide the output channels \(18\)"):
        TRITON.pointwise_group_conv(x, weight, b, 3, 1, 5, False)
    with pytest.raises(ValueError, match=r"expected x to be a 4-D tensor"):
        TRITON.pointwise_group_conv(x[0], weight, b, 3, 1, 1, False)
    with pytest.raises(ValueError, match=r"expected residual of the output's shape \[N, C_out, H, W\] = \[2, 18, 3, 4\]"):
        TRITON.pointwise_group_conv(x, weight, b, 3, 1, 1, False, torch.randn(2, 12, 3, 4, device=DEVICE))
    with pytest.raises(TypeError, match=r"expected residual to have the same dtype as x"):
        TRITON.pointwise_group_conv(x, weight, b, 3, 1, 1, False, torch.randn(2, 18, 3, 4, device=DEVICE).double())
    with pytest.raises(ValueError, match=r"expected grad_out.size\(1\) \(12\) to equal weight.size\(0\) \(18\)"):
        TRITON.grad_input(grad[:, :12], weight, 3, 1, 1)
    with pytest.raises(ValueError, match=r"to agree in N, H and W"):
        TRITON.grad_weight(grad[:, :, :2], x, 3, 1, 1)
    with pytest.raises(ValueError, match=r"expected output_shuffle \(7\) to divide the output channels \(18\)"):
        TRITON.grad_bias(grad, 7)
    with pytest.raises(ValueError, match=r"expected groups \(5\) to divide the channels of x \(12\)"):
        TRITON.channel_shuffle(x, 5)
    with pytest.raises(TypeError, match=r"supports dtypes \{float32, float16, bfloat16\}"):
        so.pointwise_group_conv(x.double(), weight.double(), backend="triton", groups=3)


def opcheck_cases():
    x, weight, b = conv_args()
    grad = torch.randn(2, 18, 3, 4, device=DEVICE)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    return {
        "forward": (TRITON.pointwise_group_conv, (x.requires_grad_(), weight.requires_grad_(), b, 3, 3, 3, True)),
        "forward-channels_last": (TRITON.pointwise_group_conv, (x_cl, weight, None, 3, 1, 3, False)),
        "forward-residual": (TRITON.pointwise_group_conv,
                             (x, weight, b, 3, 3, 3, True, torch.randn(2, 18, 3, 4, device=DEVICE, requires_grad=True))),
        "grad_input": (TRITON.grad_input, (grad, weight.detach(), 3, 3, 3)),
        "grad_weight": (TRITON.grad_weight, (grad, x.detach(), 3, 3, 3)),
        "grad_bias": (TRITON.grad_bias, (grad, 3)),
        "channel_shuffle": (TRITON.channel_shuffle, (x_cl.detach().requires_grad_(), 4)),
    }


@pytest.mark.parametrize("name", opcheck_cases().keys())
def test_opcheck(name):
    op, args = opcheck_cases()[name]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_torch_compile_fullgraph(channels_last):
    x, weight, b = conv_inputs(2, 12, 18, 3, 4, 3, torch.float32, channels_last=channels_last, device=DEVICE)

    def unit(x, weight, b):
        y = so.pointwise_group_conv(x, weight, b, 3, output_shuffle=3, relu=True, backend="triton")
        return so.channel_shuffle(y, 6, backend="triton")

    torch._dynamo.reset()
    y = torch.compile(unit, fullgraph=True)(x, weight, b)
    y.sum().backward()
    x64, w64, b64 = float64_leaves(x, weight, b)
    y64 = so.reference.channel_shuffle(
        so.reference.pointwise_group_conv(x64, w64, b64, 3, output_shuffle=3, relu=True), 6
    )
    y64.sum().backward()
    assert_close_to(y, y64, torch.float32, "output")
    assert_close_to(x.grad, x64.grad, torch.float32, "grad x")
    assert_close_to(weight.grad, w64.grad, torch.float32, "grad weight")
    assert_close_to(b.grad, b64.grad, torch.float32, "grad bias")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_reduction(channels_last, dtype):
    """C_in = 0: the bias, shuffled, plus the residual, then the ReLU; the gradients of bias and
    residual are the output's, those of x and weight empty."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 0, 3, 4, dtype=dtype, device=DEVICE)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    weight = torch.randn(6, 0, 1, 1, dtype=dtype, device=DEVICE, requires_grad=True)
    b = torch.randn(6, generator=gen).to(device=DEVICE, dtype=dtype).requires_grad_()
    r = torch.randn(2, 6, 3, 4, generator=gen).to(device=DEVICE, dtype=dtype).requires_grad_()
    x.requires_grad_()
    y = so.pointwise_group_conv(x, weight, b, 3, input_shuffle=3, output_shuffle=2, relu=True, residual=r,
                                backend="triton")
    padded_x, padded_w = one_zero_channel_per_group(x.detach().cpu(), weight.detach().cpu(), 3)
    x64, w64, b64, r64 = float64_leaves(padded_x, padded_w, b.cpu(), r.cpu())
    y64 = so.reference.pointwise_group_conv(x64, w64, b64, 3, output_shuffle=2, relu=True, residual=r64)
    assert_close_to(y.cpu(), y64, dtype, "output")
    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(grad.to(device=DEVICE, dtype=dtype))
    y64.backward(grad)
    assert x.grad.shape == x.shape and weight.grad.shape == weight.shape
    assert_close_to(b.grad.cpu(), b64.grad, dtype, "grad bias")
    assert_close_to(r.grad.cpu(), r64.grad, dtype, "grad residual")


@pytest.mark.parametrize("channels_last,output_shuffle", [(False, None), (True, 3)], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_relu_is_f_relu(channels_last, output_shuffle, dtype):
    """The fused ReLU is F.relu bit for bit on the kernel's own sums (NaN stays NaN, -0.0 stays
    -0.0), with the reference's NaN and the sign of every zero (+0.0, as ATen's float32 and
    reduced-precision convolutions give a sum of zeros)."""
    x, weight, bias, r = (t.to(DEVICE) for t in relu_edge_inputs(12, 18, 3, 5, 3, channels_last, dtype))
    kwargs = dict(output_shuffle=output_shuffle, residual=r, backend="triton")
    y = so.pointwise_group_conv(x, weight, bias, 3, relu=True, **kwargs)
    linear = so.pointwise_group_conv(x, weight, bias, 3, relu=False, **kwargs)
    assert linear.isnan().any() and (linear == 0).any() and (linear < 0).any()
    assert_same_floats(y, torch.nn.functional.relu(linear))
    expected = so.reference.pointwise_group_conv(x.float(), weight.float(), bias.float(), 3, relu=True,
                                                 output_shuffle=output_shuffle, residual=r.float())
    assert torch.equal(y.isnan(), expected.isnan())
    zeros = expected == 0
    assert torch.equal(y[zeros].signbit(), expected[zeros].signbit())
    assert_close_to(y.nan_to_num(), expected.double().nan_to_num(), dtype, "output")
