"""so.models.shufflenet_v1 against the paper (Table 1 channel counts, FLOPs)
and against a ShuffleNet v1 written with stock PyTorch modules (outputs,
gradients and BatchNorm statistics, in train and eval mode)."""

import copy
import io

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shufflenet_ops as so
from shufflenet_ops.models import WIDTH_MULTIPLIERS, shufflenet_v1_unfused
from tests.stock_shufflenet import load_zoo_weights, randomize_batch_norms, zoo_named_gradients
from tests.utils import TOLERANCES

GROUPS = (1, 2, 3, 4, 8)
# The paper's specification (Table 1): Stage 2 output channels at 1x, and complexity in MFLOPs (multiply-adds).
TABLE1_STAGE2 = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
# (groups, width) -> MFLOPs, from Table 2 (0.5x, 0.25x) and Table 5 (1.5x, 2x, 0.5x g=4).
OTHER_WIDTH_MFLOPS = {(3, 0.25): 13, (3, 0.5): 38, (3, 1.5): 292, (3, 2.0): 524, (4, 0.5): 38}


def units(model):
    return [u for stage in (model.stage2, model.stage3, model.stage4) for u in stage]


@pytest.mark.parametrize("groups", GROUPS)
def test_table1_architecture_at_1x(groups):
    model = so.models.shufflenet_v1(groups)
    assert model.conv1.out_channels == 24 and model.conv1.stride == (2, 2)
    stage2 = TABLE1_STAGE2[groups]
    in_channels = 24
    for index, (stage, repeats) in enumerate(zip((model.stage2, model.stage3, model.stage4), (4, 8, 4))):
        out_channels = stage2 * 2**index
        assert len(stage) == repeats
        for i, unit in enumerate(stage):
            assert unit.stride == (2 if i == 0 else 1)
            assert unit.depthwise.stride == (unit.stride,) * 2
            assert unit.compress.out_channels == out_channels // 4
            assert unit.compress.groups == (1 if index == 0 and i == 0 else groups)
            assert unit.expand.groups == groups
            # stride 2: the main branch supplies what the concatenated shortcut does not
            assert unit.expand.out_channels + (in_channels if i == 0 else 0) == out_channels
            in_channels = out_channels
    assert model.fc.in_features == stage2 * 4 and model.fc.out_features == 1000


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("width", WIDTH_MULTIPLIERS)
def test_width_rounding_keeps_channels_divisible(groups, width):
    stem, stages = so.models.shufflenet_v1_channels(groups, width)
    assert stem % groups == 0
    for channels, exact in zip(stages, (TABLE1_STAGE2[groups] * 2**i * width for i in range(3))):
        assert channels % (4 * groups) == 0
        assert abs(channels - exact) <= 2 * groups  # the nearest multiple of 4 * groups
    model = so.models.shufflenet_v1(groups, width, num_classes=10).to("meta")
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 10)


def count_flops(model, x, backward=False):
    with FlopCounterMode(display=False) as counter:
        y = model(x)
        if backward:
            y.sum().backward()
    return counter.get_total_flops()


def paper_config_mflops():
    yield from ((g, 1.0, TABLE1_MFLOPS[g]) for g in GROUPS)
    yield from ((g, w, m) for (g, w), m in OTHER_WIDTH_MFLOPS.items())


@pytest.mark.parametrize("groups,width,paper_mflops", list(paper_config_mflops()))
def test_complexity_matches_the_paper(groups, width, paper_mflops):
    model = so.models.shufflenet_v1(groups, width).eval()
    with torch.no_grad():
        macs = count_flops(model, torch.randn(1, 3, 224, 224)) / 2  # the counter counts 2 FLOPs per multiply-add
    assert macs == pytest.approx(paper_mflops * 1e6, rel=0.03)


