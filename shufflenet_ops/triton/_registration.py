"""Registers the Triton kernels for the triton_* op family and the "triton" backend."""

from __future__ import annotations

import torch

from .. import backends
from ..ops import TRITON as FAMILY
from . import channel_shuffle, pointwise_group_conv
from ._launch import fix_interpreter_loop_bounds, interpreter_enabled

if interpreter_enabled():
    fix_interpreter_loop_bounds()

_KERNELS = {
    "channel_shuffle": channel_shuffle.channel_shuffle,
    "pointwise_group_conv": pointwise_group_conv.pointwise_group_conv,
    "pointwise_group_conv_grad_input": pointwise_group_conv.pointwise_group_conv_grad_input,
    "pointwise_group_conv_grad_weight": pointwise_group_conv.pointwise_group_conv_grad_weight,
    "pointwise_group_conv_grad_bias": pointwise_group_conv.pointwise_group_conv_grad_bias,
}

_DISPATCH_KEYS = ("CUDA", "CPU") if interpreter_enabled() else ("CUDA",)

for _name, _kernel in _KERNELS.items():
    torch.library.impl(FAMILY.qualname(_name), _DISPATCH_KEYS, _kernel)

# Below native (10) so that "auto" prefers the compiled kernels where both run.
_PRIORITY = 5


_DEVICES = {}
if torch.cuda.is_available():
    _DEVICES["cuda"] = _PRIORITY
if interpreter_enabled():
    _DEVICES["cpu"] = _PRIORITY


backends.register_backend(
    backends.Backend(
        name="triton",
        channel_shuffle=FAMILY.channel_shuffle,
        pointwise_group_conv=FAMILY.pointwise_group_conv,
        priority=_DEVICES,
    )
)
