"""so.fuse on models this project did not write: every way of writing a shuffle,
a ShuffleNet v1 written like published code, and torchvision's real
shufflenet_v2_x1_0. The fused module must compute the original's function
(outputs, and in train mode gradients and BatchNorm statistics) with no stock
shuffle left in its graph."""

import copy
import enum
import glob
import os
import subprocess
import sys
import types
import warnings
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shufflenet_ops as so
from shufflenet_ops.fuse import (ADD_RELU, AVG_POOL, MAX_POOL, PARAMETER_COMPUTATION, RESIDUAL_ADD_RELU,
                                 SMALL_BATCH, SMALL_BATCH_LINEAR, STEM, FuseError, small_batch_linear)
from shufflenet_ops.models import shufflenet_v1_unfused
from tests.stock_shufflenet import randomize_batch_norms

aten = torch.ops.aten
STOCK_SHUFFLE_NODES = {aten.channel_shuffle.default, aten.native_channel_shuffle.default, aten.transpose.int,
                       aten.permute.default}


def call_targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def assert_no_stock_shuffle(gm):
    left = [t for t in call_targets(gm) if t in STOCK_SHUFFLE_NODES]
    assert not left, f"stock shuffle ops left in the fused graph: {left}"


def assert_same_function(model, fused, x, *, train):
    """Outputs and, in train mode, input/parameter gradients and BatchNorm buffers."""
    reference = copy.deepcopy(model)
    x_ref, x_fused = x.clone().requires_grad_(train), x.clone().requires_grad_(train)
    expected, actual = reference(x_ref), fused(x_fused)
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, atol=5e-5 * scale, rtol=5e-5)
    if not train:
        return
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    torch.testing.assert_close(x_fused.grad, x_ref.grad, atol=5e-5 * x_ref.grad.abs().max().item(), rtol=5e-5)
    fused_params = dict(fused.named_parameters())
    grad_scale = max(p.grad.abs().max().item() for p in reference.parameters())
    for name, param in reference.named_parameters():
        torch.testing.assert_close(fused_params[name].grad, param.grad, atol=5e-5 * grad_scale, rtol=5e-5,
                                   msg=lambda m: f"grad of {name}: {m}")
    fused_buffers = dict(fused.named_buffers())
    for name, buffer in reference.named_buffers():
        torch.testing.assert_close(fused_buffers[name], buffer, atol=1e-5, rtol=1e-5)


# --- every way of writing a shuffle ---------------------------------------------------------------

def idiom_g_n(x, groups):
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


