"""Property test: random valid configurations of pointwise_group_conv match
so.reference in the output and every gradient."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shufflenet_ops as so
from tests.utils import assert_close_to, float64_leaves


def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def configurations(draw):
    groups = draw(st.sampled_from([1, 2, 3, 4, 8]))
    c_in = groups * draw(st.integers(1, 12))
    c_out = groups * draw(st.integers(1, 12))
    return dict(
        n=draw(st.integers(0, 3)),
        c_in=c_in,
        c_out=c_out,
        h=draw(st.integers(1, 9)),
        w=draw(st.integers(1, 40)),
        groups=groups,
        input_shuffle=draw(st.sampled_from([None] + divisors(c_in))),
        output_shuffle=draw(st.sampled_from([None] + divisors(c_out))),
        relu=draw(st.booleans()),
        bias=draw(st.booleans()),
        channels_last=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=60, deadline=None)
@given(configurations())
def test_random_configurations_match_reference(cfg):
    gen = torch.Generator().manual_seed(cfg["seed"])
    dtype = cfg["dtype"]
    x = torch.randn(cfg["n"], cfg["c_in"], cfg["h"], cfg["w"], generator=gen, dtype=torch.float64)
    weight = torch.randn(cfg["c_out"], cfg["c_in"] // cfg["groups"], 1, 1, generator=gen, dtype=torch.float64)
    bias = torch.randn(cfg["c_out"], generator=gen, dtype=torch.float64) if cfg["bias"] else None
    if cfg["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    leaves = [None if t is None else t.to(dtype).requires_grad_() for t in (x, weight, bias)]
    kwargs = dict(input_shuffle=cfg["input_shuffle"], output_shuffle=cfg["output_shuffle"], relu=cfg["relu"])

    y = so.pointwise_group_conv(*leaves, cfg["groups"], **kwargs)
    ref_leaves = float64_leaves(*leaves)
    y_ref = so.reference.pointwise_group_conv(*ref_leaves, cfg["groups"], **kwargs)
    assert_close_to(y, y_ref, dtype, "output")

    grad = torch.randn(y_ref.shape, generator=gen, dtype=torch.float64)
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    for name, got, want in zip(("x", "weight", "bias"), leaves, ref_leaves):
        if got is not None:
            assert_close_to(got.grad, want.grad, dtype, f"grad {name}")
