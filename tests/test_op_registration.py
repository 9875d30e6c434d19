"""The registered ops as PyTorch sees them: torch.library.opcheck (schema, fake
kernels, autograd registration), gradcheck in float64, and torch.compile."""

import pytest
import torch
import torch.nn.functional as F

import shufflenet_ops as so
from tests.utils import assert_close_to, conv_inputs, float64_leaves

OPS = torch.ops.shufflenet_ops


def layouts(x):
    return [x, x.to(memory_format=torch.channels_last), x[:, :, :, 1:]]


def conv_samples():
    for relu in (False, True):
        for input_shuffle, output_shuffle in [(1, 1), (3, 1), (1, 3), (3, 2)]:
            x, w, b = conv_inputs(2, 12, 6, 3, 4, 3, torch.float32)
            for xx in layouts(x.detach()):
                yield (xx.requires_grad_(), w, b, 3, input_shuffle, output_shuffle, relu)
            yield (x, w, None, 3, input_shuffle, output_shuffle, relu)


@pytest.mark.parametrize("args", list(conv_samples()))
def test_opcheck_pointwise_group_conv(args):
    torch.library.opcheck(OPS.pointwise_group_conv, args)


@pytest.mark.parametrize("x", layouts(torch.randn(2, 12, 3, 4, requires_grad=True).detach()))
def test_opcheck_channel_shuffle(x):
    torch.library.opcheck(OPS.channel_shuffle, (x.requires_grad_(), 4))


@pytest.mark.parametrize("shuffles", [(1, 1), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck_backward_ops(shuffles, channels_last):
    grad = torch.randn(2, 6, 3, 4)
    x = torch.randn(2, 12, 3, 4)
    if channels_last:
        grad, x = grad.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    w = torch.randn(6, 4, 1, 1)
    torch.library.opcheck(OPS.pointwise_group_conv_grad_input, (grad, w, 3, *shuffles))
    torch.library.opcheck(OPS.pointwise_group_conv_grad_weight, (grad, x, 3, *shuffles))
    torch.library.opcheck(OPS.pointwise_group_conv_grad_bias, (grad, shuffles[1]))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shuffles", [(None, None), (3, None), (None, 3), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck(relu, shuffles, channels_last):
    x, w, b = conv_inputs(2, 12, 6, 3, 3, 3, torch.float64, channels_last=channels_last, seed=3)
    input_shuffle, output_shuffle = shuffles

    def fn(x, w, b):
        return so.pointwise_group_conv(x, w, b, 3, input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu)

    assert torch.autograd.gradcheck(fn, (x, w, b))


class ShuffleUnit(torch.nn.Module):
    """A ShuffleNet v1 stride-1 unit built on the fused ops."""

    def __init__(self, channels=24, groups=3):
        super().__init__()
        bottleneck = channels // 4
        self.groups = groups
        self.compress = torch.nn.Parameter(torch.randn(bottleneck, channels // groups, 1, 1) * 0.2)
        self.compress_bias = torch.nn.Parameter(torch.randn(bottleneck) * 0.1)
        self.depthwise = torch.nn.Conv2d(bottleneck, bottleneck, 3, padding=1, groups=bottleneck)
        self.expand = torch.nn.Parameter(torch.randn(channels, bottleneck // groups, 1, 1) * 0.2)

    def forward(self, x, impl=so):
        y = impl.pointwise_group_conv(x, self.compress, self.compress_bias, self.groups,
                                      output_shuffle=self.groups, relu=True)
        y = self.depthwise(y)
        y = impl.pointwise_group_conv(y, self.expand, None, self.groups)
        return F.relu(x + y)


@pytest.mark.parametrize("channels_last", [False, True])
def test_torch_compile_fullgraph(channels_last):
    torch._dynamo.reset()
    unit = ShuffleUnit()
    x = torch.randn(2, 24, 8, 8)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    compiled = torch.compile(unit, fullgraph=True)
    x_compiled = x.clone().requires_grad_()
    y = compiled(x_compiled)
    y.square().sum().backward()

    x_ref = x.clone().requires_grad_()
    unit_ref = ShuffleUnit()
    unit_ref.load_state_dict(unit.state_dict())
    y_ref = unit_ref(x_ref, impl=so.reference)
    y_ref.square().sum().backward()
    assert_close_to(y, y_ref, torch.float32, "output")
    assert_close_to(x_compiled.grad, x_ref.grad, torch.float32, "grad x")
    for (name, p), p_ref in zip(unit.named_parameters(), unit_ref.parameters()):
        assert_close_to(p.grad, p_ref.grad, torch.float32, f"grad {name}")


def test_export_keeps_the_fused_op():
    unit = ShuffleUnit().eval()
    program = torch.export.export(unit, (torch.randn(1, 24, 8, 8),))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "shufflenet_ops.pointwise_group_conv.default" in targets
    x = torch.randn(1, 24, 8, 8)
    assert_close_to(program.module()(x), unit(x, impl=so.reference), torch.float32, "exported output")
