"""The ShuffleNet v1 networks of the paper (Zhang et al., CVPR 2018, Table 1),
built on the fused ops.

Every channel shuffle runs inside a pointwise group convolution: the shuffle
that follows a unit's first 1x1 group conv is that conv's ``output_shuffle``.
The paper applies the shuffle after the conv's BatchNorm and ReLU; both act per
channel, so applying them after the shuffle instead computes the same function
with the BatchNorm's parameters stored in shuffled channel order.

In training mode the BatchNorms normalize with batch statistics. In eval mode
each BatchNorm is folded into the conv before it (at every call, so the weights
and running statistics stay the trainable, checkpointed ones) and the ReLUs, and
a unit's residual add, run inside the fused convs; the stem's conv, ReLU and
max pool run as one op.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from . import reference
from .functional import depthwise_conv3x3, pointwise_group_conv, stem_conv3x3_maxpool
from .nn import PointwiseGroupConv2d

__all__ = [
    "ShuffleNetV1",
    "ShuffleUnit",
    "UnfusedShuffleNetV1",
    "shufflenet_v1",
    "shufflenet_v1_channels",
    "shufflenet_v1_unfused",
]

# Table 1: output channels of Stage 2 at 1x, by groups; each later stage doubles them.
STAGE2_CHANNELS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STEM_CHANNELS = 24
MIN_STEM_CHANNELS = 12
STAGE_REPEATS = (4, 8, 4)
WIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 1.5, 2.0)


def _round_to_multiple(value: float, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value`` (halves round up), at least ``multiple``."""
    return max(multiple, int(value / multiple + 0.5) * multiple)


def shufflenet_v1_channels(groups: int, width_mult: float) -> tuple[int, tuple[int, int, int]]:
    """(stem channels, (Stage 2, Stage 3, Stage 4 output channels)) of ``shufflenet_v1``.

    Each count is the paper's 1x count times ``width_mult``, rounded to the
    nearest multiple (halves up) of ``groups`` for the stem and of ``4 * groups``
    for the stages, so that every unit's bottleneck (a quarter of its output) and
    every grouped conv's channels divide by ``groups``. At 1x the counts are
    Table 1's exactly: stem 24, Stage 2 144 / 200 / 240 / 272 / 384 for
    g = 1 / 2 / 3 / 4 / 8, doubling per stage.
    """
    if groups not in STAGE2_CHANNELS:
        raise ValueError(f"shufflenet_v1: expected groups in {sorted(STAGE2_CHANNELS)}, got {groups}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or width_mult <= 0:
        raise ValueError(f"shufflenet_v1: expected width_mult to be a positive number, got {width_mult!r}")
    stem = _round_to_multiple(max(MIN_STEM_CHANNELS, STEM_CHANNELS * width_mult), groups)
    stages = tuple(
        _round_to_multiple(STAGE2_CHANNELS[groups] * 2**i * width_mult, 4 * groups) for i in range(3)
    )
    return stem, stages


# BatchNorm module -> (weak references to the tensors folded, their versions and
# the shuffle, the folded (weight, bias)); entries go away with their module.
_FOLDED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d, output_shuffle: int | None = None):
    """(weight, bias) of a bias-free conv followed by ``bn`` in eval mode. With
    ``output_shuffle``, ``bn`` normalizes the conv's shuffled output: its channel
    c belongs to the conv's channel that the shuffle sends to c.

    Without autograd (no_grad, inference_mode) the result is cached per ``bn``
    while the very same tensors, unmodified, go in: inference then pays for the
    folding once, not at every call. The cache lives outside the module, so
    saving, copying or pickling a model is unaffected by it."""
    sources = tuple(t for t in (weight, bn.weight, bn.bias, bn.running_mean, bn.running_var) if t is not None)
    cacheable = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
    if cacheable:
        key = (tuple(t._version for t in sources), output_shuffle, bn.eps)
        cached = _FOLDED.get(bn)
        # Weak references: a tensor that was replaced (load_state_dict(assign=True), .to())
        # never matches, even if a new one reuses its address.
        if cached is not None and cached[1] == key and all(r() is t for r, t in zip(cached[0], sources, strict=True)):
            return cached[2]
    folded = _compute_folded(weight, bn, output_shuffle)
    if cacheable:
        _FOLDED[bn] = (tuple(weakref.ref(t) for t in sources), key, folded)
    return folded


