"""What the Triton kernels of every op share: supported dtypes, tensor layout
arguments, the interpreter switch and the device guard."""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .._validation import check_dtype_supported

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreter_enabled() -> bool:
    """True under TRITON_INTERPRET=1: kernels then run on CPU tensors, in Python."""
    return bool(triton.knobs.runtime.interpret)


def fix_interpreter_loop_bounds() -> None:
    """triton 3.6's interpreter converts a scalar to int with int(ndarray of
    shape (1,)), which numpy >= 2.4 rejects, so every loop with a runtime bound
    fails (triton-lang/triton#9171, fixed upstream by #9172). Applies that fix
    to the interpreter of the installed triton, where it has the same shape."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "scalar_index_fixed", False):
        return

    def patch_tensor_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_tensor_with_scalar_index.scalar_index_fixed = True
    interpreter._patch_lang_tensor = patch_tensor_with_scalar_index


def check_dtype(t: torch.Tensor, name: str, op: str) -> None:
    check_dtype_supported(t, name, f"{op} (Triton)", SUPPORTED_DTYPES)


def dense(t: torch.Tensor) -> tuple[torch.Tensor, torch.memory_format]:
    """t made dense in its suggested memory format (NCHW or channels_last), and that format."""
    memory_format = suggest_memory_format(t)
    return t.contiguous(memory_format=memory_format), memory_format


def pixel_strides(t: torch.Tensor) -> tuple[int, int, int]:
    """(stride of N, stride of C, stride of the flattened spatial index) of a
    dense tensor: in both memory formats the spatial dims collapse into one, and
    the innermost spatial dim of size > 1 gives its stride."""
    spatial = [d for d in range(2, t.dim()) if t.shape[d] > 1]
    return t.stride(0), t.stride(1), t.stride(spatial[-1]) if spatial else 1


def image_pixels(t: torch.Tensor) -> int:
    return math.prod(t.shape[2:])


def dot_precision(dtype: torch.dtype) -> str:
    """float32 products use TF32 tensor cores only where PyTorch's own matmul setting allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreter_enabled():
        return "tf32"
    return "ieee"


def upcast_dot_operands(dtype: torch.dtype) -> bool:
    """The interpreter (triton 3.6) returns garbage for bfloat16 tl.dot; products of
    bfloat16 values are exact in float32, so upcasting there changes no result."""
    return dtype == torch.bfloat16 and interpreter_enabled()


def device_guard(t: torch.Tensor):
    """Triton launches on the current CUDA device; make it the tensor's."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# Programs a split reduction aims for: four per multiprocessor of an H100/H200
# (132), more than enough for an A100 (108). A constant, not the device's count:
# the summation order, and with it every bit of the result, then depends on the
# problem's shape alone, the same on every card.
REDUCTION_PROGRAMS = 4 * 132


def reduction_splits(pixels: int, tiles: int) -> tuple[int, int]:
    """(splits, pixels per split) for a reduction over pixels: enough programs
    to fill a GPU, each split written to its own slot of a workspace that is
    summed afterwards in a fixed order, so the result depends on the shape of
    the problem alone, not on scheduling or the card."""
    granule = 256  # a multiple of every BLOCK_P, so splits start on block boundaries
    splits = max(1, min(triton.cdiv(pixels, granule), triton.cdiv(REDUCTION_PROGRAMS, max(tiles, 1))))
    chunk = triton.cdiv(triton.cdiv(pixels, splits), granule) * granule
    return triton.cdiv(pixels, chunk), chunk


@triton.jit
def shuffle_source(channel, shuffle, channels):
    """The channel that channel_shuffle(., shuffle) reads for output ``channel``.
    Its inverse, the channel a shuffle writes input ``channel`` to, is
    ``shuffle_source(channel, channels // shuffle, channels)``."""
    per_group = channels // shuffle
    return (channel % shuffle) * per_group + channel // shuffle


@triton.jit
def pixel_offsets(pixel, image_pixels, stride_n, stride_pixel):
    """Element offsets of flattened pixel indices n * image_pixels + i, in int64."""
    pixel = pixel.to(tl.int64)
    return (pixel // image_pixels) * stride_n + (pixel % image_pixels) * stride_pixel
