"""Every op under PyTorch's function transforms, against the stock computation
(so.reference): forward-mode AD (dual tensors, torch.func.jvp), torch.func's
grad / vjp / jacrev / jacfwd / hessian, and torch.vmap through the ops' own
batching rules (no slow-loop fallback), including per-sample gradients of a
ShuffleNet unit."""

import contextlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import shufflenet_ops as so
from shufflenet_ops.ops import NATIVE, TRITON
from tests.utils import assert_close_to

F64 = torch.float64
OPS = torch.ops.shufflenet_ops


def _randn(*shape, seed, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# name -> (ours, the stock computation, its tensor arguments). Each function
# takes only tensors, the op's other arguments fixed.
def _cases(dtype=F64):
    x = _randn(2, 12, 5, 6, seed=0, dtype=dtype)
    w = _randn(6, 4, 1, 1, seed=1, dtype=dtype)
    b = _randn(6, seed=2, dtype=dtype)
    r = _randn(2, 6, 5, 6, seed=3, dtype=dtype)
    g = _randn(2, 6, 5, 6, seed=4, dtype=dtype)
    dw = _randn(12, 1, 3, 3, seed=5, dtype=dtype)
    db = _randn(12, seed=6, dtype=dtype)
    img = _randn(2, 3, 11, 9, seed=7, dtype=dtype)
    sw = _randn(8, 3, 3, 3, seed=8, dtype=dtype)
    sb = _randn(8, seed=9, dtype=dtype)
    ref = so.reference

    def conv(shuffles, relu):
        i, o = shuffles
        return (
            lambda x, w, b, r: so.pointwise_group_conv(x, w, b, 3, input_shuffle=i, output_shuffle=o, relu=relu,
                                                       residual=r),
            lambda x, w, b, r: ref.pointwise_group_conv(x, w, b, 3, input_shuffle=i, output_shuffle=o, relu=relu,
                                                        residual=r),
            (x, w, b, r),
        )

    return {
        "conv-both-shuffles-relu": conv((3, 2), True),
        "conv-output-shuffle": conv((None, 3), False),
        "channel_shuffle": (lambda x: so.channel_shuffle(x, 3), lambda x: torch.channel_shuffle(x, 3), (x,)),
        "grad_input": (
            lambda g, w: OPS.pointwise_group_conv_grad_input(g, w, 3, 3, 2),
            lambda g, w: torch.func.vjp(
                lambda x_: ref.pointwise_group_conv(x_, w, None, 3, input_shuffle=3, output_shuffle=2), x)[1](g)[0],
            (g, w),
        ),
        "grad_weight": (
            lambda g, x: OPS.pointwise_group_conv_grad_weight(g, x, 3, 3, 2),
            lambda g, x: torch.func.vjp(
                lambda w_: ref.pointwise_group_conv(x, w_, None, 3, input_shuffle=3, output_shuffle=2), w)[1](g)[0],
            (g, x),
        ),
        "grad_bias": (
            lambda g: OPS.pointwise_group_conv_grad_bias(g, 2),
            lambda g: torch.func.vjp(
                lambda b_: ref.pointwise_group_conv(x, w, b_, 3, output_shuffle=2), b)[1](g)[0],
            (g,),
        ),
        "depthwise-s1-relu": (
            lambda x, w, b: so.depthwise_conv3x3(x, w, b, 1, relu=True),
            lambda x, w, b: ref.depthwise_conv3x3(x, w, b, 1, relu=True),
            (x, dw, db),
        ),
        "depthwise-s2": (
            lambda x, w, b: so.depthwise_conv3x3(x, w, b, 2),
            lambda x, w, b: ref.depthwise_conv3x3(x, w, b, 2),
            (x, dw, db),
        ),
        "max_pool-s2": (lambda x: so.max_pool3x3(x, 2), lambda x: ref.max_pool3x3(x, 2), (x,)),
        "max_pool-s1": (lambda x: so.max_pool3x3(x, 1), lambda x: ref.max_pool3x3(x, 1), (x,)),
        "avg_pool-s2": (lambda x: so.avg_pool3x3(x, 2), lambda x: ref.avg_pool3x3(x, 2), (x,)),
        "stem": (so.stem_conv3x3_maxpool, ref.stem_conv3x3_maxpool, (img, sw, sb)),
    }


CASES = _cases()
NAMES = list(CASES)


def _leaves(args):
    return tuple(a.detach().clone().requires_grad_() for a in args)


def _assert_trees_close(actual, expected, dtype=F64):
    actual, expected = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert_close_to(a, e, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_forward_and_batched(name):
    """Forward AD, reverse AD, and both batched through vmap (torch.autograd.gradcheck's own checks)."""
    ours, _, args = CASES[name]
    assert torch.autograd.gradcheck(ours, _leaves(args), check_forward_ad=True, check_batched_grad=True,
                                     check_batched_forward_grad=True)


@pytest.mark.parametrize("name", NAMES)
def test_jvp_of_each_argument(name):
    """The tangent of each tensor argument alone, and of all at once, against the stock computation's."""
    ours, stock, args = CASES[name]
    tangents = [_randn(*a.shape, seed=10 + i) for i, a in enumerate(args)]
    subsets = [[i] for i in range(len(args))] + ([list(range(len(args)))] if len(args) > 1 else [])
    for subset in subsets:
        def restricted(fn):
            return lambda *chosen: fn(*[chosen[subset.index(i)] if i in subset else a for i, a in enumerate(args)])
        primals = tuple(args[i] for i in subset)
        chosen_tangents = tuple(tangents[i] for i in subset)
        out, t = jvp(restricted(ours), primals, chosen_tangents)
        out_ref, t_ref = jvp(restricted(stock), primals, chosen_tangents)
        assert_close_to(out, out_ref, F64, f"{name} primal, tangents of {subset}")
        assert t_ref.abs().max() > 0, "a zero reference tangent could hide a zero tangent"
        assert_close_to(t, t_ref, F64, f"{name} tangent of arguments {subset}")


@pytest.mark.parametrize("name", NAMES)
def test_dual_tensors(name):
    """torch.autograd.forward_ad: the output carries the tangent (never None, never silently zero)."""
    ours, stock, args = CASES[name]
    tangents = [_randn(*a.shape, seed=20 + i) for i, a in enumerate(args)]
    results = []
    for fn in (ours, stock):
        with fwAD.dual_level():
            out = fn(*[fwAD.make_dual(a, t) for a, t in zip(args, tangents)])
            results.append(fwAD.unpack_dual(out).tangent)
    assert results[0] is not None, f"{name}: no tangent on the output"
    assert_close_to(results[0], results[1], F64, name)


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_vjp_jacrev_jacfwd(name):
    ours, stock, args = CASES[name]
    argnums = tuple(range(len(args)))
    cotangent = _randn(*stock(*args).shape, seed=30)

    def loss(fn):
        return lambda *a: (fn(*a) * cotangent).sum()

    _assert_trees_close(grad(loss(ours), argnums=argnums)(*args), grad(loss(stock), argnums=argnums)(*args))
    _assert_trees_close(vjp(ours, *args)[1](cotangent), vjp(stock, *args)[1](cotangent))
    _assert_trees_close(jacrev(ours, argnums=argnums)(*args), jacrev(stock, argnums=argnums)(*args))
    _assert_trees_close(jacfwd(ours, argnums=argnums)(*args), jacfwd(stock, argnums=argnums)(*args))


@pytest.mark.parametrize("name", ["conv-both-shuffles-relu", "depthwise-s2", "stem"])
def test_hessian(name):
    ours, stock, args = CASES[name]

    def loss(fn):
        return lambda w: fn(args[0], w, *args[2:]).square().sum()

    _assert_trees_close(hessian(loss(ours))(args[1]), hessian(loss(stock))(args[1]))


def _vmapped_args(args, in_dims, size=3):
    """``args`` with ``size`` different samples stacked at each dim of ``in_dims`` (None: left alone)."""
    out = []
    for i, (a, d) in enumerate(zip(args, in_dims)):
        if d is None:
            out.append(a)
        else:
            samples = [_randn(*a.shape, seed=40 + 7 * i + k) for k in range(size)]
            out.append(torch.stack(samples, d))
    return tuple(out)


@contextlib.contextmanager
def batching_rules_only():
    """vmap without PyTorch's per-sample fallback: an op without a batching rule raises."""
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        yield
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(enabled)


def test_vmap_without_rules_raises():
    """The check above can fail: an op without a batching rule is an error under it."""
    lib = torch.library.Library("shufflenet_ops_test", "FRAGMENT")
    lib.define("scale(Tensor x) -> Tensor")
    lib.impl("scale", lambda x: x * 2, "CPU")
    with batching_rules_only(), pytest.raises(RuntimeError, match="vmap fallback"):
        vmap(torch.ops.shufflenet_ops_test.scale)(torch.ones(2, 3))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_every_argument_pattern(name):
    """Each argument vmapped alone, all of them, at dims other than 0: the op's
    batching rule, never PyTorch's per-sample fallback."""
    ours, stock, args = CASES[name]
    n = len(args)
    patterns = [tuple(1 if j == i else None for j in range(n)) for i in range(n)]
    patterns.append(tuple(min(1, a.dim()) for a in args))
    for in_dims in patterns:
        batched = _vmapped_args(args, in_dims)
        with batching_rules_only():
            out = vmap(ours, in_dims=in_dims)(*batched)
        assert_close_to(out, vmap(stock, in_dims=in_dims)(*batched), F64, f"{name} vmap in_dims={in_dims}")


def _unit_and_stock_twin(stride):
    """An eval-mode so.models unit (BatchNorms folded into the fused ops) and
    so.fuse of the stock unit, with the reference computation as the stock unit."""
    torch.manual_seed(0)
    in_channels = 24 if stride == 2 else 48
    unit = so.models.ShuffleUnit(in_channels, 48, 3, stride).double()
    for m in unit.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return unit.eval(), in_channels


@pytest.mark.parametrize("stride", [1, 2])
def test_per_sample_gradients_of_a_unit(stride, monkeypatch):
    """vmap(grad(loss)) over the samples of a batch: per-sample gradients of every
    parameter of a fused unit, against the same unit run on the stock ops, and
    against one backward per sample."""
    unit, in_channels = _unit_and_stock_twin(stride)
    params = {k: v.detach() for k, v in unit.named_parameters()}
    buffers = {k: v.detach() for k, v in unit.named_buffers()}
    x = _randn(4, in_channels, 6, 6, seed=50)
    target = _randn(4, 48, 6 // stride, 6 // stride, seed=51)

    def loss(params, x, target):
        y = torch.func.functional_call(unit, (params, buffers), (x.unsqueeze(0),))
        return ((y.squeeze(0) - target) ** 2).sum()

    with batching_rules_only():
        per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    one_by_one = [grad(loss)(params, x[i], target[i]) for i in range(x.shape[0])]
    # The same unit with its fused calls on the stock computation.
    monkeypatch.setattr(so.models, "pointwise_group_conv", so.reference.pointwise_group_conv)
    monkeypatch.setattr(so.models, "depthwise_conv3x3", so.reference.depthwise_conv3x3)
    stock = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for k in params:
        assert_close_to(per_sample[k], stock[k], F64, f"{k} against the stock ops")
        assert_close_to(per_sample[k], torch.stack([g[k] for g in one_by_one]), F64, f"{k}, one sample at a time")


@pytest.mark.parametrize("family", ["native", "triton"])
def test_families_under_transforms_float32(family):
    """Both op families (the Triton one under the interpreter on CPU) in float32:
    jvp, vjp and vmap of the conv against the stock computation."""
    ops = NATIVE if family == "native" else TRITON
    if family == "triton" and "triton" not in so.available_backends("cpu"):
        pytest.skip("the Triton backend needs triton, and TRITON_INTERPRET=1 on CPU")
    x, w, b, r = (a.float() for a in CASES["conv-both-shuffles-relu"][2])
    stock = CASES["conv-both-shuffles-relu"][1]

    def ours(x, w, b, r):
        return ops.pointwise_group_conv(x, w, b, 3, 3, 2, True, r)

    tangents = tuple(torch.ones_like(a) * 0.5 for a in (x, w, b, r))
    _assert_trees_close(jvp(ours, (x, w, b, r), tangents), jvp(stock, (x, w, b, r), tangents), torch.float32)
    cot = torch.ones(2, 6, 5, 6)
    _assert_trees_close(vjp(ours, x, w, b, r)[1](cot), vjp(stock, x, w, b, r)[1](cot), torch.float32)
    ws = torch.stack([w, 2 * w])
    with batching_rules_only():
        out = vmap(ours, in_dims=(None, 0, None, None))(x, ws, b, r)
    _assert_trees_close(out, vmap(stock, in_dims=(None, 0, None, None))(x, ws, b, r), torch.float32)
