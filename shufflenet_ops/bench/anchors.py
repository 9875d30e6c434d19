"""Anchors: what a user would pick instead of PyTorch for CPU inference, ONNX
Runtime and OpenVINO, running the unfused model exported to ONNX. Each runs
only where its package is installed (``pip install .[bench]``)."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import torch


RUNTIMES = ("onnxruntime", "openvino")
# Float32 results of another summation order stay far inside these; bfloat16
# ones (8 significant bits) do not.
FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-5


def installed() -> list[str]:
    """The anchor runtimes importable here (ONNX export also needs onnx and onnxscript)."""
    if not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript")):
        return []
    return [name for name in RUNTIMES if importlib.util.find_spec(name)]


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False)


def _onnxruntime_runner(path: Path, x):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)[0]


def _openvino_runner(path: Path, x):
    import openvino

    core = openvino.Core()
    # Without the precision hint OpenVINO computes in bfloat16 on CPUs with
    # AVX512_BF16 or AMX, and the float32 comparison would not be one.
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "INFERENCE_PRECISION_HINT": "f32"}
    compiled = core.compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    array = x.numpy()
    return lambda: request.infer([array])[compiled.output(0)]


RUNNERS = {"onnxruntime": _onnxruntime_runner, "openvino": _openvino_runner}


def runner(runtime: str, model: torch.nn.Module, x: torch.Tensor):
    """``runtime``'s inference of ``model`` (stock PyTorch, eval) exported to
    ONNX, as a callable on ``x``; its output is checked against PyTorch's
    first, at a float32 tolerance that a runtime computing in a narrower
    type would fail."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, x, path)
        run = RUNNERS[runtime](path, x)  # both runtimes hold the model in memory once loaded
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(torch.from_numpy(run()), expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)
    return run
