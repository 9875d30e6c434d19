"""so.models.shufflenet_v1 against the paper (Table 1 channel counts, FLOPs)
and against a ShuffleNet v1 written with stock PyTorch modules (outputs,
gradients and BatchNorm statistics, in train and eval mode; one state_dict
layout for both); its arguments and input checks."""

import copy
import io

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shufflenet_ops as so
from shufflenet_ops.models import WIDTH_MULTIPLIERS, shufflenet_v1_unfused
from tests.stock_shufflenet import randomize_batch_norms
from tests.utils import TOLERANCES

GROUPS = (1, 2, 3, 4, 8)
# The paper's specification (Table 1): Stage 2 output channels at 1x, and complexity in MFLOPs (multiply-adds).
TABLE1_STAGE2 = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
TABLE1_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
# (groups, width) -> MFLOPs, from Table 2 (0.5x, 0.25x) and Table 5 (1.5x, 2x, 0.5x g=4).
OTHER_WIDTH_MFLOPS = {(3, 0.25): 13, (3, 0.5): 38, (3, 1.5): 292, (3, 2.0): 524, (4, 0.5): 38}


def stages(model):
    """The units of Stages 2, 3 and 4 (4, 8 and 4 units in Table 1)."""
    units = list(model.features)
    assert len(units) == 16
    return units[:4], units[4:12], units[12:]


@pytest.mark.parametrize("groups", GROUPS)
def test_table1_architecture_at_1x(groups):
    model = so.models.shufflenet_v1(groups)
    assert model.conv1[0].out_channels == 24 and model.conv1[0].stride == (2, 2)
    stage2 = TABLE1_STAGE2[groups]
    in_channels = 24
    for index, stage in enumerate(stages(model)):
        out_channels = stage2 * 2**index
        for i, unit in enumerate(stage):
            assert unit.stride == (2 if i == 0 else 1)
            assert unit.dw.stride == (unit.stride,) * 2
            assert unit.conv1.out_channels == out_channels // 4
            assert unit.conv1.groups == (1 if index == 0 and i == 0 else groups)
            assert unit.conv2.groups == groups
            # stride 2: the main branch supplies what the concatenated shortcut does not
            assert unit.conv2.out_channels + (in_channels if i == 0 else 0) == out_channels
            in_channels = out_channels
    assert model.fc.in_features == stage2 * 4 and model.fc.out_features == 1000


@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("width", WIDTH_MULTIPLIERS)
def test_width_rounding_keeps_channels_divisible(groups, width):
    stem, stage_channels = so.models.shufflenet_v1_channels(groups, width)
    assert stem % groups == 0
    for channels, exact in zip(stage_channels, (TABLE1_STAGE2[groups] * 2**i * width for i in range(3))):
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
    stock.load_state_dict(zoo.state_dict())
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
    grads = {name: param.grad for name, param in zoo.named_parameters()}
    # Some gradients are zero up to rounding (a BatchNorm bias before conv + BatchNorm in
    # train mode): scale the absolute tolerance by the largest gradient of the model.
    grad_scale = max(p.grad.abs().max().item() for p in stock.parameters())
    for name, param in stock.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, atol=20 * atol * grad_scale, rtol=20 * rtol,
                                   msg=lambda m: f"grad of {name}: {m}")
    grad_scale = x_stock.grad.abs().max().item()
    torch.testing.assert_close(x_zoo.grad, x_stock.grad, atol=20 * atol * grad_scale, rtol=20 * rtol)

    if mode == "train":  # running statistics follow the batch, per channel in the stock order
        zoo_buffers = dict(zoo.named_buffers())
        for name, buffer in stock.named_buffers():
            torch.testing.assert_close(zoo_buffers[name], buffer, atol=1e-5, rtol=1e-5)


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


FACTORIES = {"shufflenet_v1": so.models.shufflenet_v1, "shufflenet_v1_unfused": shufflenet_v1_unfused}

