"""Drop-in modules built on the fused ops.

``ChannelShuffle`` replaces ``torch.nn.ChannelShuffle``. ``PointwiseGroupConv2d``
is an ``nn.Conv2d`` with a 1x1 kernel, so it has the same parameters and the
same state_dict keys (``weight``, ``bias``) and loads a Conv2d checkpoint
unchanged; it adds the shuffles before and after the convolution and an
optional ReLU, all computed by one fused kernel.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as check
from .functional import channel_shuffle, pointwise_group_conv


class ChannelShuffle(nn.Module):
    """``torch.nn.ChannelShuffle(groups)`` computed by :func:`shufflenet_ops.channel_shuffle`."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        groups = check._integer(groups, "groups", "ChannelShuffle")
        if groups <= 0:
            raise ValueError(f"ChannelShuffle: expected groups to be a positive integer, got {groups}")
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _pair_of(value, expected: int, name: str) -> None:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if any(v != expected for v in values):
        raise ValueError(f"PointwiseGroupConv2d: expected {name} to be {expected}, got {value}")


class PointwiseGroupConv2d(nn.Conv2d):
    """A 1x1 group convolution fused with channel shuffles and ReLU::

        channel_shuffle(act(conv2d(channel_shuffle(x, input_shuffle), weight, bias, groups=groups)),
                        output_shuffle)

    Takes ``nn.Conv2d``'s arguments, so ``nn.Conv2d(c_in, c_out, 1, groups=g)``
    becomes ``PointwiseGroupConv2d(c_in, c_out, 1, groups=g)``; the kernel must be
    1x1 with stride 1, no padding and dilation 1. ``input_shuffle`` and
    ``output_shuffle`` are the shuffles' group counts (None: no shuffle).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=1,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        input_shuffle: int | None = None,
        output_shuffle: int | None = None,
        relu: bool = False,
    ) -> None:
        _pair_of(kernel_size, 1, "kernel_size")
        _pair_of(stride, 1, "stride")
        if padding != "valid":
            _pair_of(padding, 0, "padding")
        _pair_of(dilation, 1, "dilation")
        super().__init__(
            in_channels, out_channels, 1, groups=groups, bias=bias, padding_mode=padding_mode,
            device=device, dtype=dtype,
        )
        shuffles = {"input_shuffle": (input_shuffle, in_channels), "output_shuffle": (output_shuffle, out_channels)}
        for name, (value, channels) in shuffles.items():
            value = check.shuffle_groups(value, name, "PointwiseGroupConv2d")
            if value <= 0 or channels % value:
                raise ValueError(
                    f"PointwiseGroupConv2d: expected {name} to be a positive divisor of the "
                    f"{name.split('_')[0]} channels ({channels}), got {value}"
                )
        self.input_shuffle = input_shuffle
        self.output_shuffle = output_shuffle
        self.relu = bool(relu)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, *, input_shuffle: int | None = None, output_shuffle: int | None = None,
        relu: bool = False,
    ) -> "PointwiseGroupConv2d":
        """A PointwiseGroupConv2d sharing ``conv``'s parameters (not copies)."""
        module = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta", dtype=conv.weight.dtype,
            input_shuffle=input_shuffle, output_shuffle=output_shuffle, relu=relu,
        )
        module.weight = conv.weight
        module.bias = conv.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise_group_conv(
            x, self.weight, self.bias, self.groups,
            input_shuffle=self.input_shuffle, output_shuffle=self.output_shuffle, relu=self.relu,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        if self.input_shuffle not in (None, 1):
            extra += f", input_shuffle={self.input_shuffle}"
        if self.output_shuffle not in (None, 1):
            extra += f", output_shuffle={self.output_shuffle}"
        if self.relu:
            extra += ", relu=True"
        return extra
