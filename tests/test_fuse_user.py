"""The module so.fuse returns, used as a model: any batch size, other spatial sizes where asked
for, torch.save / torch.load, state dicts, train/eval, quiet fusing, and errors that name what
the caller got wrong. Each fused result is checked against the stock model it came from."""

import copy
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import shufflenet_ops as so
from shufflenet_ops.fuse import FuseError
from shufflenet_ops.models import shufflenet_v1_unfused
from tests.stock_shufflenet import randomize_batch_norms
from tests.test_fuse import DataDependent, assert_same_function

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Train mode is compared in float64: batch statistics of a whole network amplify float32 rounding.
DTYPE = {"eval": torch.float32, "train": torch.float64}


def stock_model(mode, seed=0):
    torch.manual_seed(seed)
    model = randomize_batch_norms(shufflenet_v1_unfused(3, 0.25, 10), seed=seed).to(DTYPE[mode])
    return model.train(mode == "train")


def image(batch, size=64, dtype=torch.float32, seed=0, channels=3):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def run_in_fresh_python(code):
    """``code`` in a new interpreter that has not imported shufflenet_ops."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=env)


# --- batch and spatial sizes -------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_batch_of_one_example_fuses_a_model_for_any_batch(mode):
    model = stock_model(mode)
    fused = so.fuse(copy.deepcopy(model), image(1, dtype=DTYPE[mode]))
    for batch in (8, 1, 3):
        assert_same_function(model, fused, image(batch, dtype=DTYPE[mode], seed=batch), train=mode == "train")
        if mode == "train":  # the next step starts from the state this one left (running statistics)
            model.load_state_dict(fused.state_dict())
            fused.zero_grad(set_to_none=True)


def test_a_fixed_batch_is_what_dynamic_batch_false_asks_for():
    model = stock_model("eval")
    fused = so.fuse(copy.deepcopy(model), image(2), dynamic_batch=False)
    assert_same_function(model, fused, image(2, seed=1), train=False)
    with pytest.raises(ValueError, match=r"input x has size 8 in dim 0 .* the model expects 2 .*: fuse the model "
                                         r"without dynamic_batch=False for any batch size"):
        fused(image(8))


class PerSampleScale(nn.Module):
    """Fixes the batch to 2: its scale has one value per sample."""

    def __init__(self):
        super().__init__()
        self.register_buffer("per_sample", torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))

    def forward(self, x):
        return torch.channel_shuffle(x * self.per_sample, 2)


class ChannelsFirst(nn.Module):
    """Takes [C, N, H, W]: its dim 0 is no batch, and is 1 in the example."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return torch.channel_shuffle(self.conv(x.transpose(0, 1)), 2)


@pytest.mark.parametrize("model,example,other", [
    (PerSampleScale(), torch.randn(2, 4, 3, 3), torch.randn(3, 4, 3, 3)),
    (ChannelsFirst(), torch.randn(1, 5, 3, 3), torch.randn(2, 5, 3, 3)),
], ids=["fixed by the model", "dim 0 no batch"])
def test_a_dim_0_the_model_fixes_stays_the_examples(model, example, other):
    fused = so.fuse(model, example)
    torch.testing.assert_close(fused(example), model(example), atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError):  # the stock model refuses the other size too
        model(other)
    with pytest.raises(ValueError, match=rf"input x has size {other.shape[0]} in dim 0 .*the "
                                         rf"model expects {example.shape[0]} .*: the model fixes it"):
        fused(other)


def test_other_spatial_sizes_need_dynamic_spatial_or_an_example_of_that_size():
    model = stock_model("eval")
    fused = so.fuse(copy.deepcopy(model), image(1))
    with pytest.raises(ValueError, match=r"input x has size 96 in dim 2 .* the model expects 64 "
                                         r"\(\[N, 3, 64, 64\]\): fuse the model with dynamic_spatial=True"):
        fused(image(2, size=96))
    dynamic = so.fuse(copy.deepcopy(model), image(1), dynamic_spatial=True)
    for batch, size in ((2, 96), (1, 40), (3, 64)):
        assert_same_function(model, dynamic, image(batch, size=size, seed=size), train=False)
    non_square = torch.randn(2, 3, 48, 80)
    assert_same_function(model, dynamic, non_square, train=False)
    # The graph captured at 64x64 relies on every stride-2 stage leaving more than one pixel;
    # the stock model also runs 32x32 images, for which the error says to fuse at that size.
    with pytest.raises(ValueError, match=r"input sizes \(x \[2, 3, 32, 32\]\) break what the captured graph "
                                         r"relies on: .*x\.shape\[[23]\].*fuse the model again with an example "
                                         r"of these sizes"):
        dynamic(image(2, size=32))
    small = so.fuse(copy.deepcopy(model), image(1, size=32), dynamic_spatial=True)
    assert_same_function(model, small, image(2, size=32, seed=5), train=False)


