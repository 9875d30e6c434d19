"""The registered ops as Python sees them, and their fake (meta) kernels.

The schemas are defined once, in C++ (csrc/shufflenet_ops.cpp), for two op
families: the native one, whose CPU and CUDA kernels are compiled, and the same
schemas prefixed ``triton_`` for the Triton kernels, which run on the same CUDA
tensors and so cannot share the native dispatch keys. The autograd of both
families is compiled too (csrc/autograd.cpp).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._prims_common import suggest_memory_format

from . import _C  # noqa: F401  (loads the schemas and the compiled kernels)
from . import _validation as check

NAMESPACE = "shufflenet_ops"


@dataclass(frozen=True)
class OpFamily:
    """One backend's registered ops (``torch.ops.shufflenet_ops.<prefix><name>``)."""

    prefix: str

    def op(self, name: str) -> torch._ops.OpOverload:
        # The overload itself: calling the packet costs another Python hop per call.
        return getattr(getattr(torch.ops, NAMESPACE), self.prefix + name).default

    def qualname(self, name: str) -> str:
        return f"{NAMESPACE}::{self.prefix}{name}"

    @property
    def channel_shuffle(self):
        return self.op("channel_shuffle")

    @property
    def pointwise_group_conv(self):
        return self.op("pointwise_group_conv")

    @property
    def grad_input(self):
        return self.op("pointwise_group_conv_grad_input")

    @property
    def grad_weight(self):
        return self.op("pointwise_group_conv_grad_weight")

    @property
    def grad_bias(self):
        return self.op("pointwise_group_conv_grad_bias")


def _empty(shape, like: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


def _register_fake_kernels(family: OpFamily) -> OpFamily:
    @torch.library.register_fake(family.qualname("channel_shuffle"))
    def _(x, groups):
        check.check_channel_shuffle(x, groups)
        return _empty(x.shape, x, suggest_memory_format(x))

    @torch.library.register_fake(family.qualname("pointwise_group_conv"))
    def _(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual=None):
        check.check_pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, residual)
        n, _, h, w = x.shape
        return _empty((n, weight.shape[0], h, w), x, suggest_memory_format(x))

    @torch.library.register_fake(family.qualname("pointwise_group_conv_grad_input"))
    def _(grad_out, weight, groups, input_shuffle, output_shuffle):
        check.check_grad_input(grad_out, weight, groups, input_shuffle, output_shuffle)
        n, _, h, w = grad_out.shape
        return _empty((n, weight.shape[1] * groups, h, w), grad_out, suggest_memory_format(grad_out))

    @torch.library.register_fake(family.qualname("pointwise_group_conv_grad_weight"))
    def _(grad_out, x, groups, input_shuffle, output_shuffle):
        check.check_grad_weight(grad_out, x, groups, input_shuffle, output_shuffle)
        return _empty((grad_out.shape[1], x.shape[1] // groups, 1, 1), x)

    @torch.library.register_fake(family.qualname("pointwise_group_conv_grad_bias"))
    def _(grad_out, output_shuffle):
        check.check_grad_bias(grad_out, output_shuffle)
        return _empty((grad_out.shape[1],), grad_out)

    return family


NATIVE = _register_fake_kernels(OpFamily(""))
TRITON = _register_fake_kernels(OpFamily("triton_"))


# The depthwise 3x3 convolution stands apart from the families: it has a native
# kernel only, and its backward runs on stock ATen ops.
DEPTHWISE_CONV3X3 = f"{NAMESPACE}::depthwise_conv3x3"


def window3x3_output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


@torch.library.register_fake(DEPTHWISE_CONV3X3)
def _(x, weight, bias, stride, relu):
    check.check_depthwise_conv3x3(x, weight, bias, stride)
    n, c, h, w = x.shape
    shape = (n, c, window3x3_output_size(h, stride), window3x3_output_size(w, stride))
    return _empty(shape, x, suggest_memory_format(x))


def _depthwise_setup_context(ctx, inputs, output):
    x, weight, bias, stride, relu = inputs
    ctx.save_for_backward(x, weight, output if relu else None)
    ctx.stride = stride
    ctx.relu = relu
    ctx.has_bias = bias is not None


def _depthwise_backward(ctx, grad):
    x, weight, output = ctx.saved_tensors
    if ctx.relu:
        grad = torch.ops.aten.threshold_backward(grad, output, 0)
    want_x, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    want_bias = ctx.has_bias and ctx.needs_input_grad[2]
    grad_x = grad_weight = grad_bias = None
    if want_x or want_weight:
        # ATen's reduced-precision CPU depthwise backward can return garbage for
        # windows that hang over the border (seen for bfloat16, stride 2, 1x1
        # input), so reduced-precision gradients are computed in float32.
        compute = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad.to(compute), x.to(compute), weight.to(compute), None, [ctx.stride] * 2, [1, 1], [1, 1], False,
            [0, 0], x.shape[1], [want_x, want_weight, False],
        )
        grad_x = None if grad_x is None else grad_x.to(x.dtype)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
    if want_bias:
        grad_bias = grad.sum(dim=(0, 2, 3))
    return grad_x, grad_weight, grad_bias, None, None


torch.library.register_autograd(DEPTHWISE_CONV3X3, _depthwise_backward, setup_context=_depthwise_setup_context)


# The 3x3 pooling (padding 1, stride 1 or 2) stands apart the same way: a native
# kernel only, its backward on stock ATen ops.
POOL3X3 = f"{NAMESPACE}::pool3x3"


@torch.library.register_fake(POOL3X3)
def _(x, stride, average):
    check.check_pool3x3(x, stride)
    n, c, h, w = x.shape  # the same 3x3 window with padding 1 as the depthwise conv
    shape = (n, c, window3x3_output_size(h, stride), window3x3_output_size(w, stride))
    return _empty(shape, x, suggest_memory_format(x))


def _pool_setup_context(ctx, inputs, output):
    x, stride, average = inputs
    ctx.save_for_backward(x)
    ctx.stride = stride
    ctx.average = average


def _pool_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None
    if x.numel() == 0:  # ATen's pooling refuses empty channels or images; their gradient is empty too
        return torch.zeros_like(x), None, None
    window, stride, padding = [3, 3], [ctx.stride] * 2, [1, 1]
    if ctx.average:
        grad_x = torch.ops.aten.avg_pool2d_backward(grad, x, window, stride, padding, False, True, None)
    else:
        # The forward keeps no indices: recomputing them here costs a training step
        # one more pooling pass, and saves inference from computing them at all.
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, window, stride, padding, [1, 1], False)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, window, stride, padding, [1, 1], False,
                                                                 indices)
    return grad_x, None, None


