"""The ShuffleNet v1 networks of the paper (Zhang et al., CVPR 2018, Table 1),
built on the fused ops.

The modules are named and ordered as in the stock twin,
``shufflenet_v1_unfused``, and every BatchNorm keeps its conv's channel order,
so the two share one state_dict: a checkpoint of either loads into the other
(``ShuffleNetV1`` also converts the state_dict layout of earlier versions, see
:meth:`ShuffleNetV1._load_from_state_dict`).

In training mode the BatchNorms normalize with batch statistics, and a unit's
channel shuffle runs after its first BatchNorm and ReLU, as in the paper. In
eval mode each BatchNorm is folded into the conv before it, and the ReLUs, the
shuffle (the output shuffle of the first 1x1 conv) and a unit's residual add run
inside the fused convs; the stem's conv, ReLU and max pool run as one op.

The folding is computed from the current tensors at every eval call, never
cached: whatever changed a weight or a running statistic (an optimizer step,
fused or foreach, an edit through ``.data``, ``load_state_dict``, ``.to()``) is
what the next call computes with, and a model built under
``torch.inference_mode()`` works like any other. ``ShuffleNetV1`` folds all its
BatchNorms at once (one concatenation of their per-channel vectors, a few ops on
it and one pass over the conv weights, written without autograd into storage
kept per model), 0.5-0.8 ms of a 1x g3 forward on 2 CPU cores. A BatchNorm
without running statistics (``track_running_stats=False``) normalizes with the
batch in eval too, so its unit (or the stem) then runs unfolded, as in stock
PyTorch.
"""

from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _validation as check
from .functional import channel_shuffle, depthwise_conv3x3, pointwise_group_conv, stem_conv3x3_maxpool
from .nn import PointwiseGroupConv2d

__all__ = [
    "FoldingSequential",
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
# The paper's widths; any width between the smallest and the largest is built.
WIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 1.5, 2.0)
WIDTH_RANGE = (WIDTH_MULTIPLIERS[0], WIDTH_MULTIPLIERS[-1])
# Stem conv, max pool and the three stages each halve the image.
DOWNSAMPLING = 32


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
    g = 1 / 2 / 3 / 4 / 8, doubling per stage. ``width_mult`` ranges from 0.25
    to 2, the paper's smallest and largest width.
    """
    _check_config("shufflenet_v1_channels", groups, width_mult)
    return _channels(groups, width_mult)


def _check_config(model: str, groups, width_mult, num_classes=None) -> None:
    check.check_shufflenet_config(model, groups, width_mult, num_classes, allowed_groups=tuple(STAGE2_CHANNELS),
                                  width_range=WIDTH_RANGE)


def _channels(groups: int, width_mult: float) -> tuple[int, tuple[int, int, int]]:
    stem = _round_to_multiple(max(MIN_STEM_CHANNELS, STEM_CHANNELS * width_mult), groups)
    stages = tuple(
        _round_to_multiple(STAGE2_CHANNELS[groups] * 2**i * width_mult, 4 * groups) for i in range(3)
    )
    return stem, stages


def _fold_batch_norms(layers, owner: nn.Module | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of each ``(conv weight, bn)`` of ``layers``: a bias-free conv followed by
    ``bn`` in eval mode, as one conv.

    Computed from the current tensors at every call. No cache can tell exactly when to
    refold: fused and foreach optimizers update parameters in place without bumping their
    version counters, an edit through ``.data`` bumps only the counter of that alias, and
    inference tensors have none. Folding all the given layers at once keeps it cheap: one
    concatenation of every per-channel vector, a few ops on it, and one pass over the conv
    weights, most of the cost. Without autograd the folded weights are written into storage
    kept for ``owner`` (see :func:`_scaled_weights`)."""
    statistics = [_batch_norm_tensors(bn) for _, bn in layers]
    tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
    if tracing or not layers or any(t is None for ts in statistics for t in ts):
        # A traced graph (torch.compile, torch.export, the TorchScript ONNX exporter) gets one
        # plain computation per BatchNorm, which so.fuse folds into constants and a compiler
        # fuses anyway; a BatchNorm without affine parameters too.
        return [_fold_batch_norm(weight, bn) for weight, bn in layers]
    if torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        return _fold_stacked(layers, statistics, owner)
    # Under no_grad the folded tensors live for this call only and nothing records them:
    # inference mode spares their ops the view and version tracking no_grad still does.
    with torch.inference_mode():
        return _fold_stacked(layers, statistics, owner)