# (arguments, exception, message after "<factory>: ")
BAD_ARGUMENTS = {
    "groups-5": (dict(groups=5), ValueError, r"expected groups in \{1, 2, 3, 4, 8\}, got 5"),
    "groups-16": (dict(groups=16), ValueError, r"expected groups in \{1, 2, 3, 4, 8\}, got 16"),
    "groups-float": (dict(groups=3.0), TypeError, r"expected groups to be an int, got float"),
    "groups-bool": (dict(groups=True), TypeError, r"expected groups to be an int, got bool"),
    "width-3": (dict(width_mult=3.0), ValueError, r"expected width_mult from 0.25 to 2.0, got 3.0"),
    "width-0.2": (dict(width_mult=0.2), ValueError, r"expected width_mult from 0.25 to 2.0, got 0.2"),
    "width-0": (dict(width_mult=0), ValueError, r"expected width_mult from 0.25 to 2.0, got 0"),
    "width-nan": (dict(width_mult=float("nan")), ValueError, r"expected width_mult from 0.25 to 2.0, got nan"),
    "width-str": (dict(width_mult="1x"), TypeError, r"expected width_mult to be a number, got str"),
    "classes-0": (dict(num_classes=0), ValueError, r"expected num_classes to be a positive integer, got 0"),
    "classes-float": (dict(num_classes=10.0), TypeError, r"expected num_classes to be an int, got float"),
}


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments(case, factory):
    kwargs, error, message = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=f"^{factory}: {message}$"):
        FACTORIES[factory](**{"groups": 3, "width_mult": 0.25, **kwargs})
    if "num_classes" not in kwargs:
        with pytest.raises(error, match=f"^shufflenet_v1_channels: {message}$"):
            so.models.shufflenet_v1_channels(kwargs.get("groups", 3), kwargs.get("width_mult", 0.25))


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("width", [0.25, 0.3, 1.75, 2])  # both ends and widths between the paper's
def test_widths_within_the_range_build(factory, width):
    model = FACTORIES[factory](groups=3, width_mult=width, num_classes=10).to("meta")
    assert model(torch.empty(2, 3, 64, 64, device="meta")).shape == (2, 10)


# --- one state_dict layout for the zoo model and its stock twin --------------------------------

@pytest.mark.parametrize("groups", GROUPS)
@pytest.mark.parametrize("shuffle_after_depthwise", [False, True])
def test_zoo_and_stock_twin_have_one_state_dict_layout(groups, shuffle_after_depthwise):
    zoo = so.models.shufflenet_v1(groups, 0.25, num_classes=10).to("meta")
    twin = shufflenet_v1_unfused(groups, 0.25, 10, shuffle_after_depthwise=shuffle_after_depthwise).to("meta")
    zoo_state, twin_state = zoo.state_dict(), twin.state_dict()
    assert list(zoo_state) == list(twin_state)
    assert {k: t.shape for k, t in zoo_state.items()} == {k: t.shape for k, t in twin_state.items()}
    assert [n for n, _ in zoo.named_parameters()] == [n for n, _ in twin.named_parameters()]


def randomized_stock_model(groups, seed):
    """A stock twin with random parameters and running statistics (BatchNorm weights near 1)."""
    torch.manual_seed(seed)
    return randomize_batch_norms(shufflenet_v1_unfused(groups, 0.25, num_classes=10), seed)