def idiom_n_g(x, groups):
    # the inverse order: (n, g) instead of (g, n)
    batch, channels, height, width = x.size()
    x = x.reshape(batch, channels // groups, groups, height, width).permute(0, 2, 1, 3, 4)
    return x.reshape(batch, channels, height, width)


def idiom_flatten(x, groups):
    batch, channels, height, width = x.shape
    return x.reshape(batch, groups, -1, height, width).transpose(2, 1).flatten(1, 2)


SHUFFLES = {
    "torch.channel_shuffle": lambda g: (lambda x: torch.channel_shuffle(x, g)),
    "F.channel_shuffle": lambda g: (lambda x: F.channel_shuffle(x, g)),
    "nn.ChannelShuffle": nn.ChannelShuffle,
    "view-transpose-contiguous-view (g, n)": lambda g: (lambda x: idiom_g_n(x, g)),
    "reshape-permute-reshape (n, g)": lambda g: (lambda x: idiom_n_g(x, g)),
    "reshape-transpose-flatten": lambda g: (lambda x: idiom_flatten(x, g)),
}


class Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class ConvShuffleConv(nn.Module):
    """conv(g) -> [BN] -> [ReLU] -> shuffle -> conv(g) -> BN -> ReLU -> shuffle (standalone at the end)."""

    def __init__(self, make_shuffle, bn, relu, groups=3):
        super().__init__()
        self.conv1 = nn.Conv2d(12, 24, 1, groups=groups, bias=not bn)
        self.bn1 = nn.BatchNorm2d(24) if bn else nn.Identity()
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.shuffle = make_shuffle(groups)
        self.conv2 = nn.Conv2d(24, 24, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.tail_shuffle = make_shuffle(4)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x):
        y = self.shuffle(self.relu(self.bn1(self.conv1(x))))
        y = F.relu(self.bn2(self.conv2(y)))
        return self.tail_shuffle(self.pool(y))


def wrap(shuffle):
    return lambda g: Wrap(shuffle(g)) if not isinstance(shuffle(g), nn.Module) else shuffle(g)


@pytest.mark.parametrize("form", SHUFFLES)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("bn,relu", [(True, True), (False, True), (False, False)])
def test_every_shuffle_form_is_fused(form, mode, bn, relu):
    torch.manual_seed(0)
    model = randomize_batch_norms(ConvShuffleConv(wrap(SHUFFLES[form]), bn, relu))
    getattr(model, mode)()
    fused = so.fuse(copy.deepcopy(model), torch.randn(4, 12, 6, 6))
    assert_no_stock_shuffle(fused)
    counts = fused.fuse_report.counts
    assert fused.fuse_report.shuffles_found == 2
    assert counts["shuffle left standalone (so.channel_shuffle)"] == 1  # after the pool
    middle_fused_into_conv1 = mode == "eval" or not bn  # a train-mode BatchNorm between blocks it
    assert counts["shuffle fused into the preceding 1x1 conv"] == int(middle_fused_into_conv1)
    assert counts["shuffle fused into the following 1x1 conv"] == int(not middle_fused_into_conv1)
    # conv2 is next to no shuffle once conv1 took it, so only bn1 is folded
    assert counts["BatchNorm folded into a fused 1x1 conv"] == int(mode == "eval" and bn)
    # another batch size than the example's
    assert_same_function(model, fused, torch.randn(3, 12, 6, 6), train=mode == "train")


def test_fused_module_keeps_channels_last_and_unfused_ops():
    model = randomize_batch_norms(ConvShuffleConv(wrap(SHUFFLES["torch.channel_shuffle"]), True, True)).eval()
    x = torch.randn(2, 12, 6, 6).to(memory_format=torch.channels_last)
    fused = so.fuse(copy.deepcopy(model), x)
    assert_same_function(model, fused, x, train=False)


# --- ShuffleNet v1 the way published code writes it -----------------------------------------------

# Deep models in train mode run in float64: BatchNorm over a few values per channel (late
# stages of a small input) amplifies float32 rounding in the gradients far beyond what
# the rewrite changes; float64 shows the rewrite itself is exact.
DEEP_MODEL_DTYPE = {"eval": torch.float32, "train": torch.float64}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("shuffle_after_depthwise", [True, False])
def test_published_style_shufflenet_v1(mode, shuffle_after_depthwise):
    torch.manual_seed(0)
    model = randomize_batch_norms(shufflenet_v1_unfused(3, 0.25, 10, shuffle_after_depthwise=shuffle_after_depthwise))
    dtype = DEEP_MODEL_DTYPE[mode]
    getattr(model.to(dtype), mode)()
    fused = so.fuse(copy.deepcopy(model), torch.randn(2, 3, 32, 32, dtype=dtype))
    assert_no_stock_shuffle(fused)
    report = fused.fuse_report
    assert report.shuffles_found == 16
    if shuffle_after_depthwise:  # the shuffle feeds the second 1x1 GConv: fused in both modes
        assert report.counts["shuffle fused into the following 1x1 conv"] == 16
    elif mode == "eval":  # conv -> BN -> ReLU -> shuffle: BN folded, all fused
        assert report.counts["shuffle fused into the preceding 1x1 conv"] == 16
    else:  # a train-mode BatchNorm sits between the conv and the shuffle: not exact to fuse
        assert report.counts["shuffle left standalone (so.channel_shuffle)"] == 16
    # the stem's max pool, the average-pooled shortcut of the 3 stride-2 units, the residual
    # add + ReLU of the 13 others (into the epilogue of the 1x1 conv before it): rewritten in eval only
    eval_mode = mode == "eval"
    assert report.counts[MAX_POOL] == int(eval_mode)
    assert report.counts[AVG_POOL] == 3 * eval_mode
    assert report.counts[RESIDUAL_ADD_RELU] == 13 * eval_mode
    assert report.counts[ADD_RELU] == 0
    assert report.counts[STEM] == int(eval_mode)  # conv, its BatchNorm folded, ReLU and max pool
    # On CPU every fused op is a direct call of the registered op, without the public op's
    # Python layer, and the graph reads no attribute it does not use.
    public_ops = {so.channel_shuffle, so.pointwise_group_conv, so.depthwise_conv3x3, so.max_pool3x3, so.avg_pool3x3,
                  so.stem_conv3x3_maxpool}
    assert not public_ops & set(call_targets(fused))
    if eval_mode:  # all 32 1x1 convs, their BatchNorms folded
        assert call_targets(fused).count(torch.ops.shufflenet_ops.pointwise_group_conv.default) == 32
    assert all(n.users for n in fused.graph.nodes if n.op == "get_attr")
    assert_same_function(model, fused, torch.randn(3, 3, 32, 32, dtype=dtype), train=mode == "train")


# --- models built on the library, and computations on parameters ------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_library_model_zoo(mode):
    torch.manual_seed(0)
    model = getattr(randomize_batch_norms(so.models.shufflenet_v1(3, 0.25, 10)).double(), mode)()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # its shuffles are fused already: no "found no channel shuffle"
        fused = so.fuse(copy.deepcopy(model), torch.randn(2, 3, 32, 32, dtype=torch.float64))
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    # In eval the model folds each BatchNorm at every call: fused, each folding is done once.
    assert fused.fuse_report.counts[PARAMETER_COMPUTATION] == 2 * batch_norms * (mode == "eval")
    if mode == "eval":  # the 13 stride-1 units add their input in the last conv's epilogue already
        with_residual = [n for n in fused.graph.nodes if n.target is torch.ops.shufflenet_ops.pointwise_group_conv.default
                         and len(n.args) > 7 and n.args[7] is not None]
        assert len(with_residual) == 13
    if mode == "eval":  # what is left is the network itself
        ops = {n.target.__name__.split(".")[0] for n in fused.graph.nodes
               if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
        assert ops <= {"conv2d", "relu", "cat", "mean", "linear", "pointwise_group_conv", "depthwise_conv3x3",
                       "pool3x3", "stem_conv3x3_maxpool"}, ops
    assert_same_function(model, fused, torch.randn(3, 3, 32, 32, dtype=torch.float64), train=mode == "train")


class Residuals(nn.Module):
    """relu(conv + x) forms: fused into the conv's epilogue, or left to add_relu."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(12, 12, 1, groups=3) for _ in range(4))
        self.bn = nn.BatchNorm2d(12)

    def forward(self, x):
        a = F.relu(x + self.bn(self.convs[0](x)))  # the conv second: fused
        b = F.relu(self.convs[1](a) + a)  # fused
        c = self.convs[2](b)
        d = F.relu(c + b) * c  # the conv's output has another user: add_relu
        e = F.relu(F.relu(self.convs[3](d)) + d)  # the conv has its ReLU already: add_relu
        return e


@pytest.mark.parametrize("channels_last", [False, True])
def test_residual_add_relu_into_the_conv_epilogue(channels_last):
    model = randomize_batch_norms(Residuals()).eval()
    x = torch.randn(2, 12, 5, 6)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(copy.deepcopy(model), x)
    assert fused.fuse_report.counts[RESIDUAL_ADD_RELU] == 2
    assert fused.fuse_report.counts[ADD_RELU] == 2
    # pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual)
    residual_convs = [n for n in fused.graph.nodes
                      if n.target is torch.ops.shufflenet_ops.pointwise_group_conv.default and n.args[7] is not None]
    assert len(residual_convs) == 2 and all(n.args[6] for n in residual_convs)
    x = torch.randn(3, 12, 5, 6)  # another batch size than the example's
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, actual = model(x_ref), fused(x_fused)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    torch.testing.assert_close(x_fused.grad, x_ref.grad)


class ParameterComputations(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(6, 4))
        self.scale = nn.Parameter(torch.rand(6) + 0.5)
        self.register_buffer("shift", torch.randn(6))

    def forward(self, x):
        viewed = F.linear(x, self.weight.view(6, 4))  # a view: stays one, the parameter shared
        computed = F.linear(x, self.weight * self.scale.view(6, 1), self.shift.exp())
        return viewed + computed + torch.rand_like(self.shift) * 0  # rand_like: never folded


def test_parameter_computations_are_done_once_and_views_stay_shared():
    model = ParameterComputations().eval()
    x = torch.randn(3, 4)
    with pytest.warns(UserWarning, match="found no channel shuffle .*; fused only the other patterns"):
        fused = so.fuse(model, x)
    assert fused.fuse_report.counts[PARAMETER_COMPUTATION] == 2  # the scaled weight and exp(shift)
    targets = {n.target for n in fused.graph.nodes if n.op == "call_function"}
    assert aten.exp.default not in targets and aten.mul.Tensor in targets  # mul by 0 of rand_like stays
    assert aten.rand_like.default in targets
    torch.testing.assert_close(fused(x), model(x))
    # The viewed parameter is still the model's: changing it changes the fused result.
    before = fused(x)
    with torch.no_grad():
        model.weight.add_(1.0)
    torch.testing.assert_close(fused(x) - before, F.linear(x, torch.ones(6, 4)))


# --- torchvision's shufflenet_v2_x1_0 ---------------------------------------------------------------

def _torchvision_version_for_installed_torch():
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return f"0.{minor + 15}.*" if major == 2 else None


def _find_wheel(directory):
    wheels = sorted(glob.glob(os.path.join(directory, "torchvision-*.whl")))
    return wheels[-1] if wheels else None


def _torchvision_wheel(cache_dir):
    """A torchvision wheel: from $TORCHVISION_WHEEL_DIR (CI downloads it there), else from
    pytest's cache, else downloaded into the cache with pip (no install, no dependencies)."""
    directory = os.environ.get("TORCHVISION_WHEEL_DIR")
    if directory and _find_wheel(directory):
        return _find_wheel(directory), None
    if _find_wheel(cache_dir):
        return _find_wheel(cache_dir), None
    version = _torchvision_version_for_installed_torch()
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"torchvision=={version}", "--dest", str(cache_dir), "--quiet"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"`{' '.join(command)}` failed: {error}"
    if result.returncode != 0 or not _find_wheel(cache_dir):
        return None, f"`{' '.join(command)}` failed: {result.stderr.strip()[-500:]}"
    return _find_wheel(cache_dir), None


def _load_shufflenetv2_from_wheel(wheel):
    """Executes torchvision/models/shufflenetv2.py from the wheel with the few torchvision
    utilities it imports stubbed (weights metadata and logging, unused for random weights)."""
    source = zipfile.ZipFile(wheel).read("torchvision/models/shufflenetv2.py").decode()
    root = "_torchvision_from_wheel"

    class WeightsEnum(enum.Enum):
        @classmethod
        def verify(cls, weights):
            if weights is not None:
                raise ValueError("pretrained weights are not available in this test")
            return weights

    class Weights:
        def __init__(self, url, transforms, meta):
            self.url, self.transforms, self.meta = url, transforms, meta

    stubs = {
        root: {}, f"{root}.models": {}, f"{root}.transforms": {},
        f"{root}.transforms._presets": {"ImageClassification": type("ImageClassification", (), {})},
        f"{root}.utils": {"_log_api_usage_once": lambda obj: None},
        f"{root}.models._api": {"register_model": lambda *a, **k: (lambda fn: fn), "Weights": Weights,
                                "WeightsEnum": WeightsEnum},
        f"{root}.models._meta": {"_IMAGENET_CATEGORIES": []},
        f"{root}.models._utils": {"_ovewrite_named_param": lambda kwargs, name, value: kwargs.update({name: value}),
                                  "handle_legacy_interface": lambda **k: (lambda fn: fn)},
    }
    for name, attributes in stubs.items():
        module = types.ModuleType(name)
        module.__path__ = []
        module.__dict__.update(attributes)
        sys.modules[name] = module
    module = types.ModuleType(f"{root}.models.shufflenetv2")
    module.__package__ = f"{root}.models"
    sys.modules[module.__name__] = module
    try:
        exec(compile(source, f"{wheel}!torchvision/models/shufflenetv2.py", "exec"), module.__dict__)
    finally:
        for name in [*stubs, module.__name__]:
            sys.modules.pop(name, None)
    return module


@pytest.fixture(scope="module")
def torchvision_shufflenetv2(request, tmp_path_factory):
    try:
        from torchvision.models import shufflenetv2  # a working torchvision install

        return shufflenetv2
    except Exception:  # absent, or a build that does not match this torch
        pass
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    directory = cache.mkdir("torchvision-wheel") if cache else tmp_path_factory.mktemp("torchvision-wheel")
    wheel, error = _torchvision_wheel(directory)
    if wheel is None:
        pytest.skip(f"torchvision's shufflenetv2.py cannot be obtained: torchvision does not import and {error}")
    return _load_shufflenetv2_from_wheel(wheel)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torchvision_shufflenet_v2_x1_0(torchvision_shufflenetv2, mode):
    torch.manual_seed(0)
    model = randomize_batch_norms(torchvision_shufflenetv2.shufflenet_v2_x1_0(num_classes=10))
    dtype = DEEP_MODEL_DTYPE[mode]
    getattr(model.to(dtype), mode)()
    fused = so.fuse(copy.deepcopy(model), torch.randn(2, 3, 32, 32, dtype=dtype))
    assert_no_stock_shuffle(fused)
    report = fused.fuse_report
    assert report.shuffles_found == 16
    # Each shuffle follows a concat. The last one feeds conv5 alone (fused, with conv5's BN in eval);
    # the others feed a chunk or two branches and stay standalone.
    assert report.counts["shuffle fused into the following 1x1 conv"] == 1
    assert report.counts["shuffle left standalone (so.channel_shuffle)"] == 15
    assert report.counts["BatchNorm folded into a fused 1x1 conv"] == (1 if mode == "eval" else 0)
    assert_same_function(model, fused, torch.randn(3, 3, 32, 32, dtype=dtype), train=mode == "train")


# --- the fused module as a module ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fused_module_reads_its_current_tensors(mode):
    # Its forward reads each weight through a property of its own class: what to(), state dicts,
    # reassignment and deletion do to the module's tensors must still be what the forward sees.
    torch.manual_seed(0)
    model = getattr(randomize_batch_norms(so.models.shufflenet_v1(3, 0.25, 10)), mode)()
    x = torch.randn(2, 3, 32, 32)
    fused, other = (so.fuse(copy.deepcopy(model), x) for _ in range(2))
    fused.double()
    assert_same_function(model.double(), fused, x.double(), train=mode == "train")
    state = {name: torch.randn_like(t) if t.is_floating_point() else t for name, t in fused.state_dict().items()}
    fused.load_state_dict(state)
    expected = fused(x.double())
    other.double().load_state_dict(state)
    torch.testing.assert_close(other(x.double()), expected)
    if mode == "train":
        return
    # The folded weights are the fused module's own buffers.
    name = next(n for n, t in fused.named_buffers() if "." not in n and t.is_floating_point())
    setattr(fused, name, torch.zeros_like(getattr(fused, name)))
    assert not torch.equal(fused(x.double()), expected)
    delattr(fused, name)
    assert not hasattr(fused, name) and hasattr(other, name)


# --- what it tells the user -------------------------------------------------------------------------

class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow: torch.export cannot capture it
            return torch.channel_shuffle(x, 2)
        return x


@pytest.mark.parametrize("call", ["two-tensors", "keyword", "list"])
def test_calls_of_another_structure_are_refused(call):
    # A call of plain tensors skips the pytree check of the structure; any other call must still
    # get it, with an error naming what the model takes.
    model = ConvShuffleConv(wrap(SHUFFLES["torch.channel_shuffle"]), True, True).eval()
    x = torch.randn(2, 12, 4, 4)
    fused = so.fuse(model, x)
    assert_same_function(model, fused, x, train=False)
    calls = {"two-tensors": lambda: fused(x, x), "keyword": lambda: fused(x=x), "list": lambda: fused([x])}
    with pytest.raises(ValueError, match=r"expected the inputs structured as the example_inputs were, positional "
                                         r"\('x',\) and no keywords"):
        calls[call]()


def test_capture_failure_raises_a_clear_error():
    with pytest.raises(FuseError, match="torch.export could not capture DataDependent"):
        so.fuse(DataDependent(), torch.randn(1, 4, 2, 2))


def test_bad_model_argument():
    with pytest.raises(TypeError, match="model"):
        so.fuse(lambda x: x, torch.randn(1, 4, 2, 2))


def test_warns_when_nothing_to_fuse_and_reports_verbosely(capsys):
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()  # no shuffle, no 1x1 conv
    with pytest.warns(UserWarning, match="found no channel shuffle .*; nothing was fused"):
        fused = so.fuse(model, torch.randn(2, 4, 2, 2), verbose=True)
    assert "nothing to fuse" in capsys.readouterr().out
    assert_same_function(model, fused, torch.randn(2, 4, 2, 2), train=False)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_eval_fuses_batch_norm_and_relu_of_a_1x1_conv_without_shuffle(groups, channels_last):
    model = randomize_batch_norms(nn.Sequential(
        nn.Conv2d(8, 16, 1, groups=groups, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 1, groups=groups), nn.BatchNorm2d(8),
    )).eval()
    x = torch.randn(2, 8, 5, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(copy.deepcopy(model), x)
    assert fused.fuse_report.counts["1x1 conv with no shuffle, its BatchNorm/ReLU fused (pointwise_group_conv)"] == 2
    targets = [n.target for n in fused.graph.nodes if n.op == "call_function"]
    assert not any("batch_norm" in str(t) or "conv" in str(t) and "pointwise" not in str(t) for t in targets)
    assert_same_function(model, fused, x, train=False)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_depthwise_and_other_convs(mode):
    model = randomize_batch_norms(nn.Sequential(
        nn.Conv2d(3, 12, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),  # stem-like conv
        nn.Conv2d(12, 12, 3, stride=1, padding=1, groups=12, bias=False), nn.BatchNorm2d(12),  # depthwise
        nn.Conv2d(12, 12, 3, stride=2, padding=1, groups=12), nn.ReLU(),  # depthwise, stride 2
        nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12),  # dilated: left alone
    ))
    getattr(model, mode)()
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(copy.deepcopy(model), torch.randn(2, 3, 17, 15))
    counts = fused.fuse_report.counts
    assert counts["3x3 depthwise conv, with its BatchNorm/ReLU (depthwise_conv3x3)"] == 2 * (mode == "eval")
    assert counts["BatchNorm folded into another conv"] == int(mode == "eval")
    assert_same_function(model, fused, torch.randn(3, 3, 17, 15), train=mode == "train")


class PoolsAndResiduals(nn.Module):
    """Every 3x3 pooling and add + ReLU form so.fuse rewrites in eval, next to forms it must leave."""

    def __init__(self):
        super().__init__()
        self.max_s2 = nn.MaxPool2d(3, 2, 1)
        self.max_s1 = nn.MaxPool2d((3, 3), (1, 1), (1, 1))
        self.avg_s2 = nn.AvgPool2d(3, 2, 1)
        self.max_ceil = nn.MaxPool2d(3, 2, 1, ceil_mode=True)
        self.avg_padding_not_counted = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.max_s1(x)  # rewritten
        b = F.avg_pool2d(x, (3, 3), 1, 1)  # rewritten
        r1 = F.relu(a + b)  # rewritten
        r2 = self.relu(x + r1)  # rewritten (relu_)
        r3 = torch.relu(torch.add(r2, a, alpha=2))  # alpha 2: left
        s = r1 + x
        r4 = F.relu(s) * s  # the sum has another user: left
        r5 = F.relu(r3 + x.mean(1, keepdim=True))  # broadcast: left
        values, indices = F.max_pool2d(r5, 3, 2, 1, return_indices=True)  # indices used: left
        unused, _ = F.max_pool2d(r4, kernel_size=3, stride=2, padding=1, return_indices=True)  # rewritten
        return (
            values, indices, unused,
            self.max_s2(r4), self.avg_s2(r4),  # rewritten
            self.max_ceil(r4), self.avg_padding_not_counted(r4),  # left
            F.max_pool2d(r4, 3), F.max_pool2d(r4, 2, 2), F.max_pool2d(r4, 3, 2, 1, dilation=2),  # left
            F.avg_pool2d(r4, 3, 2, 1, divisor_override=9), F.avg_pool2d(r4, 3, 2, 0),  # left
        )


def count_calls(gm, targets):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_pools_and_add_relu(mode):
    model = getattr(PoolsAndResiduals(), mode)()
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(model, torch.randn(2, 5, 9, 11))
    counts, rewritten = fused.fuse_report.counts, mode == "eval"
    assert counts[MAX_POOL] == 3 * rewritten
    assert counts[AVG_POOL] == 2 * rewritten
    assert counts[ADD_RELU] == 2 * rewritten
    aten_max_pools = count_calls(fused, {aten.max_pool2d.default, aten.max_pool2d_with_indices.default})
    assert aten_max_pools == (5 if rewritten else 8)
    assert count_calls(fused, {aten.avg_pool2d.default}) == (3 if rewritten else 5)
    assert count_calls(fused, {aten.add.Tensor}) == (3 if rewritten else 5)

    x = torch.randn(3, 5, 9, 11)  # another batch size than the example's
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, actual = model(x_ref), fused(x_fused)
    for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(got, want, msg=lambda m: f"output {i}: {m}")
    # The rewritten ops keep autograd, in eval too.
    grads = [torch.randn_like(t) for t in expected if t.is_floating_point()]
    torch.autograd.backward([t for t in expected if t.is_floating_point()], grads)
    torch.autograd.backward([t for t in actual if t.is_floating_point()], grads)
    torch.testing.assert_close(x_fused.grad, x_ref.grad)


class EveryRewrite(nn.Module):
    """One of each pattern so.fuse rewrites to a fused op."""

    def __init__(self):
        super().__init__()
        self.pointwise = nn.Sequential(nn.Conv2d(12, 12, 1, groups=3), nn.BatchNorm2d(12), nn.ReLU())
        self.shuffle = nn.ChannelShuffle(3)
        self.depthwise = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12))
        self.expand = nn.Conv2d(12, 12, 1, groups=3)
        self.pools = nn.Sequential(nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(3, 1, 1))
        self.classifier = nn.Linear(12, 5)
        self.stem = nn.Sequential(nn.Conv2d(12, 6, 3, 2, 1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(3, 2, 1))

    def forward(self, x):
        y = self.depthwise(self.shuffle(self.pointwise(x)))
        return self.classifier(self.pools(F.relu(self.expand(y) + x)).mean((2, 3))), self.stem(x)


def test_float16_cpu_models_fuse_and_convert():
    """float16 on CPU, which the ops compute with stock ATen operators inside their kernels:
    a float16 model is fused like a float32 one, and a model fused in float32 and then
    converted with .to(torch.float16) runs, both equal to the stock float16 model."""
    torch.manual_seed(0)
    model = randomize_batch_norms(EveryRewrite()).eval()
    x = torch.randn(2, 12, 8, 8)
    # pattern -> occurrences (the stem's max pool is rewritten first, then fused into the stem)
    rewritten_to_kernels = {MAX_POOL: 2, AVG_POOL: 1, RESIDUAL_ADD_RELU: 1, SMALL_BATCH_LINEAR: 1, STEM: 1,
                            "3x3 depthwise conv, with its BatchNorm/ReLU (depthwise_conv3x3)": 1,
                            "shuffle fused into the preceding 1x1 conv": 1}
    fused32 = so.fuse(copy.deepcopy(model), x)
    assert {pattern: fused32.fuse_report.counts[pattern] for pattern in rewritten_to_kernels} == rewritten_to_kernels
    torch.testing.assert_close(fused32(x), model(x), atol=1e-4, rtol=1e-4)
    model16, x16 = copy.deepcopy(model).half(), x.half()
    fused16 = so.fuse(copy.deepcopy(model16), x16)
    assert {pattern: fused16.fuse_report.counts[pattern] for pattern in rewritten_to_kernels} == rewritten_to_kernels
    converted = copy.deepcopy(fused32).to(torch.float16)
    for result in (fused16(x16), converted(x16)):
        assert all(t.dtype == torch.float16 for t in torch.utils._pytree.tree_leaves(result))
        # float16 rounds the folded BatchNorms differently from the model's own.
        torch.testing.assert_close(result, model16(x16), atol=1e-3, rtol=1e-2)


class Classifiers(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(24, 10)
        self.head_without_bias = nn.Linear(24, 7, bias=False)
        self.per_token = nn.Linear(24, 6)

    def forward(self, x):
        tokens = x.view(x.shape[0], 2, 24)
        return self.head(x.view(-1, 48)[:, :24]), self.head_without_bias(x.view(-1, 48)[:, 24:]), self.per_token(tokens)


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.float32, 1e-5, 1e-5), (torch.float64, 1e-12, 1e-12)])
def test_linear_layers_on_2d_inputs_run_as_the_fused_conv_up_to_small_batch(dtype, atol, rtol):
    model = Classifiers().to(dtype).eval()
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(copy.deepcopy(model), torch.randn(3, 48, dtype=dtype))
    assert fused.fuse_report.counts[SMALL_BATCH_LINEAR] == 2  # not the linear on 3-D tokens
    assert call_targets(fused).count(aten.linear.default) == 1
    # Both sides of SMALL_BATCH, outputs and input gradients against the stock model.
    for batch in (1, SMALL_BATCH, SMALL_BATCH + 1, 9):
        x = torch.randn(batch, 48, dtype=dtype)
        x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, actual = model(x_ref), fused(x_fused)
        grads = [torch.randn_like(t) for t in expected]
        torch.autograd.backward(expected, grads)
        torch.autograd.backward(actual, grads)
        for got, want in zip(actual, expected, strict=True):
            torch.testing.assert_close(got, want, atol=atol, rtol=rtol)
        torch.testing.assert_close(x_fused.grad, x_ref.grad, atol=atol, rtol=rtol)
    # In train mode the linear layers stay stock.
    with pytest.warns(UserWarning, match="nothing was fused"):
        train_fused = so.fuse(copy.deepcopy(model).train(), torch.randn(3, 48, dtype=dtype))
    assert train_fused.fuse_report.counts[SMALL_BATCH_LINEAR] == 0