def _fold_stacked(layers, statistics, owner) -> list[tuple[torch.Tensor, torch.Tensor]]:
    weights, bns = zip(*layers)
    sizes = tuple(ts[0].shape[0] for ts in statistics)
    # Rows: running_var, weight, bias, running_mean, each the layers' vectors end to end.
    stacked = torch.cat([ts[row] for row in range(4) for ts in statistics]).view(4, -1)
    variance, gamma, beta, mean = stacked.unbind()
    epsilons = tuple(bn.eps for bn in bns)
    if len(set(epsilons)) == 1:
        variance = variance + epsilons[0]
    else:
        variance = variance + _per_channel_constant(epsilons, sizes, variance.device, variance.dtype)
    scale = variance.rsqrt() * gamma
    bias = torch.addcmul(beta, mean, scale, value=-1)
    if all(w.dim() == 4 for w in weights):
        scales = scale.view(-1, 1, 1, 1).split(sizes)
    else:
        scales = [s.view(-1, *[1] * (w.dim() - 1)) for s, w in zip(scale.split(sizes), weights)]
    return list(zip(_scaled_weights(list(weights), list(scales), owner), bias.split(sizes)))


# module -> (dtype, device, weight shapes), views of one block of storage its folded conv
# weights are written into when autograd is off. Weak keys: the storage goes with its module,
# and copying or pickling a module never sees it.
_WORKSPACES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _scaled_weights(weights: list, scales: list, owner: nn.Module | None) -> list:
    """``weight * scale`` of each layer. With autograd off and an ``owner``, written into one
    block of storage kept for it: fresh tensors for every call cost more in page faults (the
    allocator hands the freed memory back to the system between calls, a few MB at 1x) than
    the multiply itself. Nothing keeps the results beyond the call that folds them (no graph
    records them), and a concurrent call with the same parameters writes the same values
    (each element once, with its final value). Anything else (autograd on, mixed dtypes or
    devices, tensor subclasses, dispatch modes, functorch transforms) gets fresh tensors."""
    first = weights[0]
    if (owner is None or torch.is_grad_enabled() or _get_current_dispatch_mode() is not None
            or torch._C._are_functorch_transforms_active()
            or any(type(t) not in (torch.Tensor, nn.Parameter) or t.dtype != first.dtype or t.device != first.device
                   for t in (*weights, scales[0]))):
        return torch._foreach_mul(weights, scales)
    key = (first.dtype, first.device, tuple(w.shape for w in weights))
    workspace = _WORKSPACES.get(owner)
    if workspace is None or workspace[0] != key:
        numels = [w.numel() for w in weights]
        with torch.inference_mode(False):  # written under no_grad and inference mode alike
            storage = torch.empty(sum(numels), dtype=first.dtype, device=first.device)
            workspace = key, [part.view(w.shape) for part, w in zip(storage.split(numels), weights)]
        _WORKSPACES[owner] = workspace
    scaled = workspace[1]
    for weight, scale, out in zip(weights, scales, scaled):
        # Every element written once with its final value: a concurrent call that writes the
        # same storage writes the same values, so no reader ever sees a partial result.
        torch.mul(weight, scale, out=out)
    return scaled


def _conv_weight(conv: nn.Conv2d) -> torch.Tensor:
    if type(conv) in (nn.Conv2d, PointwiseGroupConv2d):  # no parametrization, no override
        return conv._parameters["weight"]
    return conv.weight


def _batch_norm_tensors(bn: nn.BatchNorm2d) -> tuple:
    """(running_var, weight, bias, running_mean) of ``bn``, read straight from its tensor
    dicts where nothing (a subclass, a parametrization) can stand between them and the
    attributes: at tens of BatchNorms per call, nn.Module's attribute lookup shows."""
    if type(bn) is nn.BatchNorm2d:
        buffers, parameters = bn._buffers, bn._parameters
        return (buffers.get("running_var"), parameters.get("weight"), parameters.get("bias"),
                buffers.get("running_mean"))
    return bn.running_var, bn.weight, bn.bias, bn.running_mean


@functools.lru_cache(maxsize=64)
def _per_channel_constant(values: tuple, sizes: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat([torch.full((n,), v, device=device, dtype=dtype) for v, n in zip(values, sizes)])


def _fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d):
    """(weight, bias) of one conv and BatchNorm; see :func:`_fold_batch_norms`."""
    if bn.running_var is None:
        raise ValueError(
            f"ShuffleNetV1: eval mode folds each BatchNorm's running statistics into its conv, "
            f"but {bn} tracks none (track_running_stats=False)"
        )
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    return weight * scale.view(-1, *[1] * (weight.dim() - 1)), bias


