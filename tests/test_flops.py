"""FlopCounterMode on the custom ops: the same count as the stock ops that
compute the same thing, forward and backward."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import shufflenet_ops as so


def count(fn, *leaves):
    with FlopCounterMode(display=False) as counter:
        fn(*leaves).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("groups,input_shuffle,output_shuffle", [(1, None, None), (3, 3, None), (4, None, 4),
                                                                 (8, 8, 2)])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_group_conv_counts_like_one_dense_conv_per_group(groups, input_shuffle, output_shuffle, bias):
    x = torch.randn(2, 48, 5, 7, requires_grad=True)
    weight = torch.randn(24, 48 // groups, 1, 1, requires_grad=True)
    b = torch.randn(24, requires_grad=True) if bias else None

    def fused(x, weight, *b):
        return so.pointwise_group_conv(x, weight, *b, groups=groups, input_shuffle=input_shuffle,
                                       output_shuffle=output_shuffle, relu=True)

    def per_group(x, weight, *b):
        # Dense convs, for which PyTorch's own formulas are exact in forward and backward.
        if input_shuffle:
            x = torch.channel_shuffle(x, input_shuffle)
        biases = b[0].chunk(groups) if b else [None] * groups
        xs, ws = x.chunk(groups, 1), weight.chunk(groups, 0)
        y = F.relu(torch.cat([F.conv2d(xs[i], ws[i], biases[i]) for i in range(groups)], 1))
        return torch.channel_shuffle(y, output_shuffle) if output_shuffle else y

    leaves = (x, weight) + ((b,) if bias else ())
    assert count(fused, *leaves) == count(per_group, *leaves) > 0


def test_channel_shuffle_is_free_like_torch_channel_shuffle():
    x = torch.randn(2, 12, 4, 4, requires_grad=True)
    assert count(lambda t: so.channel_shuffle(t, 3) * 2, x) == count(lambda t: torch.channel_shuffle(t, 3) * 2, x)


def test_every_defined_op_family_has_formulas():
    from torch.utils.flop_counter import flop_registry

    from shufflenet_ops.ops import NAMESPACE, OpFamily

    # Every family the compiled library defines, found from the dispatcher's names.
    suffix = "pointwise_group_conv"
    prefixes = {name[len(NAMESPACE) + 2 : -len(suffix)] for name in torch._C._dispatch_get_all_op_names()
                if name.startswith(f"{NAMESPACE}::") and name.endswith(suffix)}
    assert prefixes >= {"", "triton_"}
    for family in map(OpFamily, prefixes):
        for op in (family.pointwise_group_conv, family.grad_input, family.grad_weight):
            assert op.overloadpacket in flop_registry, op


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_conv3x3_counts_like_f_conv2d(stride):
    x = torch.randn(2, 12, 9, 7, requires_grad=True)
    weight = torch.randn(12, 1, 3, 3, requires_grad=True)
    b = torch.randn(12, requires_grad=True)
    fused = count(lambda x, w, b: so.depthwise_conv3x3(x, w, b, stride, relu=True), x, weight, b)
    stock = count(lambda x, w, b: F.relu(F.conv2d(x, w, b, stride, 1, groups=12)), x, weight, b)
    assert fused == stock > 0
