"""The reference implementations: the library's ops written only with stock
PyTorch ops. Every test and benchmark compares against these."""

import torch
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """The paper's channel shuffle: view the channels as (groups, C // groups),
    transpose, flatten. Equals ``torch.channel_shuffle(x, groups)``."""
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


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
) -> torch.Tensor:
    """``act(channel_shuffle(conv2d(channel_shuffle(x, input_shuffle), weight, bias,
    groups=groups), output_shuffle) + residual)``; a shuffle of ``None`` or 1 is
    skipped, and so is the residual when ``None``."""
    if input_shuffle not in (None, 1):
        x = channel_shuffle(x, input_shuffle)
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    if weight.shape[1] == 0:
        # An empty sum: conv2d returns no channels at all for it, the op returns the bias (or zeros).
        y = x.new_zeros(x.shape[0], weight.shape[0], *x.shape[2:])
        y = y if bias is None else y + bias.view(1, -1, 1, 1)
    else:
        y = F.conv2d(x, weight, bias, groups=groups)
    if output_shuffle not in (None, 1):
        y = channel_shuffle(y, output_shuffle)
    if residual is not None:
        y = y + residual
    return F.relu(y) if relu else y


def depthwise_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1, *, relu: bool = False
) -> torch.Tensor:
    """Per-channel 3x3 convolution with padding 1: ``act(conv2d(x, weight, bias,
    stride, padding=1, groups=C))``, ``act`` = ReLU when ``relu`` is true."""
    y = F.conv2d(x, weight, bias, stride, 1, groups=x.shape[1])
    return F.relu(y) if relu else y


def max_pool3x3(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """3x3 max pooling with padding 1 (padding never wins)."""
    return F.max_pool2d(x, 3, stride, 1)


def avg_pool3x3(x: torch.Tensor, stride: int = 2) -> torch.Tensor:
    """3x3 average pooling with padding 1: the window sum over 9, padding counted as zero."""
    return F.avg_pool2d(x, 3, stride, 1)


def stem_conv3x3_maxpool(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The network stem: ``max_pool2d(relu(conv2d(x, weight, bias, 2, 1)), 3, 2, 1)``."""
    return F.max_pool2d(F.relu(F.conv2d(x, weight, bias, 2, 1)), 3, 2, 1)