@pytest.mark.parametrize("groups", GROUPS)
def test_flop_counter_counts_the_fused_model_like_its_stock_twin(groups):
    zoo = so.models.shufflenet_v1(groups, 0.5, num_classes=10)
    stock = shufflenet_v1_unfused(groups, 0.5, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    assert count_flops(zoo, x) == count_flops(stock, x)
    assert count_flops(zoo.eval(), x) == count_flops(stock.eval(), x)


def test_flop_counter_counts_training_like_the_stock_twin():
    # groups=1: PyTorch's convolution_backward formula (2.13) counts a grouped conv's weight
    # gradient as if it were dense, so only ungrouped 1x1 convs compare one to one; the
    # grouped backward is checked op by op in test_flops.py.
    zoo = so.models.shufflenet_v1(1, 0.5, num_classes=10)
    stock = shufflenet_v1_unfused(1, 0.5, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    training_count = count_flops(zoo, x, backward=True)
    assert training_count == count_flops(stock, x, backward=True)
    assert training_count > 2.5 * count_flops(zoo, x)  # the backward was counted


def make_pair(groups, width, seed=0):
    torch.manual_seed(seed)
    zoo = randomize_batch_norms(so.models.shufflenet_v1(groups, width, num_classes=10), seed)
    stock = shufflenet_v1_unfused(groups, width, num_classes=10)
    load_zoo_weights(stock, zoo)
    return zoo, stock


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("groups,width", [(3, 0.25), (8, 0.25), (1, 0.5), (2, 0.25), (4, 0.25)])
def test_matches_stock_model_outputs_and_gradients(groups, width, mode):
    zoo, stock = make_pair(groups, width)
    getattr(zoo, mode)()
    getattr(stock, mode)()
    x = torch.randn(4, 3, 40, 40)
    x_zoo, x_stock = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_zoo, y_stock = zoo(x_zoo), stock(x_stock)
    atol, rtol = TOLERANCES[torch.float32]
    scale = y_stock.abs().max().item()
    torch.testing.assert_close(y_zoo, y_stock, atol=10 * atol * scale, rtol=10 * rtol)

    weight = torch.randn_like(y_stock)
    (y_zoo * weight).sum().backward()
    (y_stock * weight).sum().backward()
    grads = zoo_named_gradients(zoo)
    # Some gradients are zero up to rounding (a BatchNorm bias before conv + BatchNorm in
    # train mode): scale the absolute tolerance by the largest gradient of the model.
    grad_scale = max(p.grad.abs().max().item() for p in stock.parameters())
    for name, param in stock.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=20 * atol * grad_scale, rtol=20 * rtol,
                                   msg=lambda m: f"grad of {name}: {m}")
    grad_scale = x_stock.grad.abs().max().item()
    torch.testing.assert_close(x_zoo.grad, x_stock.grad, atol=20 * atol * grad_scale, rtol=20 * rtol)

    if mode == "train":  # running statistics follow the batch, per channel in the stock order
        reloaded = shufflenet_v1_unfused(groups, width, num_classes=10)
        load_zoo_weights(reloaded, zoo)
        for name, buffer in stock.named_buffers():
            torch.testing.assert_close(dict(reloaded.named_buffers())[name], buffer, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_match_float64_stock_model(dtype):
    zoo, stock = make_pair(3, 0.25)
    zoo, stock = zoo.to(dtype).eval(), stock.double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    y = zoo(x.to(dtype))
    expected = stock(x)
    assert y.dtype == dtype
    atol, rtol = TOLERANCES[dtype]
    # bfloat16 weights and activations round at every one of the ~50 layers
    factor = 1 if dtype == torch.float64 else 8
    torch.testing.assert_close(y.double(), expected, atol=factor * atol * expected.abs().max().item(),
                               rtol=factor * rtol)


def test_channels_last_input():
    zoo, stock = make_pair(3, 0.25)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    for mode in ("train", "eval"):
        getattr(zoo, mode)(), getattr(stock, mode)()
        expected = stock(x)
        torch.testing.assert_close(zoo(x), expected, atol=2e-4 * expected.abs().max().item(), rtol=2e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(groups=5), "groups"), (dict(groups=3, width_mult=0), "width_mult"),
     (dict(groups=3, width_mult="1x"), "width_mult")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        so.models.shufflenet_v1(**kwargs)


def test_eval_folding_cache_follows_parameter_changes():
    torch.manual_seed(0)
    model = randomize_batch_norms(so.models.shufflenet_v1(3, 0.25, num_classes=10)).eval()
    x = torch.randn(2, 3, 32, 32)

    def without_cache():
        with torch.enable_grad():  # the folding is recomputed whenever autograd is on
            return model(x).detach()

    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)  # served from the cache
        model.stage2[1].expand_bn.running_var.mul_(2)  # in place, like a training step
        model.stage3[0].compress.weight.add_(0.1)
        changed = model(x)
    torch.testing.assert_close(changed, without_cache())
    assert not torch.allclose(changed, first)

    state = {k: v.clone() * 1.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(state, assign=True)  # new tensors, same module
    with torch.no_grad():
        reloaded = model(x)
    torch.testing.assert_close(reloaded, without_cache())


def test_a_model_that_ran_inference_still_saves_whole():
    model = so.models.shufflenet_v1(3, 0.25, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)  # fills the folding cache
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    reloaded = torch.load(buffer, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(copied(x), expected)
