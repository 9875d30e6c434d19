"""The public ops. Each checks the Python types of its arguments and hands them
to a backend (see :mod:`shufflenet_ops.backends`), which checks the rest once:
the registered ops (compiled or Triton) themselves, the reference after its own
full check. The compiled ops would otherwise pay for the same checks twice."""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from . import _validation as check
from . import backends, reference
from .ops import DEPTHWISE_CONV3X3, NATIVE, POOL3X3, STEM_CONV3X3_MAXPOOL


def channel_shuffle(x: torch.Tensor, groups: int, *, backend: str = "auto") -> torch.Tensor:
    """Channel shuffle: the same result as ``torch.channel_shuffle(x, groups)``.

    The C channels are viewed as (groups, C // groups), transposed and flattened.
    The inverse shuffle, which views them as (C // groups, groups), is
    ``channel_shuffle(x, C // groups)``.
    """
    check.check_argument_types("channel_shuffle", tensors={"x": x}, integers={"groups": groups},
                               strings={"backend": backend})
    return backends.select(backend, x.device).channel_shuffle(x, groups)


def pointwise_group_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    groups: int = 1,
    *,
    input_shuffle: int | None = None,
    output_shuffle: int | None = None,
    relu: bool = False,
    residual: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """A 1x1 group convolution fused with channel shuffles and a residual add:

        act(channel_shuffle(conv2d(channel_shuffle(x, input_shuffle), weight, bias, groups=groups),
                            output_shuffle) + residual)

    with ``act`` = ReLU when ``relu`` is true; a shuffle of None or 1 is skipped,
    and so is the residual when None (it has the output's shape: a ShuffleNet
    unit's input, added in the conv's epilogue). ``weight`` is
    [C_out, C_in / groups, 1, 1] or [C_out, C_in / groups]. The output has x's
    memory format (NCHW or channels_last).
    """
    op = "pointwise_group_conv"
    input_shuffle = check.shuffle_groups(input_shuffle, "input_shuffle", op)
    output_shuffle = check.shuffle_groups(output_shuffle, "output_shuffle", op)
    # shuffle_groups has checked the shuffles' types.
    check.check_argument_types(op, tensors={"x": x, "weight": weight},
                               optional_tensors={"bias": bias, "residual": residual}, integers={"groups": groups},
                               strings={"backend": backend})
    return backends.select(backend, x.device).pointwise_group_conv(
        x, weight, bias, groups, input_shuffle, output_shuffle, bool(relu), residual
    )


def depthwise_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int = 1,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """A per-channel 3x3 convolution with padding 1 and stride 1 or 2:

        act(conv2d(x, weight, bias, stride, padding=1, groups=C))

    with ``act`` = ReLU when ``relu`` is true; ``weight`` is [C, 1, 3, 3]. The
    output has x's memory format (NCHW or channels_last). Runs the native kernel
    where one is registered for x's device, the reference elsewhere.
    """
    check.check_argument_types("depthwise_conv3x3", tensors={"x": x, "weight": weight},
                               optional_tensors={"bias": bias}, integers={"stride": stride})
    if x.device.type in _DEPTHWISE_NATIVE_DEVICES:
        return _DEPTHWISE_OP(x, weight, bias, stride, bool(relu))
    x, weight, bias = _autocast_cast(x.device.type, x, weight, bias)
    check.check_depthwise_conv3x3(x, weight, bias, stride)
    return reference.depthwise_conv3x3(x, weight, bias, stride, relu=bool(relu))


