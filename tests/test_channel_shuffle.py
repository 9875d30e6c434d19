"""so.channel_shuffle against PyTorch's own torch.channel_shuffle and so.reference."""

import os

import pytest
import torch

import shufflenet_ops as so

SHAPES_AND_GROUPS = [
    ((2, 12, 5, 7), 3),
    ((2, 12, 5, 7), 1),
    ((2, 12, 5, 7), 12),  # one channel per group
    ((1, 240, 28, 28), 3),
    ((3, 384, 4, 4), 8),
    ((2, 8, 1, 1), 2),  # 1x1 spatial
    ((0, 6, 3, 3), 2),  # empty batch
    ((2, 6, 0, 3), 3),  # empty spatial
]
FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("shape,groups", SHAPES_AND_GROUPS)
@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.uint8])
def test_matches_torch_channel_shuffle(shape, groups, memory_format, dtype):
    x = torch.randint(0, 100, shape).to(dtype).to(memory_format=memory_format)
    y = so.channel_shuffle(x, groups)
    assert torch.equal(y, torch.channel_shuffle(x, groups))
    assert torch.equal(y, so.reference.channel_shuffle(x, groups))
    if x.numel():  # an empty tensor has no meaningful memory format
        assert y.is_contiguous(memory_format=memory_format)


# In channels_last, 2, 3, 4, 8 or 16 groups take a vectorized transpose that works
# in blocks of a whole vector, then halves of it, down to single elements; these
# per-group channel counts leave every tail size for every element size.
@pytest.mark.parametrize("groups", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("per_group", [1, 3, 5, 16, 31, 64, 67])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.uint8])
def test_channels_last_transpose_blocks(groups, per_group, dtype):
    x = torch.randint(0, 100, (2, groups * per_group, 3, 5)).to(dtype).to(memory_format=torch.channels_last)
    y = so.channel_shuffle(x, groups)
    assert torch.equal(y, torch.channel_shuffle(x.contiguous(), groups))
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", [(2, 12, 7), (2, 12, 3, 4, 5)])
def test_other_ranks(shape):
    x = torch.randn(shape)
    torch.testing.assert_close(so.channel_shuffle(x, 4), torch.channel_shuffle(x, 4), rtol=0, atol=0)
    x5 = torch.randn(2, 12, 3, 4, 5).to(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(so.channel_shuffle(x5, 3), torch.channel_shuffle(x5, 3), rtol=0, atol=0)


# Every element size a dtype has (1, 2, 4, 8, 16 bytes), integer, bool, floating and complex.
ALL_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.float16, torch.bfloat16, torch.int32,
              torch.float32, torch.complex32, torch.int64, torch.float64, torch.complex64, torch.complex128]


def values(shape, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    if dtype.is_complex:
        return torch.randn(shape, generator=gen, dtype=torch.complex128).to(dtype)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return torch.randint(0, 2 if dtype == torch.bool else 100, shape, generator=gen).to(dtype)


def same_bits(a, b):
    """Equal element for element, for dtypes torch.equal has no kernel for (complex32)."""
    flat = [torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1)) for t in (a, b)]
    return a.shape == b.shape and torch.equal(flat[0].view(torch.uint8), flat[1].view(torch.uint8))


# Shapes whose size-1 dimensions make a dense tensor count as NCHW and channels_last (or
# channels_last_3d) at once, and ones with a single size-1 spatial dimension, in every layout:
# dense, channels-last, and a strided view of each.
SIZE_ONE_SHAPES = [(1, 4, 1, 1), (2, 4, 1, 1), (2, 6, 1, 3), (2, 6, 3, 1), (1, 4, 1, 1, 1), (2, 6, 1, 2, 1)]


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("shape", SIZE_ONE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "channels_last-strided"])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_element_size_and_size_one_layout(shape, layout, dtype):
    x = values(shape, dtype)
    if layout.startswith("channels_last"):
        # Channels-last strides even where size-1 dimensions make x count as both layouts
        # (x.contiguous(memory_format=...) would keep x's NCHW strides there).
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = torch.empty(shape, dtype=dtype, memory_format=memory_format).copy_(x)
    if layout.endswith("strided"):
        x = torch.cat([x, x], dim=-1)[..., ::2]
    assert x.shape == shape
    groups = shape[1] // 2
    y = so.channel_shuffle(x, groups)
    assert same_bits(y, so.reference.channel_shuffle(x, groups))
    assert same_bits(torch.ops.shufflenet_ops.channel_shuffle(x, groups), y)