def assert_same_outputs(model, oracle, x, mode):
    """``model`` and ``oracle`` in ``mode`` give the same output on ``x``, and in train mode
    update their running statistics alike."""
    model.train(mode == "train"), oracle.train(mode == "train")
    expected = oracle(x)
    atol, rtol = TOLERANCES[torch.float32]
    scale = expected.abs().max().item()
    torch.testing.assert_close(model(x), expected, atol=10 * atol * scale, rtol=10 * rtol)
    buffers = dict(model.named_buffers())
    for name, buffer in oracle.named_buffers():
        # A variance over a few values per channel (a small last stage) amplifies rounding.
        torch.testing.assert_close(buffers[name], buffer, atol=1e-4, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def through_a_file(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("groups", [3, 8])
def test_stock_twin_checkpoint_loads_into_the_zoo_model(groups, mode):
    twin = randomized_stock_model(groups, seed=groups)
    zoo = so.models.shufflenet_v1(groups, 0.25, num_classes=10)
    zoo.load_state_dict(through_a_file(twin.state_dict()), strict=True)
    assert_same_outputs(zoo, twin, torch.randn(2, 3, 64, 64), mode)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("groups", [2, 4])
def test_zoo_checkpoint_loads_into_the_stock_twin(groups, mode):
    zoo = randomize_batch_norms(so.models.shufflenet_v1(groups, 0.25, num_classes=10), seed=groups)
    twin = shufflenet_v1_unfused(groups, 0.25, num_classes=10)
    twin.load_state_dict(through_a_file(zoo.state_dict()), strict=True)
    assert_same_outputs(zoo, twin, torch.randn(2, 3, 64, 64), mode)


def earlier_zoo_layout(twin_state, groups):
    """The stock twin's state_dict in the layout earlier versions of ShuffleNetV1 saved: the stem
    as conv1 and conv1_bn, the units as stage2-stage4 with compress / depthwise / expand names,
    and each unit's first BatchNorm normalizing the shuffled channels (channel c of it belongs
    to the conv's channel that the shuffle sends to c)."""
    unit_names = {"conv1": "compress", "bn1": "compress_bn", "dw": "depthwise", "bn2": "depthwise_bn",
                  "conv2": "expand", "bn3": "expand_bn"}
    stage_of_unit = [(stage, i) for stage, repeats in zip((2, 3, 4), (4, 8, 4)) for i in range(repeats)]
    state = {}
    for key, value in twin_state.items():
        parts = key.split(".")
        if parts[0] == "conv1":
            key = ("conv1." if parts[1] == "0" else "conv1_bn.") + parts[2]
        elif parts[0] == "features":
            stage, i = stage_of_unit[int(parts[1])]
            if parts[2] == "bn1" and value.dim() == 1:
                value = torch.channel_shuffle(value.view(1, -1, 1), groups).view(-1)
            key = f"stage{stage}.{i}.{unit_names[parts[2]]}.{parts[3]}"
        state[key] = value
    return state


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_checkpoint_of_the_earlier_zoo_layout_loads(mode):
    twin = randomized_stock_model(3, seed=13)
    zoo = so.models.shufflenet_v1(3, 0.25, num_classes=10)
    earlier = through_a_file(earlier_zoo_layout(twin.state_dict(), 3))
    zoo.load_state_dict(earlier, strict=True)
    assert "conv1_bn.weight" in earlier  # the caller's dict is left as it was
    assert_same_outputs(zoo, twin, torch.randn(2, 3, 64, 64), mode)


# --- what a call of the zoo model checks ---------------------------------------------------------

INPUT_ERRORS = {
    "one-channel": (torch.randn(2, 1, 64, 64), ValueError,
                    r"expected an input of 3 channels \[N, 3, H, W\], got \[2, 1, 64, 64\]"),
    "channels-last-shape": (torch.randn(2, 64, 64, 3), ValueError,
                            r"expected an input of 3 channels \[N, 3, H, W\], got \[2, 64, 64, 3\] "
                            r"\(channels last\? x.permute\(0, 3, 1, 2\)\)"),
    "3-d": (torch.randn(3, 64, 64), ValueError,
            r"expected a 4-D input \[N, 3, H, W\], got a 3-D tensor of shape \[3, 64, 64\] "
            r"\(one image\? add the batch dimension: x.unsqueeze\(0\)\)"),
    "5-d": (torch.randn(1, 2, 3, 64, 64), ValueError,
            r"expected a 4-D input \[N, 3, H, W\], got a 5-D tensor of shape \[1, 2, 3, 64, 64\]"),
    "bfloat16": (torch.randn(2, 3, 64, 64, dtype=torch.bfloat16), TypeError,
                 r"the model's parameters are torch.float32 but the input is torch.bfloat16; convert the input "
                 r"\(x.to\(torch.float32\)\) or the model \(model.to\(torch.bfloat16\)\), or call the model "
                 r"under torch.autocast"),
    "uint8": (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), TypeError,
              r"expected a floating-point input \(the model's dtype is torch.float32\), got torch.uint8; "
              r"convert it \(x.to\(torch.float32\)\)"),
    "device": (torch.randn(2, 3, 64, 64, device="meta"), ValueError,
               r"the model is on cpu but the input on meta"),
    "no-rows": (torch.randn(2, 3, 0, 64), ValueError,
                r"expected images at least 1 pixel high and wide, got an input of \[2, 3, 0, 64\]"),
    "not-a-tensor": ([[0.0]], TypeError, r"expected the input to be a torch.Tensor \[N, 3, H, W\], got list"),
}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", INPUT_ERRORS)
def test_input_errors_name_what_the_model_expects(case, mode):
    x, error, message = INPUT_ERRORS[case]
    zoo = getattr(so.models.shufflenet_v1(3, 0.25, num_classes=10), mode)()
    with pytest.raises(error, match=f"^shufflenet_v1: {message}"):
        zoo(x)
    twin = getattr(shufflenet_v1_unfused(3, 0.25, num_classes=10), mode)()
    with pytest.raises(Exception):  # the stock network cannot run it either
        twin(x)


@pytest.mark.parametrize("size", [32, 1])
def test_training_on_one_value_per_channel_is_named(size):
    # Stage 4 is 32 times smaller (rounded up): one image of 32x32 or less leaves one value
    # per channel, and train-mode BatchNorm needs more.
    zoo, twin = make_pair(3, 0.25)
    x = torch.randn(1, 3, size, size)
    assert_same_outputs(zoo, twin, x, "eval")  # inference runs it
    buffers = {name: b.clone() for name, b in zoo.named_buffers()}
    with pytest.raises(ValueError, match=r"^shufflenet_v1: in train mode the BatchNorms normalize with the batch's "
                                         rf"statistics, .* an input of \[1, 3, {size}, {size}\] leaves 1 pixel"):
        zoo.train()(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        twin.train()(x)
    # Checked at the entry: no BatchNorm updated its statistics before the error.
    for name, buffer in zoo.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], atol=0, rtol=0)


