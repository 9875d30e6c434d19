"""torch.onnx.export of the library's ops and of models built on them, with the torch.export-based
exporter (dynamo=True) and the TorchScript one (dynamo=False). Every exported file passes
onnx.checker and runs in ONNX Runtime (CPU), where it must give the PyTorch output, at the
export's batch size and at another: the batch axis is exported dynamic."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import shufflenet_ops as so  # noqa: E402
from shufflenet_ops.fuse import ADD_RELU  # noqa: E402
from shufflenet_ops.models import shufflenet_v1, shufflenet_v1_unfused  # noqa: E402
from shufflenet_ops.ops import NATIVE, TRITON  # noqa: E402
from tests.stock_shufflenet import randomize_batch_norms  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")

EXPORTERS = ["dynamo", "torchscript"]
EXPORT_BATCH, OTHER_BATCH = 2, 3
# The Triton kernels run on CUDA, or on CPU under Triton's interpreter (tests/conftest.py).
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
REPOSITORY = Path(__file__).resolve().parent.parent

DEPTHWISE_CONV3X3 = NATIVE.op("depthwise_conv3x3")
POOL3X3 = NATIVE.op("pool3x3")
STEM_CONV3X3_MAXPOOL = NATIVE.op("stem_conv3x3_maxpool")


class OpCall(nn.Module):
    """``call(self, x, other)``: one op on the inputs (``other``: its residual, or its weight as an input) and
    the module's tensors, which export as initializers."""

    def __init__(self, call, **tensors):
        super().__init__()
        self.call = call
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)
        self.eval()  # the ops compute the same in either mode; the exporters warn of a module in training mode

    def forward(self, x, other=None):
        return self.call(self, x, other)


def export(model, inputs: dict, exporter: str, path: Path, dynamic_batch: bool = True, **options) -> None:
    """Exports ``model`` called on ``inputs`` (forward's parameter name -> tensor), with ``dynamic_batch``
    every input's and the output's dim 0 dynamic, and checks the file."""
    if not dynamic_batch:
        dynamic = {}
    elif exporter == "dynamo":
        batch = torch.export.Dim("batch")
        dynamic = {"dynamic_shapes": {name: {0: batch} for name in inputs}}
    else:
        dynamic = {"dynamic_axes": {name: {0: "batch"} for name in [*inputs, "output"]}}
    torch.onnx.export(model, tuple(inputs.values()), path, dynamo=exporter == "dynamo", input_names=list(inputs),
                      output_names=["output"], verbose=False, **dynamic, **options)
    onnx.checker.check_model(onnx.load(path), full_check=True)


def run_onnx(path: Path, inputs: dict) -> torch.Tensor:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {name: t.detach().cpu().numpy() for name, t in inputs.items()})
    return torch.from_numpy(output)


def assert_exports(model, make_inputs, exporter: str, path: Path, atol: float = 1e-5,
                   dynamic_batch: bool = True) -> None:
    """``make_inputs(batch)`` -> forward's inputs by name: the file exported at one batch size computes what
    ``model`` computes at that one and, with ``dynamic_batch``, at another."""
    export(model, make_inputs(EXPORT_BATCH), exporter, path, dynamic_batch)
    for batch in (EXPORT_BATCH, OTHER_BATCH) if dynamic_batch else (EXPORT_BATCH,):
        inputs = make_inputs(batch)
        with torch.no_grad():
            expected = model(*inputs.values()).cpu()
        torch.testing.assert_close(run_onnx(path, inputs), expected, atol=atol, rtol=1e-5,
                                   msg=lambda m: f"batch {batch}: {m}")


def randn(*shape, seed: int, device="cpu") -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)


