"""Shared test helpers: per-dtype tolerances, reference comparison and random inputs.

Outputs are compared with a float64 run of ``so.reference`` on the same
(upcast) inputs, so the tolerance measures only the tested kernel's rounding.
"""

import pytest
import torch

import shufflenet_ops as so

# dtype -> (atol, rtol), atol relative to the largest magnitude of the expected tensor.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """actual (in ``dtype``) against expected (computed in float64)."""
    atol, rtol = TOLERANCES[dtype]
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def random_activation(shape, dtype, *, rng=0, channels_last=False, device="cpu"):
    """Standard normal values drawn in float64, then cast: every dtype sees the same values.
    ``rng`` is a seed, or a torch.Generator the caller goes on drawing further tensors from."""
    gen = rng if isinstance(rng, torch.Generator) else torch.Generator().manual_seed(rng)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def conv_inputs(n, c_in, c_out, h, w, groups, dtype, *, bias=True, channels_last=False, device="cpu", seed=0):
    """x, weight, bias leaves with requires_grad set, for a pointwise group conv."""
    gen = torch.Generator().manual_seed(seed)
    x = random_activation((n, c_in, h, w), dtype, rng=gen, channels_last=channels_last, device=device)
    weight = torch.randn(c_out, c_in // groups, 1, 1, generator=gen, dtype=torch.float64)
    weight = (weight / (c_in // groups) ** 0.5).to(device=device, dtype=dtype)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) if bias else None
    for t in (x, weight, b):
        if t is not None:
            t.requires_grad_(True)
    return x, weight, b


def float64_leaves(*tensors):
    return tuple(None if t is None else t.detach().double().requires_grad_(True) for t in tensors)


def random_residual(conv_output64: torch.Tensor, dtype, *, channels_last=False, seed=2) -> torch.Tensor:
    """A residual leaf for a conv whose float64 output (before the residual and the ReLU) is
    ``conv_output64``. Sums this close to the ReLU's kink could take either side in float32
    accumulation; they are moved off it, so that every gradient has one right answer."""
    residual = random_activation(conv_output64.shape, dtype, rng=seed, channels_last=channels_last,
                                 device=conv_output64.device)
    with torch.no_grad():
        near_kink = (conv_output64 + residual.double()).abs() < 1e-2
        residual = torch.where(near_kink, residual + 0.05, residual)
    return residual.requires_grad_()


# The ways a bad argument reaches an op: the public function on its native kernel, the public
# function as on a device without one (its reference path), the registered op through torch.ops.
BAD_INPUT_ENTRIES = ["public", "public-reference", "registered"]


def expect_rejected(entry, monkeypatch, native_devices, error, pattern, *, public, registered):
    """Calls ``public()`` or ``registered()`` as ``entry`` says and expects ``error`` matching ``pattern``;
    ``native_devices`` names the so.functional set of devices with a native kernel."""
    if entry == "public-reference":
        monkeypatch.setattr(so.functional, native_devices, frozenset())
    with pytest.raises(error, match=pattern):
        (registered if entry == "registered" else public)()
