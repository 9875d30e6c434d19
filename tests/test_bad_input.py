"""Bad input raises a clear exception naming the argument, through the public
functions and through the registered ops called directly (the C++ checks)."""

import pytest
import torch

import shufflenet_ops as so

OPS = torch.ops.shufflenet_ops


def conv_args(**overrides):
    args = dict(
        x=torch.randn(2, 12, 4, 4),
        weight=torch.randn(6, 4, 1, 1),
        bias=torch.randn(6),
        groups=3,
        input_shuffle=1,
        output_shuffle=3,
        residual=None,
    )
    args.update(overrides)
    return args


# (overrides, exception type, message pattern)
CONV_CASES = {
    "x-not-4d": (dict(x=torch.randn(2, 12, 4)), ValueError, r"x to be a 4-D tensor"),
    "groups-zero": (dict(groups=0), ValueError, r"groups to be a positive integer, got 0"),
    "groups-negative": (dict(groups=-3), ValueError, r"groups to be a positive integer, got -3"),
    "groups-not-dividing-c-in": (
        dict(groups=5, weight=torch.randn(5, 2, 1, 1), bias=None), ValueError, r"groups \(5\) to divide the input channels \(12\)"
    ),
    "groups-not-dividing-c-out": (
        dict(groups=3, weight=torch.randn(7, 4, 1, 1), bias=None, output_shuffle=1),
        ValueError,
        r"groups \(3\) to divide the output channels \(7\)",
    ),
    "weight-wrong-c-in": (dict(weight=torch.randn(6, 3, 1, 1)), ValueError, r"weight.size\(1\) \(3\) to equal C_in / groups"),
    "weight-kernel-3x3": (dict(weight=torch.randn(6, 4, 3, 3)), ValueError, r"weight of shape \[C_out, C_in / groups, 1, 1\]"),
    "weight-3d": (dict(weight=torch.randn(6, 4, 1)), ValueError, r"weight of shape"),
    "input-shuffle-zero": (dict(input_shuffle=0), ValueError, r"input_shuffle to be a positive integer, got 0"),
    "input-shuffle-not-dividing": (dict(input_shuffle=5), ValueError, r"input_shuffle \(5\) to divide the input channels \(12\)"),
    "output-shuffle-negative": (dict(output_shuffle=-2), ValueError, r"output_shuffle to be a positive integer"),
    "output-shuffle-not-dividing": (dict(output_shuffle=4), ValueError, r"output_shuffle \(4\) to divide the output channels \(6\)"),
    "weight-dtype": (dict(weight=torch.randn(6, 4, 1, 1, dtype=torch.float64)), TypeError, r"weight to have the same dtype as x"),
    "bias-dtype": (dict(bias=torch.randn(6, dtype=torch.bfloat16)), TypeError, r"bias to have the same dtype as x"),
    "bias-shape": (dict(bias=torch.randn(5)), ValueError, r"bias of shape \[C_out\] = \[6\]"),
    "integer-input": (
        dict(x=torch.ones(2, 12, 4, 4, dtype=torch.int32), weight=torch.ones(6, 4, 1, 1, dtype=torch.int32), bias=None),
        TypeError,
        r"x to be a floating-point tensor",
    ),
    "device-mismatch": (dict(weight=torch.randn(6, 4, 1, 1, device="meta")), ValueError, r"weight to be on the same device as x"),
    "residual-shape": (dict(residual=torch.randn(2, 6, 4, 3)), ValueError,
                       r"residual of the output's shape \[N, C_out, H, W\] = \[2, 6, 4, 4\], got \[2, 6, 4, 3\]"),
    "residual-rank": (dict(residual=torch.randn(2, 6, 16)), ValueError, r"residual of the output's shape"),
    "residual-channels": (dict(residual=torch.randn(2, 12, 4, 4)), ValueError, r"residual of the output's shape"),
    "residual-dtype": (dict(residual=torch.randn(2, 6, 4, 4, dtype=torch.float64)), TypeError,
                       r"residual to have the same dtype as x"),
    "residual-device": (dict(residual=torch.randn(2, 6, 4, 4, device="meta")), ValueError,
                        r"residual to be on the same device as x"),
    # Stock conv2d rejects C_out = 0 too ("expected weight to be at least 3 at dimension 0").
    "weight-no-output-channels": (dict(weight=torch.randn(0, 4, 1, 1), bias=None, output_shuffle=1), ValueError,
                                  r"weight.size\(0\) \(C_out = 0\) to be a positive multiple of groups \(3\)"),
    "weight-2d-no-output-channels": (dict(weight=torch.randn(0, 4), bias=torch.randn(0), output_shuffle=1),
                                     ValueError, r"weight.size\(0\) \(C_out = 0\) to be a positive multiple"),
}