class ShuffleUnit(nn.Module):
    """The ShuffleNet unit (paper, Fig. 2 b/c): 1x1 GConv (``conv1``) -> BN -> ReLU ->
    shuffle -> 3x3 depthwise conv (``dw``, stride 1 or 2) -> BN -> 1x1 GConv (``conv2``)
    -> BN, then ReLU of the sum with the input (stride 1) or of the concat with a 3x3
    average pool of the input (stride 2). ``first_grouped=False`` makes the first 1x1
    conv dense. The modules and their parameters are those of ``UnfusedShuffleUnit``."""

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
        self.conv1 = PointwiseGroupConv2d(in_channels, bottleneck, groups=groups if first_grouped else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(bottleneck)
        self.dw = nn.Conv2d(bottleneck, bottleneck, 3, stride, 1, groups=bottleneck, bias=False)
        self.bn2 = nn.BatchNorm2d(bottleneck)
        self.conv2 = PointwiseGroupConv2d(bottleneck, branch_channels, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)

    def _folding(self) -> list | None:
        """The (conv weight, BatchNorm) of each conv + BatchNorm that eval mode folds; None where
        a BatchNorm keeps no running statistics: it normalizes with the batch even in eval, so
        there is no fixed function to fold."""
        if type(self) is ShuffleUnit:  # the module dicts directly: nothing can override them here
            modules = self._modules
            convs = modules["conv1"], modules["dw"], modules["conv2"]
            bns = modules["bn1"], modules["bn2"], modules["bn3"]
        else:
            convs = self.conv1, self.dw, self.conv2
            bns = self.bn1, self.bn2, self.bn3
        if not all(bn.track_running_stats for bn in bns):
            return None
        return [(_conv_weight(conv), bn) for conv, bn in zip(convs, bns)]

    def _unfolded(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        if self.groups > 1:  # behind the BatchNorm, which normalizes the conv's own channel order
            y = channel_shuffle(y, self.groups)
        y = self.bn2(self.dw(y))
        return self.bn3(self.conv2(y))

    def _folded(self, x: torch.Tensor, folded: list, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The branch on the folded (weight, bias) pairs, ReLU-ed, plus ``residual`` (before the ReLU)."""
        (conv1_weight, conv1_bias), (dw_weight, dw_bias), (conv2_weight, conv2_bias) = folded
        # The BatchNorm and the ReLU act per channel: the shuffle after them is the conv's output shuffle.
        y = pointwise_group_conv(x, conv1_weight, conv1_bias, self.conv1.groups, output_shuffle=self.groups, relu=True)
        y = depthwise_conv3x3(y, dw_weight, dw_bias, self.stride)
        return pointwise_group_conv(y, conv2_weight, conv2_bias, self.conv2.groups, relu=True, residual=residual)

    def forward(self, x: torch.Tensor, folded: list | None = None) -> torch.Tensor:
        """``folded``: the eval-mode (weight, bias) pairs of :meth:`_folding`, folded by the caller
        from the current tensors (``ShuffleNetV1`` folds all its units at once); None folds here."""
        if not self.training and folded is None:
            layers = self._folding()
            folded = _fold_batch_norms(layers, self) if layers is not None else None
        fold = not self.training and folded is not None
        if self.stride == 1:
            if fold:
                return self._folded(x, folded, residual=x)  # the add and the ReLU in the last conv's epilogue
            return F.relu(x + self._unfolded(x))
        shortcut = F.relu(F.avg_pool2d(x, 3, 2, 1))
        if fold:
            return torch.cat((shortcut, self._folded(x, folded)), 1)
        return torch.cat((shortcut, F.relu(self._unfolded(x))), 1)


class FoldingSequential(nn.Sequential):
    """An ``nn.Sequential`` of units that in eval mode passes each ``ShuffleUnit`` its folded
    BatchNorms."""

    def forward(self, x: torch.Tensor, folded: dict | None = None) -> torch.Tensor:
        """``folded``: unit -> its folded (weight, bias) pairs; a unit not in it folds its own."""
        for unit in self:
            x = unit(x, folded[unit]) if folded is not None and unit in folded else unit(x)
        return x


class ShuffleNetV1(nn.Module):
    """ShuffleNet v1 (paper, Table 1); see :func:`shufflenet_v1`."""

    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        _check_config("shufflenet_v1", groups, width_mult, num_classes)
        stem, stages = _channels(groups, width_mult)
        self.groups = groups
        self.width_mult = width_mult
        # Conv1: the stem conv, its BatchNorm and ReLU (the max pool has no state).
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        units, in_channels = [], stem
        for index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, stages)):
            units.append(ShuffleUnit(in_channels, out_channels, groups, 2, first_grouped=index > 0))
            units += [ShuffleUnit(out_channels, out_channels, groups, 1) for _ in range(repeats - 1)]
            in_channels = out_channels
        self.features = FoldingSequential(*units)  # Stages 2, 3 and 4
        self.fc = nn.Linear(in_channels, num_classes)

    def _fold_all(self):
        """The stem's folded (weight, bias) (None where it is not folded) and unit -> its folded
        pairs, all folded at once from the current tensors."""
        stem_conv, stem_bn = self.conv1[0], self.conv1[1]
        layers = [(_conv_weight(stem_conv), stem_bn)] if stem_bn.track_running_stats else []
        units = []
        if isinstance(self.features, FoldingSequential):
            for unit in self.features:
                unit_layers = unit._folding() if isinstance(unit, ShuffleUnit) else None
                if unit_layers is not None:
                    units.append(unit)
                    layers += unit_layers
        folded = _fold_batch_norms(layers, self)
        stem = folded.pop(0) if stem_bn.track_running_stats else None
        return stem, {unit: folded[3 * i:3 * i + 3] for i, unit in enumerate(units)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check.check_model_input(x, "shufflenet_v1", _conv_weight(self.conv1[0]), training=self.training,
                                downsampling=DOWNSAMPLING)
        if self.training:
            x = self.features(F.max_pool2d(self.conv1(x), 3, 2, 1))
        else:
            stem, folded = self._fold_all()
            if stem is None:
                x = F.max_pool2d(self.conv1(x), 3, 2, 1)
            else:  # Conv1 and MaxPool in one pass: the convolution's output is never written
                x = stem_conv3x3_maxpool(x, *stem)
            features = self.features
            x = features(x, folded) if isinstance(features, FoldingSequential) else features(x)
        return self.fc(x.mean((2, 3)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also takes the state_dict layout of earlier versions of this class: ``conv1`` and
        ``conv1_bn`` for the stem, ``stage2`` to ``stage4`` for the units, named ``compress``,
        ``compress_bn``, ``depthwise``, ``depthwise_bn``, ``expand`` and ``expand_bn``, the
        first BatchNorm's vectors in the shuffled channel order."""
        if prefix + "conv1_bn.running_mean" in state_dict or prefix + "conv1_bn.weight" in state_dict:
            _convert_earlier_layout(state_dict, prefix, self.groups)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


_EARLIER_UNIT_NAMES = {"compress": "conv1", "compress_bn": "bn1", "depthwise": "dw", "depthwise_bn": "bn2",
                       "expand": "conv2", "expand_bn": "bn3"}


def _convert_earlier_layout(state_dict: dict, prefix: str, groups: int) -> None:
    """Renames, in place, the keys of the earlier layout under ``prefix`` to this one's."""
    first_unit_of_stage = {f"stage{i + 2}": sum(STAGE_REPEATS[:i]) for i in range(len(STAGE_REPEATS))}
    for key in [k for k in state_dict if k.startswith(prefix)]:
        head, _, rest = key[len(prefix):].partition(".")
        value = state_dict[key]
        if head == "conv1":
            new = f"conv1.0.{rest}"
        elif head == "conv1_bn":
            new = f"conv1.1.{rest}"
        elif head in first_unit_of_stage:
            index, module, name = rest.split(".", 2)
            new = f"features.{first_unit_of_stage[head] + int(index)}.{_EARLIER_UNIT_NAMES[module]}.{name}"
            if module == "compress_bn" and value.dim() == 1 and groups > 1:
                # Back to the conv's channel order: the shuffle by channels / groups undoes the one by groups.
                value = torch.channel_shuffle(value.view(1, -1, 1), value.shape[0] // groups).view(-1)
        else:
            continue
        del state_dict[key]
        state_dict[prefix + new] = value


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
    0.25, 0.5, 1, 1.5 and 2; any width from 0.25 to 2 is built.

    The state_dict is that of :func:`shufflenet_v1_unfused` with the same
    arguments (its default shuffle placement): the same keys, shapes and
    meaning, so a checkpoint of either loads into the other.

    The input is checked once at the entry: a 4-D batch [N, 3, H, W] in the
    model's dtype (any floating dtype under ``torch.autocast``) and on its device.
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
        _check_config("shufflenet_v1_unfused", groups, width_mult, num_classes)
        stem, stages = _channels(groups, width_mult)
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
    ``FlopCounterMode`` comparisons and the benchmarks start from. With the
    paper's placement its state_dict is that of :func:`shufflenet_v1` (keys,
    shapes and meaning): a checkpoint of either loads into the other. With
    ``shuffle_after_depthwise`` the keys and shapes are the same, but the
    depthwise conv and its BatchNorm see the channels unshuffled."""
    return UnfusedShuffleNetV1(groups, width_mult, num_classes, shuffle_after_depthwise)