# name -> (family, x shape, groups)
SHUFFLES = {
    "g3-4d": (NATIVE, (12, 5, 7), 3),
    "g4-3d": (NATIVE, (8, 9), 4),
    "g2-5d": (NATIVE, (6, 3, 4, 2), 2),
    "g1-identity": (NATIVE, (5, 3, 3), 1),
    "triton-g3-4d": (TRITON, (12, 5, 7), 3),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", SHUFFLES)
def test_channel_shuffle(case, exporter, tmp_path):
    family, shape, groups = SHUFFLES[case]
    device = TRITON_DEVICE if family is TRITON else "cpu"
    model = OpCall(lambda m, x, other: family.channel_shuffle(x, groups))
    assert_exports(model, lambda n: {"x": randn(n, *shape, seed=n, device=device)}, exporter, tmp_path / "op.onnx")


# name -> (family, C_in, C_out, H, W, groups, input_shuffle, output_shuffle, bias, relu, residual, 2-D weight)
POINTWISE_CONVS = {
    "g3-both-shuffles-bias-relu": (NATIVE, 12, 18, 5, 7, 3, 3, 3, True, True, False, False),
    "g3-output-shuffle-residual-relu-2d-weight": (NATIVE, 12, 12, 4, 4, 3, 1, 3, False, True, True, True),
    "g4-input-shuffle-bias-residual": (NATIVE, 16, 16, 2, 5, 4, 4, 1, True, False, True, True),
    "dense-plain": (NATIVE, 8, 6, 3, 3, 1, 1, 1, False, False, False, False),
    "triton-g3-both-shuffles-bias-relu": (TRITON, 12, 18, 5, 7, 3, 3, 3, True, True, False, False),
    "triton-g3-residual-relu-2d-weight": (TRITON, 12, 12, 4, 4, 3, 1, 3, False, True, True, True),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", POINTWISE_CONVS)
def test_pointwise_group_conv(case, exporter, tmp_path):
    family, c_in, c_out, h, w, groups, input_shuffle, output_shuffle, bias, relu, residual, weight_2d = (
        POINTWISE_CONVS[case])
    device = TRITON_DEVICE if family is TRITON else "cpu"
    weight = randn(c_out, c_in // groups, *(() if weight_2d else (1, 1)), seed=10, device=device)
    tensors = {"weight": weight, "bias": randn(c_out, seed=11, device=device) if bias else None}
    model = OpCall(lambda m, x, r: family.pointwise_group_conv(x, m.weight, m.bias, groups, input_shuffle,
                                                               output_shuffle, relu, r), **tensors)

    def make_inputs(n):
        inputs = {"x": randn(n, c_in, h, w, seed=n, device=device)}
        if residual:
            inputs["other"] = randn(n, c_out, h, w, seed=100 + n, device=device)
        return inputs

    assert_exports(model, make_inputs, exporter, tmp_path / "op.onnx")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("stride, bias, relu", [(1, True, True), (2, False, False), (2, True, False)])
def test_depthwise_conv3x3(stride, bias, relu, exporter, tmp_path):
    tensors = {"weight": randn(6, 1, 3, 3, seed=10), "bias": randn(6, seed=11) if bias else None}
    model = OpCall(lambda m, x, r: DEPTHWISE_CONV3X3(x, m.weight, m.bias, stride, relu), **tensors)
    assert_exports(model, lambda n: {"x": randn(n, 6, 7, 9, seed=n)}, exporter, tmp_path / "op.onnx")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("average", [False, True], ids=["max", "avg"])
def test_pool3x3(average, stride, exporter, tmp_path):
    """Odd sizes put the last window of a stride-2 pool on the padding; the inputs are shifted negative,
    so that padding would win a max pool that counted it, and an average that left it out would differ."""
    model = OpCall(lambda m, x, r: POOL3X3(x, stride, average))
    assert_exports(model, lambda n: {"x": randn(n, 4, 7, 9, seed=n) - 2}, exporter, tmp_path / "op.onnx")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("bias", [True, False])
def test_stem_conv3x3_maxpool(bias, exporter, tmp_path):
    tensors = {"weight": randn(8, 3, 3, 3, seed=10), "bias": randn(8, seed=11) if bias else None}
    model = OpCall(lambda m, x, r: STEM_CONV3X3_MAXPOOL(x, m.weight, m.bias), **tensors)
    assert_exports(model, lambda n: {"x": randn(n, 3, 17, 15, seed=n)}, exporter, tmp_path / "op.onnx")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_static_batch(exporter, tmp_path):
    """Exported with static shapes, the channel shuffles' shape computations fold into constants."""
    weight = randn(12, 4, seed=10)
    model = OpCall(lambda m, x, r: NATIVE.channel_shuffle(
        NATIVE.pointwise_group_conv(x, m.weight, None, 3, 3, 3, True, r), 4), weight=weight)
    make_inputs = lambda n: {"x": randn(n, 12, 3, 5, seed=n), "other": randn(n, 12, 3, 5, seed=100 + n)}  # noqa: E731
    assert_exports(model, make_inputs, exporter, tmp_path / "op.onnx", dynamic_batch=False)


def test_depthwise_conv3x3_with_a_dynamic_channel_count_is_refused(tmp_path):
    """ONNX's Conv takes its group count as an attribute, a constant."""
    model = OpCall(lambda m, x, weight: DEPTHWISE_CONV3X3(x, weight, None, 1, False))
    inputs = {"x": randn(2, 6, 5, 5, seed=0), "other": randn(6, 1, 3, 3, seed=1)}
    with pytest.raises(ValueError, match=r"depthwise_conv3x3: ONNX export needs a static channel count"):
        torch.onnx.export(model, tuple(inputs.values()), tmp_path / "op.onnx", dynamo=False, input_names=list(inputs),
                          dynamic_axes={"x": {1: "channels"}, "other": {0: "channels"}})


def test_translation_table_exports_without_the_registered_translations(tmp_path):
    """The table given to the exporter comes before its registry, so it alone translates the ops."""
    tensors = {"weight": randn(8, 3, 3, 3, seed=10), "bias": randn(8, seed=11)}
    model = OpCall(lambda m, x, r: STEM_CONV3X3_MAXPOOL(x, m.weight, m.bias), **tensors)
    make_inputs = lambda n: {"x": randn(n, 3, 17, 15, seed=n)}  # noqa: E731
    export(model, make_inputs(EXPORT_BATCH), "dynamo", tmp_path / "op.onnx",
           custom_translation_table=so.onnx.translation_table())
    inputs = make_inputs(OTHER_BATCH)
    torch.testing.assert_close(run_onnx(tmp_path / "op.onnx", inputs), model(*inputs.values()), atol=1e-5, rtol=1e-5)


def image_batch(n):
    return {"x": randn(n, 3, 64, 64, seed=n)}


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_zoo_model(exporter, tmp_path):
    model = randomize_batch_norms(shufflenet_v1(3, 0.25, 10)).eval()
    assert_exports(model, image_batch, exporter, tmp_path / "zoo.onnx", atol=1e-4)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_stock_shufflenet(exporter, tmp_path):
    """At the export's batch size the classifier is so.fuse's small_batch_linear; torch.export traces
    it (and the TorchScript exporter the branch the example takes) into stock ops."""
    stock = randomize_batch_norms(shufflenet_v1_unfused(3, 0.25, 10), seed=1).eval()
    fused = so.fuse(stock, image_batch(EXPORT_BATCH)["x"])
    assert_exports(fused, image_batch, exporter, tmp_path / "fused.onnx", atol=1e-4)


class ResidualBlock(nn.Module):
    """relu(bn(depthwise 3x3 conv(x)) + x): so.fuse makes it depthwise_conv3x3 and its add_relu."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 6, 3, 1, 1, groups=6, bias=False)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)) + x)


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_fused_add_relu(exporter, tmp_path):
    block = randomize_batch_norms(ResidualBlock()).eval()
    make_inputs = lambda n: {"x": randn(n, 6, 5, 7, seed=n)}  # noqa: E731
    with pytest.warns(UserWarning, match="found no channel shuffle"):
        fused = so.fuse(block, make_inputs(EXPORT_BATCH)["x"])
    assert fused.fuse_report.counts[ADD_RELU] == 1
    assert_exports(fused, make_inputs, exporter, tmp_path / "fused.onnx")


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_leaves_onnxscript_unimported():
    """Importing onnxscript takes about a second: the translations wait for the exporter to import it."""
    assert run_python("import sys, shufflenet_ops; print('onnxscript' in sys.modules)").strip() == "False"


def test_registers_into_a_torchlib_registry_imported_before_the_library(tmp_path):
    code = f"""
import onnxscript.function_libs.torch_lib.registration
import numpy, onnxruntime, torch
import shufflenet_ops
class Shuffle(torch.nn.Module):
    def forward(self, x):
        return torch.ops.shufflenet_ops.channel_shuffle(x, 3)
x = torch.randn(2, 12, 3, 4)
torch.onnx.export(Shuffle(), (x,), {str(tmp_path / "op.onnx")!r}, dynamo=True, input_names=["x"], verbose=False)
session = onnxruntime.InferenceSession({str(tmp_path / "op.onnx")!r}, providers=["CPUExecutionProvider"])
print(bool(numpy.array_equal(session.run(None, {{"x": x.numpy()}})[0], torch.channel_shuffle(x, 3).numpy())))
"""
    assert run_python(code).strip().splitlines()[-1] == "True"


def test_failed_registration_warns_and_names_the_table():
    registration_without_torch_op = object()
    with pytest.warns(UserWarning, match=r"custom_translation_table=shufflenet_ops\.onnx\.translation_table\(\)"):
        so.onnx._register_in_torchlib(registration_without_torch_op)