@pytest.mark.parametrize(
    "make_view",
    [
        lambda x: x[:, :, ::2, 1:],
        lambda x: x[:, 2:14],
        lambda x: x.transpose(2, 3),
        lambda x: x.to(memory_format=torch.channels_last)[:, :, 1:, :],
    ],
    ids=["strided-spatial", "channel-slice", "transposed", "channels-last-slice"],
)
def test_non_contiguous_input(make_view):
    x = make_view(torch.randn(2, 16, 6, 8))
    torch.testing.assert_close(so.channel_shuffle(x, 4), torch.channel_shuffle(x.contiguous(), 4), rtol=0, atol=0)


@pytest.mark.parametrize("groups", [2, 3, 4, 6])
def test_inverse_is_shuffle_by_channels_over_groups(groups):
    x = torch.randn(2, 12, 3, 3)
    # The inverse shuffle, view as (C // g, g), is channel_shuffle(x, C // g).
    assert torch.equal(so.channel_shuffle(so.channel_shuffle(x, groups), 12 // groups), x)
    inverse_by_view = x.view(2, 12 // groups, groups, 3, 3).transpose(1, 2).reshape(2, 12, 3, 3)
    assert torch.equal(so.channel_shuffle(x, 12 // groups), inverse_by_view)


@pytest.mark.parametrize("memory_format", FORMATS)
def test_gradient(memory_format):
    x = torch.randn(2, 12, 5, 5, dtype=torch.float64).to(memory_format=memory_format).requires_grad_()
    grad = torch.randn(2, 12, 5, 5, dtype=torch.float64)
    (so.channel_shuffle(x, 3) * grad).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (torch.channel_shuffle(x_ref, 3) * grad).sum().backward()
    assert torch.equal(x.grad, x_ref.grad)
    leaf = torch.randn(1, 8, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: so.channel_shuffle(t, 4), (leaf,))
    assert torch.autograd.gradgradcheck(lambda t: so.channel_shuffle(t, 4), (leaf,))


def test_no_graph_without_grad_mode():
    x = torch.randn(2, 12, 3, 3, requires_grad=True)
    with torch.no_grad():
        y = so.channel_shuffle(x, 3)
    assert y.grad_fn is None and not y.requires_grad
    assert torch.equal(y, torch.channel_shuffle(x.detach(), 3))


@pytest.mark.parametrize("backend", ["reference", "native"])
def test_backends_agree(backend):
    x = torch.randn(2, 24, 4, 4)
    assert torch.equal(so.channel_shuffle(x, 4, backend=backend), torch.channel_shuffle(x, 4))


def _available_memory_bytes():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


@pytest.mark.skipif(_available_memory_bytes() < 8 * 2**30, reason="needs 8 GiB of free memory for two 2 GiB tensors")
@pytest.mark.parametrize("memory_format", FORMATS)
def test_more_than_two_to_the_31_elements(memory_format):
    # 4 channels x 2^29 + 5 pixels: offsets past 2^31 must not wrap around.
    pixels = 2**29 + 5
    x = torch.empty(1, 4, 1, pixels, dtype=torch.uint8).to(memory_format=memory_format)
    for c in range(4):
        x[0, c].fill_(c)
        x[0, c, 0, -1] = 10 + c  # the very last pixel, at an offset beyond 2^31
    y = so.channel_shuffle(x, 2)
    del x
    for c, source in enumerate([0, 2, 1, 3]):  # channel_shuffle(., 2) of 4 channels
        assert int(y[0, c, 0, -1]) == 10 + source
        assert bool((y[0, c, 0, :-1] == source).all())
