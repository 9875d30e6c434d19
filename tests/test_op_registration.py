"""The registered ops as PyTorch sees them: torch.library.opcheck (schema, fake
kernels, autograd registration), gradcheck in float64, and torch.compile."""

import pytest
import torch

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
            residual = torch.randn(2, 6, 3, 5)
            for rr in (residual[..., 1:].contiguous(), residual[..., 1:].contiguous(memory_format=torch.channels_last),
                       residual[..., 1:]):
                yield (x, w, b, 3, input_shuffle, output_shuffle, relu, rr.requires_grad_())


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
    # Inputs that require grad: opcheck then checks the ops' own autograd too.
    grad, x, w = (t.requires_grad_() for t in (grad, x, w))
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
    # Second derivatives too: the backward is differentiable.
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_with_residual(relu, channels_last):
    x, w, b = conv_inputs(2, 12, 6, 3, 3, 3, torch.float64, channels_last=channels_last, seed=4)
    residual = torch.randn(2, 6, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b, residual):
        return so.pointwise_group_conv(x, w, b, 3, input_shuffle=3, output_shuffle=2, relu=relu, residual=residual)

    assert torch.autograd.gradcheck(fn, (x, w, b, residual))
    assert torch.autograd.gradgradcheck(fn, (x, w, b, residual))


@pytest.mark.parametrize("shuffles", [(1, 1), (3, 2), (2, 6)])
def test_gradcheck_backward_ops(shuffles):
    """Each backward op differentiated on its own, in every tensor argument."""
    grad = torch.randn(2, 6, 3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 12, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, w: OPS.pointwise_group_conv_grad_input(g, w, 3, *shuffles), (grad, w))
    assert torch.autograd.gradcheck(lambda g, x: OPS.pointwise_group_conv_grad_weight(g, x, 3, *shuffles), (grad, x))
    assert torch.autograd.gradcheck(lambda g: OPS.pointwise_group_conv_grad_bias(g, shuffles[1]), (grad,))


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("wanted", ["x", "weight", "bias", "residual"])
def test_backward_computes_only_the_gradients_asked_for(wanted):
    x, w, b = conv_inputs(2, 12, 6, 3, 3, 3, torch.float32)
    residual = torch.randn(2, 6, 3, 3, requires_grad=True)
    leaves = {"x": x, "weight": w, "bias": b, "residual": residual}
    y = so.pointwise_group_conv(x, w, b, 3, output_shuffle=3, relu=True, residual=residual)
    grad = torch.randn_like(y)
    with CountOps() as counted:
        (got,) = torch.autograd.grad(y, leaves[wanted], grad)
    op_of = {"x": "grad_input", "weight": "grad_weight", "bias": "grad_bias"}
    ran = {name for name, op in op_of.items() if f"shufflenet_ops::pointwise_group_conv_{op}" in counted.names}
    assert ran == ({wanted} if wanted in op_of else set())  # the residual's gradient is the masked output's

    leaves64 = dict(zip(leaves, float64_leaves(*leaves.values())))
    y64 = so.reference.pointwise_group_conv(leaves64["x"], leaves64["weight"], leaves64["bias"], 3,
                                            output_shuffle=3, relu=True, residual=leaves64["residual"])
    (expected,) = torch.autograd.grad(y64, leaves64[wanted], grad.double())
    assert_close_to(got, expected, torch.float32, f"grad {wanted}")


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
        return impl.pointwise_group_conv(y, self.expand, None, self.groups, relu=True, residual=x)


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


def test_two_dimensional_weight_and_its_gradient():
    """A [C_out, C_in / groups] weight: the output and the weight gradient in that shape."""
    x, w, b = conv_inputs(2, 12, 6, 3, 3, 3, torch.float32)
    w2 = w.detach().view(6, 4).requires_grad_()
    y = so.pointwise_group_conv(x, w2, b, 3, input_shuffle=2, output_shuffle=3, relu=True)
    x64, w64, b64 = float64_leaves(x, w, b)
    y64 = so.reference.pointwise_group_conv(x64, w64, b64, 3, input_shuffle=2, output_shuffle=3, relu=True)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, w2, b), grad)
    expected = torch.autograd.grad(y64, (x64, w64, b64), grad.double())
    assert_close_to(y, y64, torch.float32, "output")
    assert got[1].shape == w2.shape
    for name, g, e in zip(("x", "weight", "bias"), got, expected):
        assert_close_to(g, e.view(g.shape), torch.float32, f"grad {name}")