def _compute_folded(weight: torch.Tensor, bn: nn.BatchNorm2d, output_shuffle: int | None):
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    if output_shuffle not in (None, 1):
        channels = scale.shape[0]
        # The inverse of a shuffle by g is the shuffle by channels / g.
        scale, bias = (
            reference.channel_shuffle(t.view(1, channels, 1), channels // output_shuffle).view(channels)
            for t in (scale, bias)
        )
    return weight * scale.view(-1, 1, 1, 1), bias


class ShuffleUnit(nn.Module):
    """The ShuffleNet unit (paper, Fig. 2 b/c): 1x1 GConv -> BN -> ReLU -> shuffle ->
    3x3 depthwise conv (stride 1 or 2) -> BN -> 1x1 GConv -> BN, then ReLU of the
    sum with the input (stride 1) or of the concat with a 3x3 average pool of the
    input (stride 2). ``first_grouped=False`` makes the first 1x1 conv dense."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, first_grouped: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleUnit: expected stride 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"ShuffleUnit: a stride-1 unit adds its input, so expected in_channels ({in_channels}) "
                f"== out_channels ({out_channels})"
            )
        bottleneck = out_channels // 4
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        self.stride = stride
        self.groups = groups
        shuffle = groups if groups > 1 else None
        self.compress = PointwiseGroupConv2d(
            in_channels, bottleneck, groups=groups if first_grouped else 1, bias=False, output_shuffle=shuffle
        )
        self.compress_bn = nn.BatchNorm2d(bottleneck)
        self.depthwise = nn.Conv2d(bottleneck, bottleneck, 3, stride, 1, groups=bottleneck, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(bottleneck)
        self.expand = PointwiseGroupConv2d(bottleneck, branch_channels, groups=groups, bias=False)
        self.expand_bn = nn.BatchNorm2d(branch_channels)

    def _batch_statistics(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.compress_bn(self.compress(x)))
        y = self.depthwise_bn(self.depthwise(y))
        return self.expand_bn(self.expand(y))

    def _folded(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The branch with the BatchNorms folded, ReLU-ed, plus ``residual`` (before the ReLU)."""
        compress, expand = self.compress, self.expand
        weight, bias = _fold_batch_norm(compress.weight, self.compress_bn, compress.output_shuffle)
        y = pointwise_group_conv(
            x, weight, bias, compress.groups, output_shuffle=compress.output_shuffle, relu=True
        )
        weight, bias = _fold_batch_norm(self.depthwise.weight, self.depthwise_bn)
        y = depthwise_conv3x3(y, weight, bias, self.stride)
        weight, bias = _fold_batch_norm(expand.weight, self.expand_bn)
        return pointwise_group_conv(y, weight, bias, expand.groups, relu=True, residual=residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            if self.training:
                return F.relu(x + self._batch_statistics(x))
            return self._folded(x, residual=x)  # the add and the ReLU in the last conv's epilogue
        shortcut = F.relu(F.avg_pool2d(x, 3, 2, 1))
        if self.training:
            return torch.cat((shortcut, F.relu(self._batch_statistics(x))), 1)
        return torch.cat((shortcut, self._folded(x)), 1)


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 (paper, Table 1); see :func:`shufflenet_v1`."""

    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        stem, stages = shufflenet_v1_channels(groups, width_mult)
        self.groups = groups
        self.width_mult = width_mult
        self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
        self.conv1_bn = nn.BatchNorm2d(stem)
        in_channels = stem
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, stages)):
            units = [ShuffleUnit(in_channels, out_channels, groups, 2, first_grouped=index > 0)]
            units += [ShuffleUnit(out_channels, out_channels, groups, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{index + 2}", nn.Sequential(*units))
            in_channels = out_channels
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            x = F.max_pool2d(F.relu(self.conv1_bn(self.conv1(x))), 3, 2, 1)
        else:  # Conv1 and MaxPool in one pass: the convolution's output is never written
            weight, bias = _fold_batch_norm(self.conv1.weight, self.conv1_bn)
            x = stem_conv3x3_maxpool(x, weight, bias)
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean((2, 3)))


def shufflenet_v1(groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000) -> ShuffleNetV1:
    """ShuffleNet v1 with ``groups`` in {1, 2, 3, 4, 8} ("ShuffleNet width_mult x, g = groups").

    Table 1 of the paper at 1x: a 3x3 stride-2 conv to 24 channels and a 3x3
    stride-2 max pool, then Stages 2-4 of 4 / 8 / 4 units (the first of each with
    stride 2) with Stage 2 output channels 144 / 200 / 240 / 272 / 384 for
    g = 1 / 2 / 3 / 4 / 8, doubling per stage, global average pool and a linear
    classifier. Each unit's bottleneck has a quarter of its output channels;
    the first 1x1 conv of Stage 2 is not grouped.

    Widths: every channel count is the 1x count times ``width_mult`` rounded to
    the nearest multiple (halves up) of ``groups`` (stem) or ``4 * groups``
    (stages); see :func:`shufflenet_v1_channels`. The paper's widths are
    0.25, 0.5, 1, 1.5 and 2; other positive values are accepted.
    """
    return ShuffleNetV1(groups, width_mult, num_classes)


class UnfusedShuffleUnit(nn.Module):
    """A ShuffleNet unit in stock modules; the shuffle is a reshape/permute method."""

    def __init__(self, inp, oup, groups, stride, first_grouped, shuffle_after_depthwise):
        super().__init__()
        mid = oup // 4
        self.groups = groups
        self.stride = stride
        self.shuffle_after_depthwise = shuffle_after_depthwise
        self.conv1 = nn.Conv2d(inp, mid, 1, groups=groups if first_grouped else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, oup - inp if stride == 2 else oup, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(oup - inp if stride == 2 else oup)

    def channel_shuffle(self, x):
        batch, channels, height, width = x.size()
        x = x.reshape(batch, self.groups, channels // self.groups, height, width)
        return x.permute(0, 2, 1, 3, 4).reshape(batch, channels, height, width)

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        if not self.shuffle_after_depthwise:
            y = self.channel_shuffle(y)
        y = self.bn2(self.dw(y))
        if self.shuffle_after_depthwise:
            y = self.channel_shuffle(y)
        y = self.bn3(self.conv2(y))
        if self.stride == 1:
            return F.relu(x + y)
        return F.relu(torch.cat((F.avg_pool2d(x, 3, 2, 1), y), 1))


class UnfusedShuffleNetV1(nn.Module):
    """See :func:`shufflenet_v1_unfused`."""

    def __init__(self, groups=3, width_mult=1.0, num_classes=1000, shuffle_after_depthwise=False):
        super().__init__()
        stem, stages = shufflenet_v1_channels(groups, width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, inp = [], stem
        for index, (repeats, oup) in enumerate(zip(STAGE_REPEATS, stages)):
            for i in range(repeats):
                stride, first_grouped = (2 if i == 0 else 1), index > 0 or i > 0
                units.append(UnfusedShuffleUnit(inp, oup, groups, stride, first_grouped, shuffle_after_depthwise))
                inp = oup
        self.features = nn.Sequential(*units)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.features(self.maxpool(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


def shufflenet_v1_unfused(groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000,
                          shuffle_after_depthwise: bool = False) -> UnfusedShuffleNetV1:
    """The same network as :func:`shufflenet_v1`, written with stock PyTorch
    modules only, the way published code writes it: grouped ``nn.Conv2d``,
    ``nn.BatchNorm2d`` and a channel shuffle that reshapes and permutes, placed
    after the first 1x1 conv (the paper) or, with ``shuffle_after_depthwise``,
    after the depthwise conv + BN. It is the unfused baseline that ``so.fuse``,
    ``FlopCounterMode`` comparisons and the benchmarks start from."""
    return UnfusedShuffleNetV1(groups, width_mult, num_classes, shuffle_after_depthwise)
