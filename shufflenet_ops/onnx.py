"""ONNX export of the library's ops, as standard ONNX operators.

Importing ``shufflenet_ops`` makes ``torch.onnx.export`` translate every op a
forward pass can meet (``channel_shuffle``, ``pointwise_group_conv``, their
``triton_`` twins, ``depthwise_conv3x3``, ``pool3x3`` and
``stem_conv3x3_maxpool``) into Conv (with ``group``), Reshape / Transpose,
MaxPool / AveragePool, Add and Relu, with either exporter:

* the TorchScript exporter (``dynamo=False``) through
  ``torch.onnx.register_custom_op_symbolic``, from ONNX opset 13 on (Unsqueeze's
  axes as an input);
* the torch.export-based exporter (``dynamo=True``), whose public API takes a
  translation only per call (``custom_translation_table``): each export builds
  its registry from onnxscript's torchlib registry (onnxscript's interface to
  PyTorch since torch 2.5), so the translations are registered there. Importing
  onnxscript takes about a second, so they are registered only once something
  imports that registry (the exporter does, at every export), never by
  importing ``shufflenet_ops``. ``translation_table()`` holds the same
  translations for ``custom_translation_table``.

The backward ops have no translation: an exported inference graph never calls
them.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable

import torch
import torch.onnx
from torch.onnx import symbolic_helper

from .ops import DEPTHWISE_CONV3X3, NATIVE, POOL3X3, STEM_CONV3X3_MAXPOOL, TRITON

__all__ = ["translation_table"]

TORCHSCRIPT_MIN_OPSET = 13
_TORCHLIB_REGISTRY_MODULE = "onnxscript.function_libs.torch_lib.registration"


class _ScriptGraph:
    """Adds nodes the way the torch.export-based exporter traces a translation: through an onnxscript opset."""

    def __init__(self, opset):
        self._opset = opset

    def op(self, op_type: str, *inputs, **attributes):
        outputs = getattr(self._opset, op_type)(*inputs, **attributes)
        # onnxscript yields every output an op can have (MaxPool's indices too); the translations use the first.
        return outputs[0] if isinstance(outputs, tuple) else outputs

    def constant(self, values: list[int]):
        return self._opset.Constant(value_ints=values)

    @staticmethod
    def sizes(value) -> list[int | None]:
        return [d if isinstance(d, int) else None for d in value.shape]


class _TorchScriptGraph:
    """Adds nodes to the TorchScript exporter's graph, whose ``g.op`` names each attribute's type by a suffix."""

    def __init__(self, g):
        self._g = g

    def op(self, op_type: str, *inputs, **attributes):
        # Every attribute the translations set is an int or a list of ints.
        return self._g.op(op_type, *inputs, **{f"{name}_i": value for name, value in attributes.items()})

    def constant(self, values: list[int]):
        return self._g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))

    @staticmethod
    def sizes(value) -> list[int | None]:
        return value.type().varyingSizes()


def _channel_shuffle(graph, x, groups: int, rank: int):
    """Views the channels of ``x`` (of ``rank`` dims) as (groups, C / groups), transposes them, flattens them
    back. The rank is the caller's to give: a node the translation adds has no shape yet."""
    if groups == 1:
        return graph.op("Identity", x)
    shape = graph.op("Shape", x)

    def dims(start: int, end: int):
        # Slice, not Shape's start / end: the TorchScript exporter's constant folding ignores those.
        return graph.op("Slice", shape, graph.constant([start]), graph.constant([end]))

    group_size = graph.op("Div", dims(1, 2), graph.constant([groups]))
    grouped_shape = graph.op("Concat", dims(0, 1), graph.constant([groups]), group_size, dims(2, rank), axis=0)
    grouped = graph.op("Reshape", x, grouped_shape)
    shuffled = graph.op("Transpose", grouped, perm=[0, 2, 1, *range(3, rank + 1)])
    return graph.op("Reshape", shuffled, shape)


def _conv(graph, x, weight, bias, **attributes):
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return graph.op("Conv", *inputs, **attributes)


def _window3x3(stride: int) -> dict:
    return {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [stride, stride]}


def _pointwise_group_conv(graph, x, weight, bias, groups: int, input_shuffle: int, output_shuffle: int, relu: bool,
                          residual):
    x = _channel_shuffle(graph, x, input_shuffle, 4) if input_shuffle != 1 else x
    if len(graph.sizes(weight)) == 2:
        weight = graph.op("Unsqueeze", weight, graph.constant([2, 3]))
    y = _conv(graph, x, weight, bias, group=groups)
    y = _channel_shuffle(graph, y, output_shuffle, 4) if output_shuffle != 1 else y
    y = graph.op("Add", y, residual) if residual is not None else y
    return graph.op("Relu", y) if relu else y


def _depthwise_conv3x3(graph, x, weight, bias, stride: int, relu: bool):
    channels = graph.sizes(weight)[0]
    if channels is None:
        raise ValueError("depthwise_conv3x3: ONNX export needs a static channel count (weight.size(0)), the Conv's "
                         "group attribute; got a dynamic one: export with the channel dim static")
    y = _conv(graph, x, weight, bias, group=channels, **_window3x3(stride))
    return graph.op("Relu", y) if relu else y


def _pool3x3(graph, x, stride: int, average: bool):
    if average:
        return graph.op("AveragePool", x, count_include_pad=1, **_window3x3(stride))
    return graph.op("MaxPool", x, **_window3x3(stride))


def _stem_conv3x3_maxpool(graph, x, weight, bias):
    return graph.op("MaxPool", graph.op("Relu", _conv(graph, x, weight, bias, **_window3x3(2))), **_window3x3(2))


