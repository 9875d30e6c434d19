"""A ShuffleNet v1 written with stock PyTorch modules only, the way published
code writes it: the channel shuffle is a module method that reshapes and
permutes. It is the independent oracle for ``so.models`` and a model
``so.fuse`` did not see written."""

import torch
import torch.nn.functional as F
from torch import nn

from shufflenet_ops.models import STAGE_REPEATS, shufflenet_v1_channels


class StockShuffleUnit(nn.Module):
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


class StockShuffleNetV1(nn.Module):
    def __init__(self, groups=3, width_mult=1.0, num_classes=1000, shuffle_after_depthwise=False):
        super().__init__()
        stem, stages = shufflenet_v1_channels(groups, width_mult)
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        units, inp = [], stem
        for index, (repeats, oup) in enumerate(zip(STAGE_REPEATS, stages)):
            for i in range(repeats):
                units.append(StockShuffleUnit(inp, oup, groups, 2 if i == 0 else 1, index > 0 or i > 0,
                                              shuffle_after_depthwise))
                inp = oup
        self.features = nn.Sequential(*units)
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.features(self.maxpool(self.conv1(x)))
        return self.fc(x.mean((2, 3)))


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
    """Copies so.models.shufflenet_v1 weights into a StockShuffleNetV1 (paper
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
