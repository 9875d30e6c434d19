"""torch.autocast: the convolutions cast as conv2d does, the shuffle and the
pools keep their input's dtype as channel_shuffle and max_pool2d do; forward
and backward, the ops, the modules, the zoo and a fused model, against the
same stock computation under the same autocast."""

import copy

import pytest
import torch

import shufflenet_ops as so
from tests.stock_shufflenet import randomize_batch_norms
from tests.utils import assert_close_to

CUDA = torch.cuda.is_available()
# (device, autocast dtype); CUDA cases run where a GPU is present.
SETTINGS = [("cpu", torch.bfloat16)] + [
    pytest.param("cuda", dtype, marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))
    for dtype in (torch.float16, torch.bfloat16)
]


def _leaves(*shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=gen).to(device).requires_grad_() for s in shapes]


def _ops(device):
    """name -> (ours, the stock computation, float32 leaves)."""
    x, w, b, r = _leaves((2, 12, 5, 6), (6, 4, 1, 1), (6,), (2, 6, 5, 6), device=device)
    dw, db = _leaves((12, 1, 3, 3), (12,), device=device, seed=1)
    (img, sw, sb) = _leaves((2, 3, 13, 11), (8, 3, 3, 3), (8,), device=device, seed=2)
    ref = so.reference
    return {
        "pointwise_group_conv": (
            lambda x, w, b: so.pointwise_group_conv(x, w, b, 3, input_shuffle=3, output_shuffle=2, relu=True),
            lambda x, w, b: ref.pointwise_group_conv(x, w, b, 3, input_shuffle=3, output_shuffle=2, relu=True),
            (x, w, b),
        ),
        # A residual in the autocast dtype is added in the conv's epilogue ...
        "pointwise_group_conv+residual": (
            lambda x, w, b, r: so.pointwise_group_conv(x, w, b, 3, output_shuffle=3, relu=True,
                                                       residual=r.to(torch.get_autocast_dtype(r.device.type))),
            lambda x, w, b, r: ref.pointwise_group_conv(x, w, b, 3, output_shuffle=3, relu=True,
                                                        residual=r.to(torch.get_autocast_dtype(r.device.type))),
            (x, w, b, r),
        ),
        # ... a float32 one promotes the sum to float32, as conv2d(...) + residual does.
        "pointwise_group_conv+float32-residual": (
            lambda x, w, b, r: so.pointwise_group_conv(x, w, b, 3, input_shuffle=3, relu=True, residual=r),
            lambda x, w, b, r: ref.pointwise_group_conv(x, w, b, 3, input_shuffle=3, relu=True, residual=r),
            (x, w, b, r),
        ),
        "depthwise_conv3x3": (
            lambda x, w, b: so.depthwise_conv3x3(x, w, b, 2, relu=True),
            lambda x, w, b: ref.depthwise_conv3x3(x, w, b, 2, relu=True),
            (x, dw, db),
        ),
        "stem_conv3x3_maxpool": (so.stem_conv3x3_maxpool, ref.stem_conv3x3_maxpool, (img, sw, sb)),
        "channel_shuffle": (lambda x: so.channel_shuffle(x, 3), lambda x: torch.channel_shuffle(x, 3), (x,)),
        "max_pool3x3": (so.max_pool3x3, ref.max_pool3x3, (x,)),
        "avg_pool3x3": (so.avg_pool3x3, ref.avg_pool3x3, (x,)),
    }


def _grads(fn, args, device, dtype):
    with torch.autocast(device, dtype=dtype):
        out = fn(*args)
    grads = torch.autograd.grad(out.float().square().sum(), args)
    return out, grads


@pytest.mark.parametrize("device,dtype", SETTINGS)
@pytest.mark.parametrize("name", list(_ops("cpu")))
def test_op_under_autocast(name, device, dtype):
    ours, stock, args = _ops(device)[name]
    out, grads = _grads(ours, args, device, dtype)
    out_ref, grads_ref = _grads(stock, args, device, dtype)
    assert out.dtype == out_ref.dtype, f"{name}: output dtype {out.dtype}, stock {out_ref.dtype}"
    expected_dtype = {"pointwise_group_conv+float32-residual": torch.float32, "channel_shuffle": torch.float32,
                      "max_pool3x3": torch.float32, "avg_pool3x3": torch.float32}.get(name, dtype)
    assert out.dtype == expected_dtype
    assert_close_to(out, out_ref.double(), dtype, name)
    for a, g, g_ref in zip(args, grads, grads_ref, strict=True):
        assert g.dtype == a.dtype == torch.float32, "a float32 leaf gets a float32 gradient"
        assert_close_to(g, g_ref.double(), dtype, f"{name} gradient")


