"""Helpers for tests that compare so.models.shufflenet_v1 with its stock-module
twin, so.models.shufflenet_v1_unfused (written the way published code writes
it: the channel shuffle is a module method that reshapes and permutes)."""

import torch
from torch import nn


def randomize_batch_norms(model, seed=0):
    """Random affine parameters and running statistics, so that eval-mode
    BatchNorm is not close to the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
    return model


def inverse_shuffle(t, groups):
    """Channel-order permutation along dim 0 that undoes torch.channel_shuffle(., groups)."""
    c = t.shape[0]
    return torch.channel_shuffle(t.reshape(1, c, -1), c // groups).reshape(t.shape)


def load_zoo_weights(stock, zoo):
    """Copies so.models.shufflenet_v1 weights into a shufflenet_v1_unfused (paper
    shuffle placement). The zoo's first BatchNorm of a unit normalizes the
    shuffled channels, the stock one the unshuffled channels."""
    with torch.no_grad():
        stock.conv1[0].weight.copy_(zoo.conv1.weight)
        _copy_bn(stock.conv1[1], zoo.conv1_bn)
        zoo_units = [u for stage in (zoo.stage2, zoo.stage3, zoo.stage4) for u in stage]
        for s, z in zip(stock.features, zoo_units, strict=True):
            s.conv1.weight.copy_(z.compress.weight)
            groups = z.compress.output_shuffle or 1
            _copy_bn(s.bn1, z.compress_bn, lambda t: inverse_shuffle(t, groups))
            s.dw.weight.copy_(z.depthwise.weight)
            _copy_bn(s.bn2, z.depthwise_bn)
            s.conv2.weight.copy_(z.expand.weight)
            _copy_bn(s.bn3, z.expand_bn)
        stock.fc.load_state_dict(zoo.fc.state_dict())


def _copy_bn(dst, src, permute=lambda t: t):
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).copy_(permute(getattr(src, name)))
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def zoo_named_gradients(zoo):
    """The zoo model's parameter gradients keyed and ordered like the stock model's."""
    grads = {"conv1.0.weight": zoo.conv1.weight.grad, "conv1.1.weight": zoo.conv1_bn.weight.grad,
             "conv1.1.bias": zoo.conv1_bn.bias.grad}
    zoo_units = [u for stage in (zoo.stage2, zoo.stage3, zoo.stage4) for u in stage]
    for i, z in enumerate(zoo_units):
        groups = z.compress.output_shuffle or 1
        p = f"features.{i}."
        grads[p + "conv1.weight"] = z.compress.weight.grad
        grads[p + "bn1.weight"] = inverse_shuffle(z.compress_bn.weight.grad, groups)
        grads[p + "bn1.bias"] = inverse_shuffle(z.compress_bn.bias.grad, groups)
        grads[p + "dw.weight"] = z.depthwise.weight.grad
        grads[p + "bn2.weight"], grads[p + "bn2.bias"] = z.depthwise_bn.weight.grad, z.depthwise_bn.bias.grad
        grads[p + "conv2.weight"] = z.expand.weight.grad
        grads[p + "bn3.weight"], grads[p + "bn3.bias"] = z.expand_bn.weight.grad, z.expand_bn.bias.grad
    grads["fc.weight"], grads["fc.bias"] = zoo.fc.weight.grad, zoo.fc.bias.grad
    return grads