@pytest.mark.parametrize("backend", so.available_backends("cpu"))
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_public_pointwise_group_conv(case, backend):
    overrides, error, pattern = CONV_CASES[case]
    a = conv_args(**overrides)
    with pytest.raises(error, match=pattern):
        so.pointwise_group_conv(a["x"], a["weight"], a["bias"], a["groups"], input_shuffle=a["input_shuffle"],
                                output_shuffle=a["output_shuffle"], residual=a["residual"], backend=backend)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_registered_op_called_directly(case):
    overrides, error, pattern = CONV_CASES[case]
    a = conv_args(**overrides)
    with pytest.raises(error, match=pattern):
        OPS.pointwise_group_conv(a["x"], a["weight"], a["bias"], a["groups"], a["input_shuffle"], a["output_shuffle"], False,
                                 a["residual"])


def test_floating_dtype_no_cpu_operator_computes_is_named():
    # float16 runs PyTorch's own CPU operators inside the op (tests/test_dtypes.py); float8 has none.
    x, w = torch.zeros(1, 4, 2, 2, dtype=torch.float8_e4m3fn), torch.zeros(4, 4, 1, 1, dtype=torch.float8_e4m3fn)
    with pytest.raises(TypeError, match=r"dtype Float8_e4m3fn is computed neither by this kernel nor by PyTorch's "
                                        r"own cpu operators .*; convert the tensors to float32"):
        so.pointwise_group_conv(x, w, backend="native")


def _x():
    return torch.randn(1, 6, 4, 4)


def _pointwise_weight():
    return torch.randn(6, 2, 1, 1)


def _depthwise_weight():
    return torch.randn(6, 1, 3, 3)


def _stem_weight():
    return torch.randn(4, 6, 3, 3)