def test_registered_op_call_only_where_a_registered_op_runs():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 1, 3, 3)
    op, args = so.functional.registered_op_call(so.pointwise_group_conv, (x, torch.randn(8, 2, 1, 1), None, 2),
                                                {"output_shuffle": 2, "relu": 1}, x.device)
    assert op is torch.ops.shufflenet_ops.pointwise_group_conv.default
    assert args[3:] == (2, 1, 2, True, None)  # groups, input_shuffle None -> 1, output_shuffle, relu as bool
    op, args = so.functional.registered_op_call(so.avg_pool3x3, (x,), {}, x.device)
    assert op is torch.ops.shufflenet_ops.pool3x3.default and args[1:] == (2, True)
    # A device with no native kernel runs the Python reference: nothing to call directly.
    meta = torch.device("meta")
    for function, args in [(so.depthwise_conv3x3, (x, w)), (so.max_pool3x3, (x,)),
                           (so.stem_conv3x3_maxpool, (x, torch.randn(2, 4, 3, 3)))]:
        assert so.functional.registered_op_call(function, args, {}, meta) is None
    # An explicit backend is the caller's choice: left to the public function.
    assert so.functional.registered_op_call(so.channel_shuffle, (x, 2), {"backend": "reference"}, x.device) is None


# --- copies of the fused module -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eval", "train"])
def test_deepcopy_keeps_report_behaviour_and_owns_its_parameters(mode):
    torch.manual_seed(1)
    model = getattr(randomize_batch_norms(shufflenet_v1_unfused(3, 0.25, 10), seed=1), mode)()
    x = torch.randn(2, 3, 32, 32)
    fused = so.fuse(copy.deepcopy(model), x)
    copied = copy.deepcopy(fused)
    assert copied.fuse_report == fused.fuse_report and copied.fuse_report is not fused.fuse_report
    assert str(copied.fuse_report) == str(fused.fuse_report)
    assert_same_function(model, copied, torch.randn(3, 3, 32, 32), train=mode == "train")
    with torch.no_grad():
        torch.testing.assert_close(copied(x), fused(x), atol=0, rtol=0)
    # It keeps its mode and its input checks: a switch to the other mode and a call of another
    # structure are refused as before.
    with pytest.raises(RuntimeError, match=f"fused in {mode} mode"):
        copied.train(mode != "train")
    assert copied.train(mode == "train") is copied and copied.training == (mode == "train")
    with pytest.raises(ValueError, match="structured as the example_inputs"):
        copied(x, x)
    # A copy of the copy keeps all of it too.
    again = copy.deepcopy(copied)
    assert again.fuse_report == fused.fuse_report
    # The copy's tensors are its own: editing them leaves the original alone.
    with torch.no_grad():
        before = fused(x).clone()
        assert all(a is not b for a, b in zip(copied.parameters(), fused.parameters()))
        for p in copied.parameters():
            p.mul_(1.5)
        for b in copied.buffers():
            if b.is_floating_point():
                b.add_(0.5)
        torch.testing.assert_close(fused(x), before, atol=0, rtol=0)
        assert not torch.allclose(copied(x), before)
    expected_after_edit = copy.deepcopy(fused)
    expected_after_edit.load_state_dict(copied.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(copied(x), expected_after_edit(x))


# --- every rewrite on unusual but valid parameters -------------------------------------------------------

class UnusualParameters(nn.Module):
    """Parameter shapes and BatchNorm variants stock PyTorch accepts, next to every rewrite."""

    def __init__(self, linear_bias_shape):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=True), nn.BatchNorm2d(12, affine=False), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.compress = nn.Conv2d(12, 12, 1, groups=3, bias=True)
        self.compress_bn = nn.BatchNorm2d(12, affine=False)
        self.depthwise = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=True)
        self.depthwise_bn = nn.BatchNorm2d(12, affine=False)
        self.expand = nn.Conv2d(12, 12, 1, groups=3, bias=True)
        self.expand_bn = nn.BatchNorm2d(12, track_running_stats=False)  # batch statistics, also in eval
        self.weight = nn.Parameter(torch.randn(7, 12) / 4)
        self.bias = nn.Parameter(torch.randn(linear_bias_shape)) if linear_bias_shape is not None else None

    def forward(self, x):
        x = self.stem(x)
        y = torch.channel_shuffle(F.relu(self.compress_bn(self.compress(x))), 3)
        y = self.expand_bn(self.expand(self.depthwise_bn(self.depthwise(y))))
        features = F.relu(x + y).mean((2, 3))
        bias = self.bias if self.bias is not None else torch.tensor(0.5)  # a constant 0-dim bias
        return F.linear(features, self.weight, bias)


