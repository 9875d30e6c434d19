"""FLOP formulas for the custom ops, registered with ``torch.utils.flop_counter``
so that ``FlopCounterMode`` counts a model built on the fused ops the same as
the same model written with ``F.conv2d`` and a shuffle.

The counts follow PyTorch's convolution formulas: 2 FLOPs per multiply-add of
the convolution (the bias, the ReLU and the shuffles are free), and the same
count again for each of the input and weight gradients.
"""

from __future__ import annotations

from math import prod

import torch
from torch.utils.flop_counter import register_flop_formula

from .ops import NATIVE, TRITON, OpFamily, window3x3_output_size


def _conv_flops(activation_shape, weight_shape) -> int:
    """2 * N * H * W * C_out * (C_in / groups): ``weight_shape`` is [C_out, C_in / groups(, 1, 1)]."""
    n, _, h, w = activation_shape
    return 2 * n * h * w * prod(weight_shape)


def _register_flop_formulas(family: OpFamily) -> None:
    @register_flop_formula(family.pointwise_group_conv.overloadpacket)
    def _(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        return _conv_flops(x_shape, weight_shape)

    @register_flop_formula(family.grad_input.overloadpacket)
    def _(grad_out_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        return _conv_flops(grad_out_shape, weight_shape)

    @register_flop_formula(family.grad_weight.overloadpacket)
    def _(grad_out_shape, x_shape, groups, *args, out_shape=None, **kwargs) -> int:
        return 2 * prod(grad_out_shape) * (x_shape[1] // groups)


@register_flop_formula(torch.ops.shufflenet_ops.depthwise_conv3x3)
def _(x_shape, weight_shape, bias_shape, stride, *args, out_shape=None, **kwargs) -> int:
    """2 * N * H_out * W_out * C * 9, as for F.conv2d(groups=C); its backward is
    stock convolution_backward, which PyTorch counts itself."""
    return 2 * prod(out_shape) * prod(weight_shape[1:])


@register_flop_formula(torch.ops.shufflenet_ops.stem_conv3x3_maxpool)
def _(x_shape, weight_shape, bias_shape, *args, out_shape=None, **kwargs) -> int:
    """The convolution's 2 * N * H_conv * W_conv * C_out * C_in * 9, as for F.conv2d (pooling is free)."""
    n, _, h, w = x_shape
    return _conv_flops((n, None, window3x3_output_size(h, 2), window3x3_output_size(w, 2)), weight_shape)


for _family in (NATIVE, TRITON):
    _register_flop_formulas(_family)