# --- saving, loading, state dicts ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["eval", "train"])
def test_torch_save_and_load_round_trip(mode, tmp_path):
    model = stock_model(mode)
    fused = so.fuse(copy.deepcopy(model), image(1, dtype=DTYPE[mode]))
    path = tmp_path / "fused.pt"
    torch.save(fused, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded, so.FusedModule) and loaded.fuse_report == fused.fuse_report
    assert loaded.training == fused.training == (mode == "train")
    assert set(loaded.state_dict()) == set(fused.state_dict())
    assert_same_function(model, loaded, image(4, dtype=DTYPE[mode], seed=4), train=mode == "train")
    # It keeps its checks: inputs and the other mode are refused as by the module saved.
    with pytest.raises(ValueError, match="input x has 1 channels, the model expects 3"):
        loaded(image(2, channels=1, dtype=DTYPE[mode]))
    with pytest.raises(RuntimeError, match=f"fused in {mode} mode"):
        loaded.train(mode != "train")
    # And a copy of the loaded module still saves.
    torch.save(copy.deepcopy(loaded), tmp_path / "again.pt")
    again = torch.load(tmp_path / "again.pt", weights_only=False)
    with torch.no_grad():
        x = image(2, dtype=DTYPE[mode], seed=9)
        if mode == "eval":
            torch.testing.assert_close(again(x), loaded(x), atol=0, rtol=0)


def test_so_save_leaves_no_partial_file(tmp_path):
    """torch.save creates its file before it pickles: a module that fails to pickle (here a lambda
    hook) leaves a truncated file. so.save writes the whole file or leaves the path as it was."""
    model = stock_model("eval")
    fused = so.fuse(copy.deepcopy(model), image(1))
    path = tmp_path / "fused.pt"
    so.save(fused, path)
    assert_same_function(model, torch.load(path, weights_only=False), image(3, seed=2), train=False)
    saved = path.read_bytes()
    fused.register_forward_hook(lambda module, args, out: out)
    with pytest.raises(Exception, match="lambda"):
        so.save(fused, path)
    assert path.read_bytes() == saved, "the earlier file is left as it was"
    with pytest.raises(Exception, match="lambda"):
        so.save(fused, tmp_path / "new.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused.pt"], "no partial file left behind"


