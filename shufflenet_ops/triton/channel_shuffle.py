"""Triton kernel of the channel shuffle: a gather of channels, one tile of
pixels x channels per program, for tensors of any rank >= 3 in their suggested
memory format (contiguous, channels_last or channels_last_3d)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _validation as check
from ._launch import check_dtype, dense, device_guard, image_pixels, pixel_offsets, pixel_strides, shuffle_source

_BLOCK_P = 64
_BLOCK_C = 32


@triton.jit
def _channel_shuffle_kernel(
    x_ptr, y_ptr, pixels, image_pixels, channels, groups,
    x_stride_n, x_stride_c, x_stride_p, y_stride_n, y_stride_c, y_stride_p,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    channel_tiles = tl.cdiv(channels, BLOCK_C)
    pid = tl.program_id(0)
    pixel = pid // channel_tiles * BLOCK_P + tl.arange(0, BLOCK_P)
    channel = pid % channel_tiles * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (pixel < pixels)[:, None] & (channel < channels)[None, :]
    source = shuffle_source(channel, groups, channels).to(tl.int64)
    values = tl.load(
        x_ptr + pixel_offsets(pixel, image_pixels, x_stride_n, x_stride_p)[:, None] + source[None, :] * x_stride_c,
        mask=mask,
    )
    tl.store(
        y_ptr + pixel_offsets(pixel, image_pixels, y_stride_n, y_stride_p)[:, None]
        + channel.to(tl.int64)[None, :] * y_stride_c,
        values,
        mask=mask,
    )


def channel_shuffle(x, groups):
    check.check_channel_shuffle(x, groups)
    check_dtype(x, "x", "channel_shuffle")
    x, memory_format = dense(x)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    if y.numel() == 0:
        return y
    pixels = x.shape[0] * image_pixels(x)
    channels = x.shape[1]
    grid = (triton.cdiv(pixels, _BLOCK_P) * triton.cdiv(channels, _BLOCK_C),)
    with device_guard(x):
        _channel_shuffle_kernel[grid](
            x, y, pixels, image_pixels(x), channels, groups, *pixel_strides(x), *pixel_strides(y),
            BLOCK_P=_BLOCK_P, BLOCK_C=_BLOCK_C,
        )  # fmt: skip
    return y