# (public op, call with one argument of a wrong Python type, argument, expected, given type)
TYPE_CASES = {
    "channel_shuffle-x": (so.channel_shuffle, lambda: so.channel_shuffle(3.0, 1), "x", "a torch.Tensor", "float"),
    "channel_shuffle-groups-float": (so.channel_shuffle, lambda: so.channel_shuffle(_x(), 2.0), "groups", "an int",
                                     "float"),
    "channel_shuffle-groups-bool": (so.channel_shuffle, lambda: so.channel_shuffle(_x(), True), "groups", "an int",
                                    "bool"),
    "channel_shuffle-groups-str": (so.channel_shuffle, lambda: so.channel_shuffle(_x(), "2"), "groups", "an int", "str"),
    "channel_shuffle-backend": (so.channel_shuffle, lambda: so.channel_shuffle(_x(), 2, backend=3), "backend", "a str",
                                "int"),
    "pointwise_group_conv-x": (so.pointwise_group_conv, lambda: so.pointwise_group_conv([[1.0]], _pointwise_weight()),
                               "x", "a torch.Tensor", "list"),
    "pointwise_group_conv-weight": (so.pointwise_group_conv, lambda: so.pointwise_group_conv(_x(), [[1.0]]), "weight",
                                    "a torch.Tensor", "list"),
    "pointwise_group_conv-bias": (so.pointwise_group_conv,
                                  lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), [0.0], 3), "bias",
                                  "a torch.Tensor", "list"),
    "pointwise_group_conv-residual": (so.pointwise_group_conv,
                                      lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), None, 3, residual=0.0),
                                      "residual", "a torch.Tensor", "float"),
    "pointwise_group_conv-groups-float": (so.pointwise_group_conv,
                                          lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), groups=3.0),
                                          "groups", "an int", "float"),
    "pointwise_group_conv-groups-bool": (so.pointwise_group_conv,
                                         lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), groups=True),
                                         "groups", "an int", "bool"),
    "pointwise_group_conv-input_shuffle": (so.pointwise_group_conv,
                                           lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), groups=3,
                                                                           input_shuffle=2.0),
                                           "input_shuffle", "an int", "float"),
    "pointwise_group_conv-output_shuffle": (so.pointwise_group_conv,
                                            lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), groups=3,
                                                                            output_shuffle="3"),
                                            "output_shuffle", "an int", "str"),
    "pointwise_group_conv-backend": (so.pointwise_group_conv,
                                     lambda: so.pointwise_group_conv(_x(), _pointwise_weight(), groups=3, backend=3),
                                     "backend", "a str", "int"),
    "depthwise_conv3x3-x": (so.depthwise_conv3x3, lambda: so.depthwise_conv3x3(None, _depthwise_weight()), "x",
                            "a torch.Tensor", "NoneType"),
    "depthwise_conv3x3-weight": (so.depthwise_conv3x3, lambda: so.depthwise_conv3x3(_x(), 1.0), "weight",
                                 "a torch.Tensor", "float"),
    "depthwise_conv3x3-bias": (so.depthwise_conv3x3, lambda: so.depthwise_conv3x3(_x(), _depthwise_weight(), 0.0),
                               "bias", "a torch.Tensor", "float"),
    "depthwise_conv3x3-stride": (so.depthwise_conv3x3,
                                 lambda: so.depthwise_conv3x3(_x(), _depthwise_weight(), stride=2.0), "stride",
                                 "an int", "float"),
    "max_pool3x3-x": (so.max_pool3x3, lambda: so.max_pool3x3([1.0]), "x", "a torch.Tensor", "list"),
    "max_pool3x3-stride": (so.max_pool3x3, lambda: so.max_pool3x3(_x(), 2.0), "stride", "an int", "float"),
    "avg_pool3x3-x": (so.avg_pool3x3, lambda: so.avg_pool3x3([1.0]), "x", "a torch.Tensor", "list"),
    "avg_pool3x3-stride": (so.avg_pool3x3, lambda: so.avg_pool3x3(_x(), True), "stride", "an int", "bool"),
    "stem_conv3x3_maxpool-x": (so.stem_conv3x3_maxpool, lambda: so.stem_conv3x3_maxpool(1, _stem_weight()), "x",
                               "a torch.Tensor", "int"),
    "stem_conv3x3_maxpool-weight": (so.stem_conv3x3_maxpool, lambda: so.stem_conv3x3_maxpool(_x(), None), "weight",
                                    "a torch.Tensor", "NoneType"),
    "stem_conv3x3_maxpool-bias": (so.stem_conv3x3_maxpool,
                                  lambda: so.stem_conv3x3_maxpool(_x(), _stem_weight(), [0.0]), "bias",
                                  "a torch.Tensor", "list"),
}


@pytest.mark.parametrize("case", TYPE_CASES)
def test_type_errors_name_the_public_op(case):
    op, call, argument, expected, given = TYPE_CASES[case]
    with pytest.raises(TypeError, match=rf"^{op.__name__}: expected {argument} to be {expected}, got {given}$"):
        call()


def test_type_cases_cover_every_public_op():
    public_ops = {getattr(so, name) for name in so.__all__
                  if getattr(getattr(so, name), "__module__", None) == "shufflenet_ops.functional"}
    assert {case[0] for case in TYPE_CASES.values()} == public_ops


@pytest.mark.parametrize("module,call,argument", [
    ("ChannelShuffle", lambda: so.nn.ChannelShuffle(2.0), "groups"),
    ("PointwiseGroupConv2d", lambda: so.nn.PointwiseGroupConv2d(12, 24, output_shuffle=2.0), "output_shuffle"),
])
def test_module_type_errors_name_the_module(module, call, argument):
    with pytest.raises(TypeError, match=rf"^{module}: expected {argument} to be an int, got float$"):
        call()


