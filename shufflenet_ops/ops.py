"""The registered ops as Python sees them, and their fake (meta) kernels.

The schemas are defined once, in C++ (csrc/shufflenet_ops.cpp), for two op
families: the native one, whose CPU and CUDA kernels are compiled, and the same
schemas prefixed ``triton_`` for the Triton kernels, which run on the same CUDA
tensors and so cannot share the native dispatch keys. The autograd of every op
is compiled too (csrc/autograd.cpp).
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
# kernel only, and its backward runs on stock ATen ops (csrc/autograd.cpp).
DEPTHWISE_CONV3X3 = f"{NAMESPACE}::depthwise_conv3x3"


def window3x3_output_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1


@torch.library.register_fake(DEPTHWISE_CONV3X3)
def _(x, weight, bias, stride, relu):
    check.check_depthwise_conv3x3(x, weight, bias, stride)
    n, c, h, w = x.shape
    shape = (n, c, window3x3_output_size(h, stride), window3x3_output_size(w, stride))
    return _empty(shape, x, suggest_memory_format(x))


# The 3x3 pooling (padding 1, stride 1 or 2) stands apart the same way: a native
# kernel only, its backward on stock ATen ops.
POOL3X3 = f"{NAMESPACE}::pool3x3"


@torch.library.register_fake(POOL3X3)
def _(x, stride, average):
    check.check_pool3x3(x, stride)
    n, c, h, w = x.shape  # the same 3x3 window with padding 1 as the depthwise conv
    shape = (n, c, window3x3_output_size(h, stride), window3x3_output_size(w, stride))
    return _empty(shape, x, suggest_memory_format(x))


# The network stem (Conv1 + MaxPool) stands apart the same way: a native kernel
# only, its backward on stock ATen ops.
STEM_CONV3X3_MAXPOOL = f"{NAMESPACE}::stem_conv3x3_maxpool"


@torch.library.register_fake(STEM_CONV3X3_MAXPOOL)
def _(x, weight, bias):
    check.check_stem_conv3x3_maxpool(x, weight, bias)
    n, _, h, w = x.shape
    pooled = [window3x3_output_size(window3x3_output_size(size, 2), 2) for size in (h, w)]
    return _empty((n, weight.shape[0], *pooled), x, suggest_memory_format(x))