@pytest.mark.parametrize("shape", [(1, 3, 33, 32), (2, 3, 32, 32), (1, 3, 64, 1)])
def test_training_on_more_than_one_value_per_channel_runs(shape):
    # float64: train-mode BatchNorm over two values per channel amplifies float32 rounding.
    zoo, twin = make_pair(3, 0.25)
    assert_same_outputs(zoo.double(), twin.double(), torch.randn(shape, dtype=torch.float64), "train")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_other_input_dtype_runs_under_autocast(mode):
    zoo, twin = make_pair(3, 0.25)
    zoo.train(mode == "train"), twin.train(mode == "train")
    x = torch.randn(2, 3, 64, 64, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, expected = zoo(x), twin(x)
    assert out.dtype == expected.dtype == torch.bfloat16
    # Whole networks in bfloat16: a looser bound than one op's.
    torch.testing.assert_close(out.float(), expected.float(), atol=0.1 * expected.abs().max().item(), rtol=0.1)


def stock_twin(zoo):
    """A shufflenet_v1_unfused with ``zoo``'s current weights, dtype and device, in eval mode."""
    stock = shufflenet_v1_unfused(zoo.groups, zoo.width_mult, num_classes=zoo.fc.out_features)
    stock = stock.to(dtype=zoo.fc.weight.dtype, device=zoo.fc.weight.device)
    stock.load_state_dict(zoo.state_dict())
    return stock.eval()


def assert_eval_matches_stock_twin(zoo, x, *, factor=10):
    """``zoo``'s eval output, under no_grad, inference_mode and with autograd on, against its
    stock twin loaded with the weights ``zoo`` holds now."""
    zoo.eval()
    with torch.no_grad():
        expected = stock_twin(zoo)(x)
    atol, rtol = TOLERANCES[expected.dtype]
    scale = expected.abs().max().item()
    for context in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with context():
            actual = zoo(x)
        torch.testing.assert_close(actual.detach(), expected, atol=factor * atol * scale, rtol=factor * rtol,
                                   msg=lambda m: f"under {context.__name__}: {m}")


def random_gradients(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


OPTIMIZERS = {
    "Adam fused": lambda params: torch.optim.Adam(params, lr=0.05, fused=True),
    "Adam foreach": lambda params: torch.optim.Adam(params, lr=0.05, foreach=True),
    "SGD fused": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, fused=True),
    "SGD foreach": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, foreach=True),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("seed", [0, 1])
def test_eval_after_an_optimizer_step_uses_the_new_weights(optimizer, seed):
    # Fused optimizers update parameters in place without bumping their version counters:
    # whatever eval mode derives from the parameters must see the step anyway.
    zoo, _ = make_pair(3, 0.25, seed)
    x = torch.randn(2, 3, 32, 32)
    assert_eval_matches_stock_twin(zoo, x)  # eval calls before the step, in every autograd mode
    random_gradients(zoo, seed)
    before = [p.detach().clone() for p in zoo.parameters()]
    OPTIMIZERS[optimizer](zoo.parameters()).step()
    assert all(not torch.equal(b, p) for b, p in zip(before, zoo.parameters()))
    assert_eval_matches_stock_twin(zoo, x)


@pytest.mark.parametrize("edit", ["data.mul_", "data.copy_", "copy_ under no_grad", "buffers via data"])
def test_eval_after_in_place_edits_uses_the_new_tensors(edit):
    # An edit through .data bumps the version counter of that alias only.
    zoo, _ = make_pair(2, 0.25, seed=3)
    x = torch.randn(2, 3, 32, 32)
    assert_eval_matches_stock_twin(zoo, x)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in zoo.named_parameters():
            if edit == "data.mul_":
                p.data.mul_(1 + torch.rand(p.shape, generator=gen))
            elif edit == "data.copy_":
                p.data.copy_(p + torch.randn(p.shape, generator=gen) * 0.1)
            elif edit == "copy_ under no_grad":
                p.copy_(p + torch.randn(p.shape, generator=gen) * 0.1)
        if edit == "buffers via data":
            for name, b in zoo.named_buffers():
                if b.is_floating_point():
                    b.data.add_(torch.rand(b.shape, generator=gen))  # stays a valid (positive) variance
    assert_eval_matches_stock_twin(zoo, x)


@pytest.mark.parametrize("assign", [False, True])
def test_eval_after_load_state_dict_uses_the_loaded_tensors(assign):
    zoo, _ = make_pair(3, 0.25, seed=4)
    source, _ = make_pair(3, 0.25, seed=5)
    x = torch.randn(2, 3, 32, 32)
    assert_eval_matches_stock_twin(zoo, x)
    zoo.load_state_dict(source.state_dict(), assign=assign)
    assert_eval_matches_stock_twin(zoo, x)
    with torch.no_grad():
        torch.testing.assert_close(zoo(x), source.eval()(x))


def test_eval_after_to_float64_uses_the_converted_tensors():
    zoo, _ = make_pair(4, 0.25, seed=6)
    x = torch.randn(2, 3, 32, 32)
    assert_eval_matches_stock_twin(zoo, x)
    zoo.to(torch.float64)
    assert_eval_matches_stock_twin(zoo, x.double())


def test_model_built_under_inference_mode():
    # Inference tensors have no version counter; the model must still run, in both autograd-off modes.
    with torch.inference_mode():
        zoo, _ = make_pair(3, 0.25, seed=8)
        x = torch.randn(2, 3, 32, 32)
    zoo.eval()
    with torch.no_grad():
        expected = stock_twin(zoo)(x)
    atol, rtol = TOLERANCES[torch.float32]
    for context in (torch.inference_mode, torch.no_grad):
        with context():
            actual = zoo(x)
        torch.testing.assert_close(actual, expected, atol=10 * atol * expected.abs().max().item(), rtol=10 * rtol)
        with torch.inference_mode():  # and after an in-place change
            zoo.features[5].bn3.running_var.mul_(3)
            zoo.features[0].conv1.weight.add_(0.2)
        with torch.no_grad():
            expected = stock_twin(zoo)(x)
        with context():
            actual = zoo(x)
        torch.testing.assert_close(actual, expected, atol=10 * atol * expected.abs().max().item(), rtol=10 * rtol)


def test_standalone_unit_and_units_in_other_containers_fold_their_own():
    # A unit called on its own, or in a container that is not a FoldingSequential, folds its BatchNorms.
    zoo, stock = make_pair(3, 0.25, seed=9)
    zoo.features = torch.nn.Sequential(*zoo.features)
    x = torch.randn(2, 3, 32, 32)
    assert_eval_matches_stock_twin(zoo, x)
    unit, stock_unit = zoo.features[5].eval(), stock.features[5].eval()
    y = torch.randn(2, unit.conv1.in_channels, 4, 4)
    with torch.no_grad():
        expected = stock_unit(y.clone())
        torch.testing.assert_close(unit(y), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


def test_batch_norms_without_affine_parameters_are_folded():
    zoo, stock = make_pair(2, 0.25, seed=11)
    gen = torch.Generator().manual_seed(11)
    for zoo_unit, stock_unit in ((zoo.features[1], stock.features[1]), (zoo.features[12], stock.features[12])):
        channels = zoo_unit.bn3.num_features
        zoo_unit.bn3 = torch.nn.BatchNorm2d(channels, affine=False)
        stock_unit.bn3 = torch.nn.BatchNorm2d(channels, affine=False)
        mean, var = torch.randn(channels, generator=gen) * 0.2, torch.rand(channels, generator=gen) + 0.5
        with torch.no_grad():
            for bn in (zoo_unit.bn3, stock_unit.bn3):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
    zoo.eval(), stock.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = stock(x)
        for context in (torch.no_grad, torch.inference_mode):
            with context():
                actual = zoo(x)
            torch.testing.assert_close(actual, expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


def test_batch_norms_without_running_statistics_normalize_with_the_batch_in_eval():
    # Stock BatchNorm without running statistics uses batch statistics in eval too: nothing to fold.
    zoo, stock = make_pair(3, 0.25, seed=10)
    for model in (zoo, stock):
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.track_running_stats = False
                module.running_mean = module.running_var = module.num_batches_tracked = None
    zoo.eval(), stock.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = stock(x)
        torch.testing.assert_close(zoo(x), expected, atol=1e-4 * expected.abs().max().item(), rtol=1e-4)


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


def test_concurrent_eval_calls_of_one_model():
    # Without autograd the folded weights go into storage kept for the model: calls from several
    # threads at once must each still compute their own input's output.
    import threading

    zoo, _ = make_pair(3, 0.25, seed=12)
    zoo.eval()
    inputs = [torch.randn(2, 3, 32, 32) for _ in range(8)]
    with torch.no_grad():
        twin = stock_twin(zoo)
        expected = [twin(x) for x in inputs]
    results, errors = {}, []

    def run(index):
        try:
            context = torch.inference_mode if index % 2 else torch.no_grad
            with context():
                for _ in range(3):
                    results[index] = zoo(inputs[index]).clone()
        except Exception as error:  # reported below, with the thread's index
            errors.append((index, error))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    atol, rtol = TOLERANCES[torch.float32]
    for index, want in enumerate(expected):
        torch.testing.assert_close(results[index], want, atol=10 * atol * want.abs().max().item(), rtol=10 * rtol)
