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


def load_zoo_weights(stock, zoo):
    """Copies so.models.shufflenet_v1 weights into a shufflenet_v1_unfused (paper
    shuffle placement): the two share one state_dict layout."""
    stock.load_state_dict(zoo.state_dict())