def _script_translations(opset) -> dict[str, Callable]:
    """qualified op name -> its translation for the torch.export-based exporter, whose parameters are named
    after the op's schema and whose ``int`` / ``bool`` annotations make those parameters ONNX attributes."""
    graph = _ScriptGraph(opset)

    def channel_shuffle(x, groups: int):
        return _channel_shuffle(graph, x, groups, len(graph.sizes(x)))

    def pointwise_group_conv(x, weight, bias, groups: int, input_shuffle: int, output_shuffle: int, relu: bool,
                             residual=None):
        return _pointwise_group_conv(graph, x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual)

    def depthwise_conv3x3(x, weight, bias, stride: int, relu: bool):
        return _depthwise_conv3x3(graph, x, weight, bias, stride, relu)

    def pool3x3(x, stride: int, average: bool):
        return _pool3x3(graph, x, stride, average)

    def stem_conv3x3_maxpool(x, weight, bias):
        return _stem_conv3x3_maxpool(graph, x, weight, bias)

    return _by_qualified_name(channel_shuffle, pointwise_group_conv, depthwise_conv3x3, pool3x3, stem_conv3x3_maxpool)


def _torchscript_translations() -> dict[str, Callable]:
    """qualified op name -> its symbolic function for the TorchScript exporter."""

    def optional(value):
        return None if value.node().mustBeNone() else value

    @symbolic_helper.parse_args("v", "i")
    def channel_shuffle(g, x, groups):
        graph = _TorchScriptGraph(g)
        return _channel_shuffle(graph, x, groups, len(graph.sizes(x)))

    @symbolic_helper.parse_args("v", "v", "v", "i", "i", "i", "b", "v")
    def pointwise_group_conv(g, x, weight, bias, groups, input_shuffle, output_shuffle, relu, residual):
        return _pointwise_group_conv(_TorchScriptGraph(g), x, weight, optional(bias), groups, input_shuffle,
                                     output_shuffle, relu, optional(residual))

    @symbolic_helper.parse_args("v", "v", "v", "i", "b")
    def depthwise_conv3x3(g, x, weight, bias, stride, relu):
        return _depthwise_conv3x3(_TorchScriptGraph(g), x, weight, optional(bias), stride, relu)

    @symbolic_helper.parse_args("v", "i", "b")
    def pool3x3(g, x, stride, average):
        return _pool3x3(_TorchScriptGraph(g), x, stride, average)

    @symbolic_helper.parse_args("v", "v", "v")
    def stem_conv3x3_maxpool(g, x, weight, bias):
        return _stem_conv3x3_maxpool(_TorchScriptGraph(g), x, weight, optional(bias))

    return _by_qualified_name(channel_shuffle, pointwise_group_conv, depthwise_conv3x3, pool3x3, stem_conv3x3_maxpool)


def _by_qualified_name(channel_shuffle, pointwise_group_conv, depthwise_conv3x3, pool3x3, stem_conv3x3_maxpool):
    """Every forward op's qualified name -> its translation: both families share the shuffle and conv ones."""
    table = {DEPTHWISE_CONV3X3: depthwise_conv3x3, POOL3X3: pool3x3, STEM_CONV3X3_MAXPOOL: stem_conv3x3_maxpool}
    for family in (NATIVE, TRITON):
        table[family.qualname("channel_shuffle")] = channel_shuffle
        table[family.qualname("pointwise_group_conv")] = pointwise_group_conv
    return table


def _overload(qualified_name: str) -> torch._ops.OpOverload:
    namespace, name = qualified_name.split("::")
    return getattr(getattr(torch.ops, namespace), name).default


def translation_table() -> dict[torch._ops.OpOverload, Callable]:
    """Op -> its translation for the torch.export-based exporter: what importing ``shufflenet_ops``
    registers, to pass as ``torch.onnx.export(..., custom_translation_table=...)`` where an onnxscript
    release has no torchlib registry to register it in (a warning then says so)."""
    import onnxscript

    return {_overload(name): translation for name, translation in _script_translations(onnxscript.opset18).items()}


def _register_in_torchlib(registration) -> None:
    """Adds the translations to onnxscript's torchlib registry (``registration``, its module), from which
    every torch.export-based export builds its registry. A failure is a warning, not an error: it would
    otherwise break the export of every model, this library's or not."""
    try:
        import onnxscript

        for name, translation in _script_translations(onnxscript.opset18).items():
            registration.torch_op(name, trace_only=True)(translation)
    except Exception as error:  # noqa: BLE001  (any onnxscript change that breaks the registration)
        warnings.warn(
            f"shufflenet_ops: could not register the ONNX translations of its ops with onnxscript "
            f"({type(error).__name__}: {error}); torch.onnx.export(..., dynamo=True) needs "
            f"custom_translation_table=shufflenet_ops.onnx.translation_table() for models that call them"
        )


class _LoaderThenCallback(importlib.abc.Loader):
    """Executes a module with its own loader, then passes it to ``callback``."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str):  # get_source, get_filename, ...: the module's own loader answers
        return getattr(self._loader, name)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``callback`` with the module ``name`` once it is imported (its first import only)."""

    def __init__(self, name: str, callback: Callable):
        self._name = name
        self._callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self._name:
            return None
        sys.meta_path.remove(self)  # the other finders locate the module itself
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _LoaderThenCallback(spec.loader, self._callback)
        return spec


def _call_after_import(name: str, callback: Callable) -> None:
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


def _register() -> None:
    for name, symbolic in _torchscript_translations().items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, TORCHSCRIPT_MIN_OPSET)
    _call_after_import(_TORCHLIB_REGISTRY_MODULE, _register_in_torchlib)


_register()