def max_pool3x3(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """3x3 max pooling with padding 1 and stride 1 or 2, the same as
    ``F.max_pool2d(x, 3, stride, 1)``: padding never wins and a NaN in a window
    makes its output NaN. The output has x's memory format (NCHW or
    channels_last). Runs the native kernel where one is registered for x's
    device, the reference elsewhere."""
    return _pool3x3("max_pool3x3", x, stride, average=False)


def avg_pool3x3(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """3x3 average pooling with padding 1 and stride 1 or 2, the same as
    ``F.avg_pool2d(x, 3, stride, 1)``: the window sum over 9, padding counted as
    zero. The output has x's memory format (NCHW or channels_last). Runs the
    native kernel where one is registered for x's device, the reference elsewhere."""
    return _pool3x3("avg_pool3x3", x, stride, average=True)


def _pool3x3(op: str, x, stride, average: bool):
    check.check_argument_types(op, tensors={"x": x}, integers={"stride": stride})
    if x.device.type in _POOL_NATIVE_DEVICES:
        return _POOL_OP(x, stride, average)
    check.check_pool3x3(x, stride)
    return reference.avg_pool3x3(x, stride) if average else reference.max_pool3x3(x, stride)


def stem_conv3x3_maxpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The network stem of ShuffleNet (Conv1 + MaxPool), in one pass:

        max_pool2d(relu(conv2d(x, weight, bias, stride=2, padding=1)), 3, stride=2, padding=1)

    with ``weight`` [C_out, C_in, 3, 3]. The convolution's output is pooled
    where it is computed, never written out. The output has x's memory format.
    Runs the native kernel where one is registered for x's device, the
    reference elsewhere."""
    check.check_argument_types("stem_conv3x3_maxpool", tensors={"x": x, "weight": weight},
                               optional_tensors={"bias": bias})
    if x.device.type in _STEM_NATIVE_DEVICES:
        return _STEM_OP(x, weight, bias)
    x, weight, bias = _autocast_cast(x.device.type, x, weight, bias)
    check.check_stem_conv3x3_maxpool(x, weight, bias)
    return reference.stem_conv3x3_maxpool(x, weight, bias)


def _autocast_enabled(device_type: str) -> bool:
    # torch.is_autocast_enabled raises for device types without autocast (meta).
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def _autocast_cast(device_type: str, *tensors):
    """``tensors`` as the compiled ops' autocast kernels (csrc/autocast.cpp) pass
    them on, for the reference path on devices without such kernels: under
    torch.autocast for ``device_type``, floating-point tensors other than float64
    in the autocast dtype, as conv2d's inputs are cast; unchanged otherwise."""
    if not _autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
        for t in tensors
    )


def _reference_shuffle(x, groups):
    check.check_channel_shuffle(x, groups)
    return reference.channel_shuffle(x, groups)


def _reference_conv(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual=None):
    x, weight, bias = _autocast_cast(x.device.type, x, weight, bias)
    if (residual is not None and residual.is_floating_point() and residual.dtype != x.dtype
            and _autocast_enabled(x.device.type)):
        # As csrc/autocast.cpp does: conv2d(...) + residual, in the promoted dtype.
        check.check_pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle,
                                         residual.to(x.dtype))
        y = reference.pointwise_group_conv(x, weight, bias, groups, input_shuffle=input_shuffle,
                                           output_shuffle=output_shuffle) + residual
        return torch.relu(y) if relu else y
    check.check_pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, residual)
    return reference.pointwise_group_conv(
        x, weight, bias, groups, input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu,
        residual=residual,
    )


def _devices_with_kernel(qualname: str) -> frozenset[str]:
    """The device types for which the compiled extension registered a kernel of ``qualname``."""
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(d for d, key in keys.items() if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key))


_DEPTHWISE_NATIVE_DEVICES = _devices_with_kernel(DEPTHWISE_CONV3X3)
_POOL_NATIVE_DEVICES = _devices_with_kernel(POOL3X3)
_STEM_NATIVE_DEVICES = _devices_with_kernel(STEM_CONV3X3_MAXPOOL)
_DEPTHWISE_OP = NATIVE.op("depthwise_conv3x3")
_POOL_OP = NATIVE.op("pool3x3")
_STEM_OP = NATIVE.op("stem_conv3x3_maxpool")


def registered_op_call(function: Callable, args: tuple, kwargs: dict, device: torch.device):
    """``(op, op_args)`` such that ``op(*op_args)`` is the registered op call that
    ``function(*args, **kwargs)`` (one of this module's ops, backend "auto") makes
    for tensors on ``device``; None where it would run other Python code (the
    reference). For callers that fix the non-tensor arguments once, such as the
    graph ``so.fuse`` writes: the registered op checks every argument itself,
    so the call skips only the Python layer."""
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    if a.get("backend", "auto") != "auto":
        return None
    if function is channel_shuffle:
        op, op_args = backends.select("auto", device).channel_shuffle, (a["x"], a["groups"])
    elif function is pointwise_group_conv:
        op = backends.select("auto", device).pointwise_group_conv
        shuffles = (check.shuffle_groups(a[name], name, "pointwise_group_conv")
                    for name in ("input_shuffle", "output_shuffle"))
        op_args = (a["x"], a["weight"], a["bias"], a["groups"], *shuffles, bool(a["relu"]), a["residual"])
    elif function is depthwise_conv3x3 and device.type in _DEPTHWISE_NATIVE_DEVICES:
        op, op_args = _DEPTHWISE_OP, (a["x"], a["weight"], a["bias"], a["stride"], bool(a["relu"]))
    elif function in (max_pool3x3, avg_pool3x3) and device.type in _POOL_NATIVE_DEVICES:
        op, op_args = _POOL_OP, (a["x"], a["stride"], function is avg_pool3x3)
    elif function is stem_conv3x3_maxpool and device.type in _STEM_NATIVE_DEVICES:
        op, op_args = _STEM_OP, (a["x"], a["weight"], a["bias"])
    else:
        return None
    return (op, op_args) if isinstance(op, torch._ops.OpOverload) else None


backends.register_backend(
    backends.Backend(
        name="reference",
        channel_shuffle=_reference_shuffle,
        pointwise_group_conv=_reference_conv,
        # Stock PyTorch runs anywhere; "auto" takes it only where nothing else runs.
        priority={"cpu": 0, "cuda": 0, "mps": 0, "xpu": 0, "meta": 0},
    )
)
backends.register_backend(
    backends.Backend(
        name="native",
        channel_shuffle=NATIVE.channel_shuffle,
        pointwise_group_conv=NATIVE.pointwise_group_conv,
        priority={device: 10 for device in _devices_with_kernel(NATIVE.qualname("pointwise_group_conv"))},
    )
)