def randomize_running_statistics(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


@pytest.mark.parametrize("linear_bias_shape", [(), (1,), (1, 7), (7,), None])
def test_rewrites_on_unusual_parameters_match_stock(linear_bias_shape):
    torch.manual_seed(2)
    model = randomize_running_statistics(UnusualParameters(linear_bias_shape), seed=2).eval()
    fused = so.fuse(copy.deepcopy(model), torch.randn(3, 3, 32, 32))
    counts = fused.fuse_report.counts
    assert counts[STEM] == 1  # its BatchNorm without affine parameters folded
    assert counts["shuffle fused into the preceding 1x1 conv"] == 1
    assert counts["BatchNorm folded into a fused 1x1 conv"] == 1
    assert counts["3x3 depthwise conv, with its BatchNorm/ReLU (depthwise_conv3x3)"] == 1
    # The BatchNorm without running statistics normalizes with the batch: it stays stock.
    assert call_targets(fused).count(aten.batch_norm.default) == 1
    # Only a bias of one value per output feature goes to the fused conv.
    assert counts[SMALL_BATCH_LINEAR] == int(linear_bias_shape == (7,))
    for batch in (1, SMALL_BATCH, SMALL_BATCH + 1):  # both sides of SMALL_BATCH
        x = torch.randn(batch, 3, 32, 32)
        expected = model(x)
        torch.testing.assert_close(fused(x), expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


# --- look-alikes: left alone, and the fused module still runs wherever the stock one does ------------

def transposed_batch_shuffle(y, groups):
    """The shuffle idiom with the split's dims 0 and 1 swapped: it mixes samples, not channels."""
    n, c, h, w = y.shape
    return y.reshape(n, groups, c // groups, h, w).transpose(0, 1).reshape(n, c, h, w)


def permuted_batch_shuffle(y, groups):
    n, c, h, w = y.shape
    return y.reshape(n, groups, c // groups, h, w).permute(1, 0, 2, 3, 4).reshape(n, c, h, w)


def shuffle_of_samples(y, groups):
    """The shuffle idiom over a tensor whose dim 1 is the batch: shuffles samples."""
    return idiom_g_n(y.transpose(0, 1), groups).transpose(0, 1)


class LookAlike(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(12, 12, 1, groups=3, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 1, groups=3)

    def forward(self, x):
        if self.kind == "transpose feeding a conv":  # the input is [C, N, H, W]
            x = x.transpose(0, 1)
        y = F.relu(self.bn1(self.conv1(x)))
        if self.kind == "split dims 0 and 1 transposed":
            y = transposed_batch_shuffle(y, 3)
        elif self.kind == "split dims 0 and 1 permuted":
            y = permuted_batch_shuffle(y, 3)
        elif self.kind == "shuffle of samples after a transpose":
            y = shuffle_of_samples(y, 3)
        elif self.kind == "transpose following a conv":
            return self.conv2(y).transpose(0, 1)
        y = self.conv2(y)
        return y.transpose(0, 1) if self.kind == "transpose feeding a conv" else y


LOOK_ALIKES = {  # kind -> (example shape, other input shapes the stock model and torch.export's capture take)
    "transpose feeding a conv": ((12, 6, 5, 5), [(12, 6, 5, 5)]),
    "split dims 0 and 1 transposed": ((3, 12, 5, 5), [(3, 12, 5, 5)]),
    "split dims 0 and 1 permuted": ((3, 12, 5, 5), [(3, 12, 5, 5)]),
    "shuffle of samples after a transpose": ((6, 12, 5, 5), [(6, 12, 5, 5), (12, 12, 5, 5)]),
    "transpose following a conv": ((3, 12, 5, 5), [(3, 12, 5, 5), (5, 12, 5, 5)]),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_look_alikes_are_left_unfused_and_run_like_stock(kind, mode):
    torch.manual_seed(3)
    model = getattr(randomize_batch_norms(LookAlike(kind)), mode)()
    example, others = LOOK_ALIKES[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "found no channel shuffle": that is the point
        fused = so.fuse(copy.deepcopy(model), torch.randn(example))
    report = fused.fuse_report
    assert report.shuffles_found == 0, report  # nothing that mixes samples is a channel shuffle
    assert aten.transpose.int in call_targets(fused) or aten.permute.default in call_targets(fused)
    for shape in others:  # each from the state fused in: a train-mode call updates BatchNorm buffers
        assert_same_function(model, copy.deepcopy(fused), torch.randn(shape), train=mode == "train")


class ShuffleThenView(nn.Module):
    """The idiom's result is contiguous whatever its input's layout; the view after it needs that."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(12, 12, 1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 12, 1, groups=3)

    def forward(self, x):
        y = self.conv2(idiom_g_n(F.relu(self.bn(self.conv(x))), 3))
        return y.view(y.shape[0], -1)


@pytest.mark.parametrize("channels_last", [False, True])
def test_rewrites_keep_the_memory_format_later_ops_rely_on(channels_last):
    torch.manual_seed(4)
    model = randomize_batch_norms(ShuffleThenView()).eval()
    x = torch.randn(2, 12, 5, 5)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = so.fuse(copy.deepcopy(model), x)
    # NCHW: fused as usual. channels_last: the fused ops would keep channels_last where the
    # idiom's output is contiguous, so the shuffle is left alone.
    assert fused.fuse_report.shuffles_found == int(not channels_last)
    for batch in (2, 3):
        x_other = torch.randn(batch, 12, 5, 5)
        if channels_last:
            x_other = x_other.to(memory_format=torch.channels_last)
        expected, actual = model(x_other), fused(x_other)
        torch.testing.assert_close(actual, expected)
        assert actual.stride() == expected.stride()


@pytest.mark.parametrize("bias_shape", [(), (1,), (1, 7), (2, 7), (2, 1), (7,)])
def test_small_batch_linear_takes_any_bias_f_linear_takes(bias_shape):
    x, weight, bias = torch.randn(2, 5), torch.randn(7, 5), torch.randn(bias_shape)
    torch.testing.assert_close(small_batch_linear(x, weight, bias), F.linear(x, weight, bias))