def test_a_saved_fused_model_loads_in_a_process_that_never_imported_the_library(tmp_path):
    model = stock_model("eval")
    fused = so.fuse(copy.deepcopy(model), image(1))
    x = image(3, seed=3)
    with torch.no_grad():
        torch.save({"model": fused, "x": x, "expected": fused(x)}, tmp_path / "fused.pt")
    # Unpickling the module imports shufflenet_ops, which registers the ops its graph calls.
    result = run_in_fresh_python(
        "import sys, torch\n"
        f"saved = torch.load({str(tmp_path / 'fused.pt')!r}, weights_only=False)\n"
        "with torch.no_grad():\n"
        "    same = torch.equal(saved['model'](saved['x']), saved['expected'])\n"
        "print('same' if same else 'different')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


class NonPersistentScale(nn.Module):
    """A shuffle next to a 1x1 conv, a non-persistent buffer and a plain tensor attribute (which
    torch.export lifts as a constant) the forward reads."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1, groups=2)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1), persistent=False)
        self.offset = torch.tensor(0.25)

    def forward(self, x):
        return torch.channel_shuffle(self.conv(x), 2) * self.scale + self.offset


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_state_dict_round_trips_into_a_freshly_fused_model(mode):
    model = stock_model(mode)
    fused = so.fuse(copy.deepcopy(model), image(1, dtype=DTYPE[mode]))
    other = so.fuse(stock_model(mode, seed=1), image(1, dtype=DTYPE[mode]))
    x = image(2, dtype=DTYPE[mode], seed=2)
    with torch.no_grad():
        assert not torch.allclose(other(x), fused(x))
        other.load_state_dict(fused.state_dict())
        torch.testing.assert_close(other(x), fused(x), atol=0, rtol=0)


def test_attribute_kinds_and_state_dict_keys_survive_save_and_copy(tmp_path):
    model = NonPersistentScale().train()
    x = torch.randn(2, 4, 3, 3)
    fused = so.fuse(model, x)
    torch.save(fused, tmp_path / "fused.pt")
    for module in (fused, copy.deepcopy(fused), torch.load(tmp_path / "fused.pt", weights_only=False)):
        assert set(module.state_dict()) == set(model.state_dict()) == {"conv.weight", "conv.bias"}
        assert set(dict(module.named_buffers())) == {"scale"}
        torch.testing.assert_close(module(x), model(x), atol=1e-6, rtol=1e-6)


def test_a_shallow_copy_shares_the_tensors_and_keeps_the_checks(eval_twins):
    model, fused = eval_twins
    shallow = copy.copy(fused)
    assert isinstance(shallow, so.FusedModule) and shallow.fuse_report == fused.fuse_report
    assert all(a is b for a, b in zip(shallow.parameters(), fused.parameters()))
    assert_same_function(model, shallow, image(2, seed=7), train=False)
    with pytest.raises(ValueError, match="input x has 1 channels, the model expects 3"):
        shallow(image(2, channels=1))


# --- train and eval ---------------------------------------------------------------------------------

def test_an_eval_mode_fuse_is_in_eval_mode_and_refuses_train():
    model = stock_model("eval")
    fused = so.fuse(copy.deepcopy(model), image(1))
    assert fused.training is False and not any(m.training for m in fused.modules())
    assert fused.eval() is fused and fused.train(False) is fused
    assert nn.Sequential(fused).eval()[0] is fused  # a container switching its children
    with pytest.raises(RuntimeError, match=r"fused in eval mode, its BatchNorms folded .* so\.fuse\(model\.train\(\)"):
        fused.train()
    assert fused.training is False
    assert_same_function(model, fused, image(2, seed=1), train=False)


def test_a_train_mode_fuse_is_in_train_mode_and_refuses_eval():
    model = stock_model("train")
    fused = so.fuse(copy.deepcopy(model), image(1, dtype=torch.float64))
    assert fused.training is True and fused.train() is fused
    with pytest.raises(RuntimeError, match=r"fused in train mode .* so\.fuse\(model\.eval\(\)"):
        fused.eval()
    assert fused.training is True
    assert_same_function(model, fused, image(2, dtype=torch.float64, seed=1), train=True)


# --- what fusing prints and raises ----------------------------------------------------------------------

def test_fuse_error_is_exported_and_a_failed_capture_prints_nothing(capfd):
    assert so.FuseError is FuseError and issubclass(so.FuseError, RuntimeError)
    with pytest.raises(so.FuseError, match="torch.export could not capture DataDependent"):
        so.fuse(DataDependent(), torch.randn(1, 4, 2, 2))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


@pytest.mark.parametrize("options", [{}, {"dynamic_spatial": True}, {"dynamic_batch": False}])
def test_a_normal_fuse_warns_and_prints_nothing(options, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = so.fuse(stock_model("eval"), image(1), **options)
    assert [str(w.message) for w in caught] == []
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert fused.fuse_report.shuffles_found == 16


# --- calls with the wrong inputs -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_twins():
    model = stock_model("eval")
    return model, so.fuse(copy.deepcopy(model), image(1))


@pytest.mark.parametrize("wrong,error,message", [
    (lambda: image(2, channels=1), ValueError,
     r"fused UnfusedShuffleNetV1: input x has 1 channels, the model expects 3$"),
    (lambda: image(2, dtype=torch.bfloat16), TypeError,
     r"input x has dtype torch\.bfloat16, the model computes in torch\.float32 .* convert the input with "
     r"\.to\(torch\.float32\), or the model with \.to\(torch\.bfloat16\)"),
    (lambda: torch.randn(3, 64, 64), ValueError, r"input x has 3 dims \(shape \[3, 64, 64\]\), the model expects 4 "
                                                 r"\(\[N, 3, 64, 64\]\)"),
    (lambda: torch.randn(2, 3, 64, 64, device="meta"), ValueError,
     r"input x is on meta, the model's tensors are on cpu"),
    (lambda: 1.0, TypeError, r"input x must be a tensor, got float"),
])
def test_wrong_inputs_are_named_against_what_the_model_expects(eval_twins, wrong, error, message):
    model, fused = eval_twins
    x = wrong()
    with pytest.raises(error, match=message):
        fused(x)
    with pytest.raises(Exception):  # noqa: B017 (any error: the stock model refuses these inputs too)
        model(x)


def test_the_dtype_expected_follows_the_model_and_autocast(eval_twins):
    model, fused = eval_twins
    converted, stock = copy.deepcopy(fused).double(), copy.deepcopy(model).double()
    assert_same_function(stock, converted, image(2, dtype=torch.float64), train=False)
    with pytest.raises(TypeError, match=r"input x has dtype torch\.float32, the model computes in torch\.float64"):
        converted(image(2))
    # Under autocast a stock model takes inputs of the autocast dtype: so does the fused one.
    x = image(2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out, expected = fused(x), model(x)
    torch.testing.assert_close(out.float(), expected.float(), atol=0.1 * expected.abs().max().item(), rtol=0.1)


def test_a_saved_export_program_with_library_ops_needs_the_library_imported(tmp_path):
    model = randomize_batch_norms(so.models.shufflenet_v1(3, 0.25, 10)).eval()
    x = image(2)
    program = torch.export.export(model, (x,))
    assert any(str(n.target).startswith("shufflenet_ops.") for n in program.graph.nodes if n.op == "call_function")
    torch.export.save(program, tmp_path / "program.pt2")
    with torch.no_grad():
        torch.save({"x": x, "expected": model(x)}, tmp_path / "io.pt")
    load = f"program = torch.export.load({str(tmp_path / 'program.pt2')!r})\n"
    # Without the library its ops are unknown to torch: torch refuses the file and its log names
    # the op to register.
    missing = run_in_fresh_python("import torch\n" + load)
    assert missing.returncode != 0
    assert "shufflenet_ops" in missing.stderr and "import" in missing.stderr
    # With it imported first, the program loads and computes what the model computed.
    loaded = run_in_fresh_python(
        "import torch, shufflenet_ops\n" + load
        + f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "with torch.no_grad():\n"
        "    out = program.module()(io['x'])\n"
        "print('same' if torch.allclose(out, io['expected'], atol=1e-5, rtol=1e-5) else 'different')\n")
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "same"