torch.library.register_autograd(POOL3X3, _pool_backward, setup_context=_pool_setup_context)


# The network stem (Conv1 + MaxPool) stands apart the same way: a native kernel
# only, its backward on stock ATen ops.
STEM_CONV3X3_MAXPOOL = f"{NAMESPACE}::stem_conv3x3_maxpool"


@torch.library.register_fake(STEM_CONV3X3_MAXPOOL)
def _(x, weight, bias):
    check.check_stem_conv3x3_maxpool(x, weight, bias)
    n, _, h, w = x.shape
    pooled = [window3x3_output_size(window3x3_output_size(size, 2), 2) for size in (h, w)]
    return _empty((n, weight.shape[0], *pooled), x, suggest_memory_format(x))


def _stem_setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _stem_backward(ctx, grad):
    # The forward keeps neither the convolution's output nor the pooling's indices:
    # a training step recomputes them here, and inference never stores them.
    x, weight, bias = ctx.saved_tensors
    # Reduced precision runs in float32, as in the depthwise backward: ATen's
    # reduced-precision CPU convolution backward can return garbage where windows
    # hang over the border.
    compute = torch.float32 if x.dtype in (torch.bfloat16, torch.float16) else x.dtype
    x_c, weight_c, grad = x.to(compute), weight.to(compute), grad.to(compute)
    bias_c = None if bias is None else bias.to(compute)
    window, stride, padding = [3, 3], [2, 2], [1, 1]
    activation = torch.ops.aten.relu(torch.ops.aten.convolution(x_c, weight_c, bias_c, stride, padding, [1, 1],
                                                                False, [0, 0], 1))
    _, indices = torch.ops.aten.max_pool2d_with_indices(activation, window, stride, padding, [1, 1], False)
    grad = torch.ops.aten.max_pool2d_with_indices_backward(grad, activation, window, stride, padding, [1, 1],
                                                          False, indices)
    grad = torch.ops.aten.threshold_backward(grad, activation, 0)
    want = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2]]
    grads = torch.ops.aten.convolution_backward(grad, x_c, weight_c, None if bias is None else list(bias.shape),
                                                stride, padding, [1, 1], False, [0, 0], 1, want)
    return tuple(None if g is None else g.to(x.dtype) for g in grads)  # x, weight and bias share a dtype


torch.library.register_autograd(STEM_CONV3X3_MAXPOOL, _stem_backward, setup_context=_stem_setup_context)
