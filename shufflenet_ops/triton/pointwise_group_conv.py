"""Triton kernels of the fused pointwise group convolution: forward, grad_input,
grad_weight and grad_bias.

The forward pass and grad_input are the same computation, a grouped GEMM over
pixels whose operand and result channels are gathered and scattered through a
channel shuffle: group j reads source channels shuffle_source(j * R + r) and
writes destination channels shuffle_source(j * O + o) (R: reduced channels per
group, O: produced channels per group). Forward reads x and writes y; grad_input
reads grad_out through the output shuffle and writes grad_x through the input
shuffle, with the weight transposed. No shuffled tensor is ever materialized.

Pixels are the flattened N * H * W index, so one kernel serves NCHW and
channels_last. On channels_last a program computes GROUP_BLOCK groups of its
pixel tile at once (a batched tl.dot), so together its stores cover whole runs
of a pixel's channels even when the output shuffle interleaves the groups.

grad_weight reduces over pixels in fixed splits, each written to its own slot of
a float32 workspace that is summed afterwards: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _validation as check
from ._launch import (
    check_dtype,
    dense,
    device_guard,
    dot_precision,
    image_pixels,
    interpreter_enabled,
    pixel_offsets,
    pixel_strides,
    reduction_splits,
    shuffle_source,
    upcast_dot_operands,
)

# Tiles for H100/H200 and A100: the op is memory-bound at ShuffleNet shapes
# (a few dozen FLOPs per byte), so the configs favour many pixels per program
# and enough pipeline stages to keep loads in flight; the autotuner picks per shape.
_GEMM_CONFIGS = [
    triton.Config({"BLOCK_P": p, "BLOCK_O": o, "BLOCK_R": r}, num_warps=w, num_stages=s)
    for p, o, r, w, s in [
        (128, 64, 32, 4, 4),
        (128, 128, 32, 8, 3),
        (256, 64, 32, 8, 3),
        (256, 128, 32, 8, 3),
        (64, 64, 64, 4, 4),
        (128, 32, 64, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 64, 64, 8, 3),
        (64, 32, 32, 4, 4),
        (32, 32, 32, 4, 3),
        (32, 16, 32, 4, 3),
        # channels_last programs hold GROUP_BLOCK groups: smaller tiles per group.
        (64, 64, 32, 8, 3),
        (128, 32, 32, 4, 4),
        (128, 16, 32, 4, 4),
        (32, 64, 32, 4, 3),
    ]
]
_GRAD_WEIGHT_CONFIGS = [
    triton.Config({"BLOCK_P": p, "BLOCK_M": m, "BLOCK_K": k}, num_warps=w, num_stages=s)
    for p, m, k, w, s in [
        (64, 64, 64, 4, 4),
        (128, 64, 64, 8, 3),
        (64, 128, 64, 8, 3),
        (64, 128, 128, 8, 3),
        (32, 64, 64, 4, 4),
        (64, 32, 32, 4, 4),
        (128, 32, 32, 4, 4),
    ]
]
# The interpreter runs every program in Python: one small config, no tuning.
_INTERPRETER_GEMM_CONFIG = [triton.Config({"BLOCK_P": 32, "BLOCK_O": 16, "BLOCK_R": 16})]
_INTERPRETER_GRAD_WEIGHT_CONFIG = [triton.Config({"BLOCK_P": 64, "BLOCK_M": 16, "BLOCK_K": 16})]

# Float32 accumulator elements a program may hold (GROUP_BLOCK * BLOCK_P * BLOCK_O).
_MAX_ACCUMULATOR = 128 * 128
_MAX_GROUP_BLOCK = 8


def _prune_gemm_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    group_block = args["GROUP_BLOCK"]
    produced = triton.next_power_of_2(max(args["produced_per_group"], 16))
    reduced = triton.next_power_of_2(max(args["reduced_per_group"], 16))
    kept = [
        c
        for c in configs
        if group_block * c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_O"] <= _MAX_ACCUMULATOR
        and c.kwargs["BLOCK_O"] <= produced
        and c.kwargs["BLOCK_R"] <= reduced
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_P"] * c.kwargs["BLOCK_O"])]


def _prune_grad_weight_configs(configs, named_args, **kwargs):
    args = {**named_args, **kwargs}
    m = triton.next_power_of_2(max(args["M"], 16))
    k = triton.next_power_of_2(max(args["K"], 16))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= m and c.kwargs["BLOCK_K"] <= k]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_K"])]


def _gemm_configs():
    return _INTERPRETER_GEMM_CONFIG if interpreter_enabled() else _GEMM_CONFIGS


def _grad_weight_configs():
    return _INTERPRETER_GRAD_WEIGHT_CONFIG if interpreter_enabled() else _GRAD_WEIGHT_CONFIGS


@triton.autotune(
    configs=_gemm_configs(),
    key=["reduced_per_group", "produced_per_group", "groups", "GROUP_BLOCK", "src_stride_c", "dst_stride_c"],
    prune_configs_by={"early_config_prune": _prune_gemm_configs},
)
@triton.jit
def _shuffled_group_gemm_kernel(
    src_ptr, weight_ptr, bias_ptr, residual_ptr, dst_ptr,
    pixels, image_pixels, groups, reduced_per_group, produced_per_group,
    src_channels, src_shuffle, dst_channels, dst_shuffle,
    src_stride_n, src_stride_c, src_stride_p,
    dst_stride_n, dst_stride_c, dst_stride_p,
    weight_stride_group, weight_stride_reduced, weight_stride_produced,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr, GROUP_BLOCK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    # Programs that share a pixel tile are adjacent in launch order, so the
    # cache lines their gathers and scatters share are hot in L2 together.
    produced_tiles = tl.cdiv(produced_per_group, BLOCK_O)
    tiles_per_pixel_block = tl.cdiv(groups, GROUP_BLOCK) * produced_tiles
    pid = tl.program_id(0)
    pixel_block = pid // tiles_per_pixel_block
    group_block = pid % tiles_per_pixel_block // produced_tiles
    produced_block = pid % produced_tiles

    group = (group_block * GROUP_BLOCK + tl.arange(0, GROUP_BLOCK))[:, None, None]
    pixel = pixel_block * BLOCK_P + tl.arange(0, BLOCK_P)
    produced = (produced_block * BLOCK_O + tl.arange(0, BLOCK_O))[None, None, :]
    reduced = tl.arange(0, BLOCK_R)
    group_mask = group < groups
    pixel_mask = (pixel < pixels)[None, :, None]
    produced_mask = produced < produced_per_group

    src_pixel = pixel_offsets(pixel, image_pixels, src_stride_n, src_stride_p)[None, :, None]
    weight_base = weight_ptr + group * weight_stride_group + produced * weight_stride_produced
    acc = tl.zeros((GROUP_BLOCK, BLOCK_P, BLOCK_O), dtype=tl.float32)
    for r0 in range(0, reduced_per_group, BLOCK_R):
        src_r = (r0 + reduced)[None, None, :]
        src_channel = shuffle_source(group * reduced_per_group + src_r, src_shuffle, src_channels)
        a = tl.load(
            src_ptr + src_pixel + src_channel.to(tl.int64) * src_stride_c,
            mask=group_mask & pixel_mask & (src_r < reduced_per_group),
            other=0.0,
        )
        weight_r = (r0 + reduced)[None, :, None]
        b = tl.load(
            weight_base + weight_r * weight_stride_reduced,
            mask=group_mask & (weight_r < reduced_per_group) & produced_mask,
            other=0.0,
        )
        if UPCAST_OPERANDS:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)

    if HAS_BIAS:
        bias = tl.load(bias_ptr + group * produced_per_group + produced, mask=group_mask & produced_mask, other=0.0)
        acc += bias.to(tl.float32)
    dst_channel = shuffle_source(group * produced_per_group + produced, dst_shuffle, dst_channels)
    dst_pixel = pixel_offsets(pixel, image_pixels, dst_stride_n, dst_stride_p)[None, :, None]
    dst_offsets = dst_pixel + dst_channel.to(tl.int64) * dst_stride_c
    store_mask = group_mask & pixel_mask & produced_mask
    if HAS_RESIDUAL:  # laid out like dst
        acc += tl.load(residual_ptr + dst_offsets, mask=store_mask, other=0.0).to(tl.float32)
    if RELU:
        acc = tl.where(acc < 0.0, 0.0, acc)  # NaN stays NaN, as in F.relu
    tl.store(dst_ptr + dst_offsets, acc.to(dst_ptr.dtype.element_ty), mask=store_mask)


def _shuffled_group_gemm(src, weight_strides, weight, bias, dst, groups, reduced, produced, src_shuffle,
                         dst_shuffle, relu, channels_last, residual=None):  # fmt: skip
    """dst[p, c] = act(sum_r src[p, src_channel(j, r)] * W(j, r, o) + bias + residual[p, c]) at
    c = dst_channel(j, o); ``residual`` is laid out like ``dst``."""
    pixels = src.shape[0] * image_pixels(src)
    if dst.numel() == 0:
        return dst
    group_block = min(triton.next_power_of_2(groups), _MAX_GROUP_BLOCK) if channels_last else 1

    def grid(meta):
        tiles = triton.cdiv(groups, group_block) * triton.cdiv(produced, meta["BLOCK_O"])
        return (triton.cdiv(pixels, meta["BLOCK_P"]) * tiles,)

    with device_guard(src):
        _shuffled_group_gemm_kernel[grid](
            src, weight, bias if bias is not None else weight, residual if residual is not None else dst, dst,
            pixels, image_pixels(src), groups, reduced, produced,
            src.shape[1], src_shuffle, dst.shape[1], dst_shuffle,
            *pixel_strides(src), *pixel_strides(dst), *weight_strides,
            HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, RELU=relu, GROUP_BLOCK=group_block,
            DOT_PRECISION=dot_precision(src.dtype), UPCAST_OPERANDS=upcast_dot_operands(src.dtype),
        )  # fmt: skip
    return dst


def _weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], weight.shape[1])


def pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual=None):
    op = "pointwise_group_conv"
    check.check_pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, residual)
    check_dtype(x, "x", op)
    x, memory_format = dense(x)
    w = _weight_matrix(weight)
    out_channels, in_per_group = w.shape
    out_per_group = out_channels // groups
    n, _, h, width = x.shape
    y = torch.empty((n, out_channels, h, width), dtype=x.dtype, device=x.device, memory_format=memory_format)
    # W(j, r = k, o = m) = w[j * M + m, k]
    strides = (out_per_group * w.stride(0), w.stride(1), w.stride(0))
    return _shuffled_group_gemm(
        x, strides, w, None if bias is None else bias.contiguous(), y, groups, in_per_group, out_per_group,
        input_shuffle, out_channels // output_shuffle, relu, memory_format == torch.channels_last,
        None if residual is None else residual.contiguous(memory_format=memory_format),
    )  # fmt: skip


def pointwise_group_conv_grad_input(grad_out, weight, groups, input_shuffle, output_shuffle):
    op = "pointwise_group_conv_grad_input"
    check.check_grad_input(grad_out, weight, groups, input_shuffle, output_shuffle)
    check_dtype(grad_out, "grad_out", op)
    grad_out, memory_format = dense(grad_out)
    w = _weight_matrix(weight)
    out_channels, in_per_group = w.shape
    out_per_group = out_channels // groups
    n, _, h, width = grad_out.shape
    grad_x = torch.empty(
        (n, in_per_group * groups, h, width), dtype=grad_out.dtype, device=grad_out.device,
        memory_format=memory_format,
    )  # fmt: skip
    # W(j, r = m, o = k) = w[j * M + m, k]; grad_out is read through the output
    # shuffle and grad_x written through the input shuffle.
    strides = (out_per_group * w.stride(0), w.stride(0), w.stride(1))
    return _shuffled_group_gemm(
        grad_out, strides, w, None, grad_x, groups, out_per_group, in_per_group,
        out_channels // output_shuffle, input_shuffle, False, memory_format == torch.channels_last,
    )  # fmt: skip


@triton.autotune(
    configs=_grad_weight_configs(),
    key=["M", "K", "groups", "grad_stride_c", "x_stride_c"],
    prune_configs_by={"early_config_prune": _prune_grad_weight_configs},
)
@triton.jit
def _grad_weight_kernel(
    grad_ptr, x_ptr, partial_ptr,
    pixels, image_pixels, chunk, groups, M, K,
    grad_channels, grad_shuffle, x_channels, x_shuffle,
    grad_stride_n, grad_stride_c, grad_stride_p,
    x_stride_n, x_stride_c, x_stride_p,
    DOT_PRECISION: tl.constexpr, UPCAST_OPERANDS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # partial[split, j * M + m, k] = sum over this split's pixels p of
    #   grad[p, grad_channel(j, m)] * x[p, x_channel(j, k)]
    m_tiles = tl.cdiv(M, BLOCK_M)
    k_tiles = tl.cdiv(K, BLOCK_K)
    pid = tl.program_id(0)
    split = tl.program_id(1)
    group = pid // (m_tiles * k_tiles)
    m = pid % (m_tiles * k_tiles) // k_tiles * BLOCK_M + tl.arange(0, BLOCK_M)
    k = pid % k_tiles * BLOCK_K + tl.arange(0, BLOCK_K)
    m_mask = m < M
    k_mask = k < K
    grad_channel = shuffle_source(group * M + m, grad_shuffle, grad_channels).to(tl.int64) * grad_stride_c
    x_channel = shuffle_source(group * K + k, x_shuffle, x_channels).to(tl.int64) * x_stride_c

    start = split * chunk
    end = tl.minimum(start + chunk, pixels)
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        pixel = p0 + tl.arange(0, BLOCK_P)
        pixel_mask = pixel < end
        a = tl.load(
            grad_ptr + grad_channel[:, None] + pixel_offsets(pixel, image_pixels, grad_stride_n, grad_stride_p)[None, :],
            mask=m_mask[:, None] & pixel_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            x_ptr + pixel_offsets(pixel, image_pixels, x_stride_n, x_stride_p)[:, None] + x_channel[None, :],
            mask=pixel_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        if UPCAST_OPERANDS:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    row = (group * M + m).to(tl.int64)
    offsets = split.to(tl.int64) * groups * M * K + row[:, None] * K + k[None, :]
    tl.store(partial_ptr + offsets, acc, mask=m_mask[:, None] & k_mask[None, :])


def pointwise_group_conv_grad_weight(grad_out, x, groups, input_shuffle, output_shuffle):
    op = "pointwise_group_conv_grad_weight"
    check.check_grad_weight(grad_out, x, groups, input_shuffle, output_shuffle)
    check_dtype(grad_out, "grad_out", op)
    grad_out, _ = dense(grad_out)
    x, _ = dense(x)
    out_channels, in_channels = grad_out.shape[1], x.shape[1]
    out_per_group, in_per_group = out_channels // groups, in_channels // groups
    pixels = x.shape[0] * image_pixels(x)
    shape = (out_channels, in_per_group, 1, 1)
    if pixels == 0 or grad_out.numel() == 0 or x.numel() == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    tiles = groups * triton.cdiv(out_per_group, 64) * triton.cdiv(in_per_group, 64)
    splits, chunk = reduction_splits(pixels, tiles)
    partial = torch.empty((splits, out_channels, in_per_group), dtype=torch.float32, device=x.device)

    def grid(meta):
        return (groups * triton.cdiv(out_per_group, meta["BLOCK_M"]) * triton.cdiv(in_per_group, meta["BLOCK_K"]), splits)

    with device_guard(x):
        _grad_weight_kernel[grid](
            grad_out, x, partial,
            pixels, image_pixels(x), chunk, groups, out_per_group, in_per_group,
            out_channels, out_channels // output_shuffle, in_channels, input_shuffle,
            *pixel_strides(grad_out), *pixel_strides(x),
            DOT_PRECISION=dot_precision(x.dtype), UPCAST_OPERANDS=upcast_dot_operands(x.dtype),
        )  # fmt: skip
    return partial.sum(0).to(x.dtype).reshape(shape)


@triton.jit
def _grad_bias_kernel(
    grad_ptr, partial_ptr, pixels, image_pixels, chunk, channels, grad_shuffle,
    stride_n, stride_c, stride_p,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    # partial[split, c] = sum over this split's pixels p of grad[p, grad_channel(c)]
    split = tl.program_id(1)
    channel = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channel < channels
    grad_channel = shuffle_source(channel, grad_shuffle, channels).to(tl.int64) * stride_c
    start = split * chunk
    end = tl.minimum(start + chunk, pixels)
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(start, end, BLOCK_P):
        pixel = p0 + tl.arange(0, BLOCK_P)
        tile = tl.load(
            grad_ptr + pixel_offsets(pixel, image_pixels, stride_n, stride_p)[:, None] + grad_channel[None, :],
            mask=(pixel < end)[:, None] & channel_mask[None, :],
            other=0.0,
        )
        acc += tl.sum(tile.to(tl.float32), axis=0)
    tl.store(partial_ptr + split.to(tl.int64) * channels + channel, acc, mask=channel_mask)


def pointwise_group_conv_grad_bias(grad_out, output_shuffle):
    op = "pointwise_group_conv_grad_bias"
    check.check_grad_bias(grad_out, output_shuffle)
    check_dtype(grad_out, "grad_out", op)
    grad_out, _ = dense(grad_out)
    channels = grad_out.shape[1]
    pixels = grad_out.shape[0] * image_pixels(grad_out)
    if pixels == 0 or channels == 0:
        return torch.zeros((channels,), dtype=grad_out.dtype, device=grad_out.device)
    block_c = 64
    splits, chunk = reduction_splits(pixels, triton.cdiv(channels, block_c))
    partial = torch.empty((splits, channels), dtype=torch.float32, device=grad_out.device)
    with device_guard(grad_out):
        _grad_bias_kernel[(triton.cdiv(channels, block_c), splits)](
            grad_out, partial, pixels, image_pixels(grad_out), chunk, channels, channels // output_shuffle,
            *pixel_strides(grad_out), BLOCK_P=64, BLOCK_C=block_c,
        )  # fmt: skip
    return partial.sum(0).to(grad_out.dtype)