@pytest.mark.parametrize("device,dtype", SETTINGS)
def test_module_under_autocast(device, dtype):
    conv = so.nn.PointwiseGroupConv2d(12, 6, groups=3, output_shuffle=3).to(device)
    stock = torch.nn.Conv2d(12, 6, 1, groups=3).to(device)
    stock.load_state_dict(conv.state_dict())
    x = torch.randn(2, 12, 5, 5, device=device)
    with torch.autocast(device, dtype=dtype):
        out = conv(x)
        out_ref = torch.channel_shuffle(stock(x), 3)
    assert out.dtype == out_ref.dtype == dtype
    assert_close_to(out, out_ref.double(), dtype, "PointwiseGroupConv2d")
    out.float().sum().backward()
    out_ref.float().sum().backward()
    assert_close_to(conv.weight.grad, stock.weight.grad.double(), dtype, "weight gradient")


def _zoo_and_twin(device):
    from tests.stock_shufflenet import load_zoo_weights

    torch.manual_seed(0)
    zoo = randomize_batch_norms(so.models.shufflenet_v1(groups=3, width_mult=0.25, num_classes=10)).to(device)
    twin = so.models.shufflenet_v1_unfused(groups=3, width_mult=0.25, num_classes=10).to(device)
    load_zoo_weights(twin, zoo)
    return zoo, twin


@pytest.mark.parametrize("device,dtype", SETTINGS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_zoo_under_autocast(mode, device, dtype):
    zoo, twin = _zoo_and_twin(device)
    zoo.train(mode == "train")
    twin.train(mode == "train")
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.autocast(device, dtype=dtype):
        out, out_ref = zoo(x), twin(x)
    assert out.dtype == out_ref.dtype == dtype
    # Whole networks in reduced precision: a looser bound than one op's.
    torch.testing.assert_close(out.float(), out_ref.float(), atol=0.1 * out_ref.abs().max().item(), rtol=0.1)
    out.float().square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in zoo.parameters())


@pytest.mark.parametrize("device,dtype", SETTINGS)
def test_fused_model_under_autocast(device, dtype):
    _, twin = _zoo_and_twin(device)
    twin.eval()
    fused = so.fuse(copy.deepcopy(twin), torch.randn(2, 3, 64, 64, device=device))
    x = torch.randn(3, 3, 64, 64, device=device)
    with torch.autocast(device, dtype=dtype), torch.no_grad():
        out, out_ref = fused(x), twin(x)
    assert out.dtype == out_ref.dtype == dtype
    torch.testing.assert_close(out.float(), out_ref.float(), atol=0.1 * out_ref.abs().max().item(), rtol=0.1)
    # The autocast result is a reduced-precision one, not the float32 result.
    with torch.no_grad():
        assert not torch.equal(out.float(), fused(x))


def test_no_autocast_outside_the_region():
    ours, _, args = _ops("cpu")["pointwise_group_conv"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pass
    assert ours(*args).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert ours(*args).dtype == torch.float32


@pytest.mark.parametrize("backend", so.available_backends("cpu"))
def test_residual_of_another_dtype_still_checked(backend):
    """Under autocast a float32 residual is added after the conv, in float32: its shape is still checked, never
    broadcast."""
    x, w = torch.randn(2, 12, 4, 4), torch.randn(6, 4, 1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"residual of the output's shape \[N, C_out, H, W\] = \[2, 6, 4, 4\]"):
            so.pointwise_group_conv(x, w, None, 3, residual=torch.randn(1, 6, 1, 1), backend=backend)
        with pytest.raises(ValueError, match="residual to be on the same device as x"):
            so.pointwise_group_conv(x, w, None, 3, residual=torch.randn(2, 6, 4, 4, device="meta"), backend=backend)


@pytest.mark.parametrize("model", ["zoo-train", "zoo-eval", "fused"])
def test_reference_path_under_autocast(model, monkeypatch):
    """On a device where the depthwise conv and the stem have no compiled kernel (CUDA), their reference path
    casts as the compiled ops' autocast kernels do: the zoo's float32 weights meet activations already in the
    autocast dtype."""
    import shufflenet_ops.functional as functional

    monkeypatch.setattr(functional, "_DEPTHWISE_NATIVE_DEVICES", frozenset())
    monkeypatch.setattr(functional, "_STEM_NATIVE_DEVICES", frozenset())
    if model == "fused":
        test_fused_model_under_autocast("cpu", torch.bfloat16)
    else:
        test_zoo_under_autocast(model.removeprefix("zoo-"), "cpu", torch.bfloat16)
