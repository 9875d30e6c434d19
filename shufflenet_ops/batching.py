"""Batching rules of the registered ops, for ``torch.vmap`` (and so for
``torch.func.jacrev``, ``jacfwd``, ``hessian`` and per-sample gradients).

Two moves cover almost every case in one op call:

- *Into the batch*: where only activations (tensors whose first dim is the
  image batch) are vmapped, the vmapped dim folds into that batch.
- *Into the groups*: where a weight is vmapped too, each vmapped sample becomes
  its own set of groups of one grouped convolution, its channels laid side by
  side; the shuffles, which act within a sample's channels, run before or
  after that convolution instead of inside it.

The stem's dense convolution has no groups to fold into: with a vmapped weight
it runs once per sample.
"""

from __future__ import annotations

import torch

from .functional import _DEPTHWISE_OP, _POOL_OP, _STEM_OP
from .ops import DEPTHWISE_CONV3X3, NATIVE, POOL3X3, STEM_CONV3X3_MAXPOOL, TRITON, OpFamily


def _batch_first(t, dim, size):
    """``t`` with its vmapped dim first; an unvmapped ``t`` repeated ``size`` times (a view)."""
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _into_batch(t):
    """[B, N, ...] -> [B * N, ...]."""
    return t.reshape(-1, *t.shape[2:])


def _out_of_batch(t, size):
    """[B * N, ...] -> [B, N, ...]."""
    return t.reshape(size, -1, *t.shape[1:])


def _into_channels(t):
    """[B, N, C, ...] -> [N, B * C, ...]: each sample's channels side by side."""
    return t.transpose(0, 1).reshape(t.shape[1], -1, *t.shape[3:])


def _out_of_channels(t, size):
    """[N, B * C, ...] -> [B, N, C, ...]."""
    return t.reshape(t.shape[0], size, -1, *t.shape[2:]).transpose(0, 1)


def _stacked_weights(t, dim, size):
    """A per-channel parameter, vmapped or not, as [B * C, ...]."""
    t = _batch_first(t, dim, size)
    return t.reshape(-1, *t.shape[2:])


def _activations_only(in_dims, *parameter_positions):
    return all(in_dims[i] is None for i in parameter_positions)


def _register_family_rules(family: OpFamily):
    shuffle = family.channel_shuffle

    def shuffled(t, groups):
        return t if groups == 1 else shuffle(t, groups)

    def unshuffled(t, groups):
        return t if groups == 1 else shuffle(t, t.shape[1] // groups)

    @torch.library.register_vmap(family.qualname("channel_shuffle"))
    def _(info, in_dims, x, groups):
        x = _into_batch(_batch_first(x, in_dims[0], info.batch_size))
        return _out_of_batch(shuffle(x, groups), info.batch_size), 0

    @torch.library.register_vmap(family.qualname("pointwise_group_conv"))
    def _(info, in_dims, x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual=None):
        size = info.batch_size
        x_dim, weight_dim, bias_dim = in_dims[:3]
        residual_dim = in_dims[7] if len(in_dims) > 7 else None
        x = _into_batch(_batch_first(x, x_dim, size))
        if residual is not None:
            residual = _into_batch(_batch_first(residual, residual_dim, size))
        if _activations_only(in_dims, 1, 2):
            y = family.pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual)
            return _out_of_batch(y, size), 0
        x = _into_channels(_out_of_batch(shuffled(x, input_shuffle), size))
        weight = _stacked_weights(weight, weight_dim, size)
        if bias is not None:
            bias = _stacked_weights(bias, bias_dim, size)
        y = family.pointwise_group_conv(x, weight, bias, size * groups, 1, 1, False, None)
        y = shuffled(_into_batch(_out_of_channels(y, size)), output_shuffle)
        if residual is not None:
            y = y + residual
        if relu:
            y = torch.relu(y)
        return _out_of_batch(y, size), 0

    @torch.library.register_vmap(family.qualname("pointwise_group_conv_grad_input"))
    def _(info, in_dims, grad_out, weight, groups, input_shuffle, output_shuffle):
        size = info.batch_size
        grad_out = _into_batch(_batch_first(grad_out, in_dims[0], size))
        if _activations_only(in_dims, 1):
            return _out_of_batch(family.grad_input(grad_out, weight, groups, input_shuffle, output_shuffle), size), 0
        grad_out = _into_channels(_out_of_batch(unshuffled(grad_out, output_shuffle), size))
        weight = _stacked_weights(weight, in_dims[1], size)
        grad_x = family.grad_input(grad_out, weight, size * groups, 1, 1)
        grad_x = unshuffled(_into_batch(_out_of_channels(grad_x, size)), input_shuffle)
        return _out_of_batch(grad_x, size), 0

    # grad_weight and grad_bias sum over the image batch, so a vmapped dim
    # cannot fold into it: it always folds into the groups.
    @torch.library.register_vmap(family.qualname("pointwise_group_conv_grad_weight"))
    def _(info, in_dims, grad_out, x, groups, input_shuffle, output_shuffle):
        size = info.batch_size
        grad_out = _into_batch(_batch_first(grad_out, in_dims[0], size))
        x = _into_batch(_batch_first(x, in_dims[1], size))
        grad_out = _into_channels(_out_of_batch(unshuffled(grad_out, output_shuffle), size))
        x = _into_channels(_out_of_batch(shuffled(x, input_shuffle), size))
        grad_w = family.grad_weight(grad_out, x, size * groups, 1, 1)
        return grad_w.reshape(size, -1, *grad_w.shape[1:]), 0

    @torch.library.register_vmap(family.qualname("pointwise_group_conv_grad_bias"))
    def _(info, in_dims, grad_out, output_shuffle):
        size = info.batch_size
        grad_out = _into_batch(_batch_first(grad_out, in_dims[0], size))
        grad_out = _into_channels(_out_of_batch(unshuffled(grad_out, output_shuffle), size))
        return family.grad_bias(grad_out, 1).reshape(size, -1), 0


_register_family_rules(NATIVE)
_register_family_rules(TRITON)


@torch.library.register_vmap(DEPTHWISE_CONV3X3)
def _(info, in_dims, x, weight, bias, stride, relu):
    size = info.batch_size
    x = _batch_first(x, in_dims[0], size)
    if _activations_only(in_dims, 1, 2):
        return _out_of_batch(_DEPTHWISE_OP(_into_batch(x), weight, bias, stride, relu), size), 0
    # One channel per group: the samples' channels side by side are channels too.
    weight = _stacked_weights(weight, in_dims[1], size)
    if bias is not None:
        bias = _stacked_weights(bias, in_dims[2], size)
    return _out_of_channels(_DEPTHWISE_OP(_into_channels(x), weight, bias, stride, relu), size), 0


@torch.library.register_vmap(POOL3X3)
def _(info, in_dims, x, stride, average):
    x = _into_batch(_batch_first(x, in_dims[0], info.batch_size))
    return _out_of_batch(_POOL_OP(x, stride, average), info.batch_size), 0


@torch.library.register_vmap(STEM_CONV3X3_MAXPOOL)
def _(info, in_dims, x, weight, bias):
    size = info.batch_size
    x = _batch_first(x, in_dims[0], size)
    if _activations_only(in_dims, 1, 2):
        return _out_of_batch(_STEM_OP(_into_batch(x), weight, bias), size), 0
    weight = _batch_first(weight, in_dims[1], size)
    bias = _batch_first(bias, in_dims[2], size)
    samples = [_STEM_OP(x[i], weight[i], None if bias is None else bias[i]) for i in range(size)]
    return torch.stack(samples), 0
