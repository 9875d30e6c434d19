"""so.nn modules as drop-ins: ChannelShuffle against torch.nn.ChannelShuffle,
PointwiseGroupConv2d against nn.Conv2d (same parameters, state_dict, output and
gradients) and against so.reference with shuffles and ReLU."""

import pytest
import torch
from torch import nn

import shufflenet_ops as so
from tests.utils import assert_close_to, float64_leaves

DTYPES = [torch.float32, torch.float64, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape,groups", [((2, 12, 5, 7), 3), ((1, 16, 3, 3), 8), ((3, 6, 1, 1), 6), ((0, 4, 2, 2), 2)])
def test_channel_shuffle_matches_torch(dtype, channels_last, shape, groups):
    x = torch.randn(shape).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    ours, theirs = so.nn.ChannelShuffle(groups), nn.ChannelShuffle(groups)
    x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ours(x_ours)
    expected = theirs(x_theirs)
    torch.testing.assert_close(y, expected, atol=0, rtol=0)  # a permutation: exact
    grad = torch.randn_like(expected)
    y.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=0, rtol=0)
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()


@pytest.mark.parametrize("groups,error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (None, TypeError)])
def test_channel_shuffle_rejects_bad_groups(groups, error):
    with pytest.raises(error, match="groups"):
        so.nn.ChannelShuffle(groups)


def test_channel_shuffle_rejects_groups_not_dividing_channels():
    with pytest.raises(ValueError, match=r"groups \(5\) to divide the channels of x \(12\)"):
        so.nn.ChannelShuffle(5)(torch.randn(1, 12, 2, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups,bias", [(1, True), (3, False), (4, True)])
def test_pointwise_group_conv2d_is_a_drop_in_for_conv2d(dtype, groups, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 36, 1, groups=groups, bias=bias).to(dtype)
    ours = so.nn.PointwiseGroupConv2d(24, 36, 1, groups=groups, bias=bias, dtype=dtype)
    assert isinstance(ours, nn.Conv2d)
    assert ours.state_dict().keys() == conv.state_dict().keys()
    ours.load_state_dict(conv.state_dict())
    ours64 = nn.Conv2d(24, 36, 1, groups=groups, bias=bias).double()
    ours64.load_state_dict(conv.state_dict())

    x = torch.randn(2, 24, 6, 5).to(dtype).requires_grad_()
    y = ours(x)
    (x64,) = float64_leaves(x)
    expected = ours64(x64)  # PyTorch's own conv, in float64
    assert y.dtype == dtype
    assert_close_to(y, expected, dtype, "output")
    grad = torch.randn_like(expected)
    y.backward(grad.to(dtype))
    expected.backward(grad)
    assert_close_to(x.grad, x64.grad, dtype, "grad x")
    assert_close_to(ours.weight.grad, ours64.weight.grad, dtype, "grad weight")
    if bias:
        assert_close_to(ours.bias.grad, ours64.bias.grad, dtype, "grad bias")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("input_shuffle,output_shuffle,relu", [(3, None, False), (None, 3, True), (4, 6, True),
                                                               (2, 2, False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pointwise_group_conv2d_shuffles_and_relu_match_reference(dtype, input_shuffle, output_shuffle, relu,
                                                                   channels_last):
    torch.manual_seed(1)
    module = so.nn.PointwiseGroupConv2d(24, 36, groups=3, input_shuffle=input_shuffle,
                                        output_shuffle=output_shuffle, relu=relu, dtype=dtype)
    x = torch.randn(2, 24, 4, 7).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    y = module(x)
    x64, w64, b64 = float64_leaves(x, module.weight, module.bias)
    expected = so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=input_shuffle,
                                                 output_shuffle=output_shuffle, relu=relu)
    assert_close_to(y, expected, dtype, "output")
    grad = torch.randn_like(expected)
    y.backward(grad.to(dtype))
    expected.backward(grad)
    for actual, reference, name in [(x.grad, x64.grad, "x"), (module.weight.grad, w64.grad, "weight"),
                                    (module.bias.grad, b64.grad, "bias")]:
        assert_close_to(actual, reference, dtype, f"grad {name}")


def test_from_conv_shares_parameters():
    conv = nn.Conv2d(12, 12, 1, groups=3)
    module = so.nn.PointwiseGroupConv2d.from_conv(conv, input_shuffle=3, relu=True)
    assert module.weight is conv.weight and module.bias is conv.bias
    x = torch.randn(1, 12, 3, 3)
    expected = torch.relu(conv(torch.channel_shuffle(x, 3)))
    torch.testing.assert_close(module(x), expected, atol=1e-5, rtol=1e-5)
    assert "input_shuffle=3" in repr(module) and "relu=True" in repr(module)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=3), "kernel_size"),
        (dict(stride=2), "stride"),
        (dict(padding=1), "padding"),
        (dict(dilation=2), "dilation"),
        (dict(input_shuffle=5), "input_shuffle"),
        (dict(output_shuffle=0), "output_shuffle"),
        (dict(groups=5), "groups"),
    ],
)
def test_pointwise_group_conv2d_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so.nn.PointwiseGroupConv2d(12, 24, **kwargs)


def test_pointwise_group_conv2d_rejects_non_integer_shuffle():
    with pytest.raises(TypeError, match="output_shuffle"):
        so.nn.PointwiseGroupConv2d(12, 24, output_shuffle=2.0)