SHUFFLE_CASES = [
    (torch.randn(4, 6), 2, ValueError, r"x to have at least 3 dimensions"),
    (torch.randn(2, 6, 3, 3), 0, ValueError, r"groups to be a positive integer, got 0"),
    (torch.randn(2, 6, 3, 3), -2, ValueError, r"groups to be a positive integer, got -2"),
    (torch.randn(2, 6, 3, 3), 4, ValueError, r"groups \(4\) to divide the channels of x \(6\)"),
]


@pytest.mark.parametrize("x,groups,error,pattern", SHUFFLE_CASES)
@pytest.mark.parametrize("entry", ["registered"] + [f"public-{b}" for b in so.available_backends("cpu")])
def test_channel_shuffle(x, groups, error, pattern, entry):
    if entry == "registered":
        op = OPS.channel_shuffle
    else:
        def op(x, groups):
            return so.channel_shuffle(x, groups, backend=entry.removeprefix("public-"))
    with pytest.raises(error, match=pattern):
        op(x, groups)


GRAD_CASES = [
    ("grad_input-grad-channels", lambda: OPS.pointwise_group_conv_grad_input(torch.randn(2, 5, 3, 3), torch.randn(6, 4, 1, 1), 3, 1, 1),
     ValueError, r"grad_out.size\(1\) \(5\) to equal weight.size\(0\) \(6\)"),
    ("grad_input-groups", lambda: OPS.pointwise_group_conv_grad_input(torch.randn(2, 6, 3, 3), torch.randn(6, 4, 1, 1), 0, 1, 1),
     ValueError, r"groups to be a positive integer"),
    ("grad_input-shuffle", lambda: OPS.pointwise_group_conv_grad_input(torch.randn(2, 6, 3, 3), torch.randn(6, 4, 1, 1), 3, 5, 1),
     ValueError, r"input_shuffle \(5\) to divide the input channels \(12\)"),
    ("grad_weight-pixels", lambda: OPS.pointwise_group_conv_grad_weight(torch.randn(2, 6, 3, 3), torch.randn(2, 12, 3, 4), 3, 1, 1),
     ValueError, r"agree in N, H and W"),
    ("grad_weight-groups", lambda: OPS.pointwise_group_conv_grad_weight(torch.randn(2, 6, 3, 3), torch.randn(2, 12, 3, 3), 5, 1, 1),
     ValueError, r"groups \(5\) to divide the input channels \(12\)"),
    ("grad_weight-dtype", lambda: OPS.pointwise_group_conv_grad_weight(torch.randn(2, 6, 3, 3), torch.randn(2, 12, 3, 3, dtype=torch.float64), 3, 1, 1),
     TypeError, r"x to have the same dtype as grad_out"),
    ("grad_input-no-output-channels",
     lambda: OPS.pointwise_group_conv_grad_input(torch.randn(2, 0, 3, 3), torch.randn(0, 4, 1, 1), 3, 1, 1),
     ValueError, r"pointwise_group_conv_grad_input: expected weight.size\(0\) \(C_out = 0\) to be a positive multiple"),
    ("grad_weight-no-output-channels",
     lambda: OPS.pointwise_group_conv_grad_weight(torch.randn(2, 0, 3, 3), torch.randn(2, 12, 3, 3), 3, 1, 1),
     ValueError, r"pointwise_group_conv_grad_weight: expected grad_out.size\(1\) \(C_out = 0\) to be a positive"),
    ("grad_bias-shuffle", lambda: OPS.pointwise_group_conv_grad_bias(torch.randn(2, 6, 3, 3), 4),
     ValueError, r"output_shuffle \(4\) to divide the output channels \(6\)"),
    ("grad_bias-rank", lambda: OPS.pointwise_group_conv_grad_bias(torch.randn(2, 6, 3), 1),
     ValueError, r"grad_out to be a 4-D tensor"),
]


@pytest.mark.parametrize("name,call,error,pattern", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_backward_ops(name, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()
