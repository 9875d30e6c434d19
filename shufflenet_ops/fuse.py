"""``so.fuse``: rewrites a model written with stock PyTorch ops to use the fused ops.

The model is captured with ``torch.export`` (so shuffles written inside methods
that unpack ``x.size()`` are seen too), then the ATen graph is rewritten:

* every channel shuffle becomes ``so.channel_shuffle``; recognized forms are
  ``torch.channel_shuffle`` / ``nn.ChannelShuffle`` / ``F.channel_shuffle`` and
  the idiom ``view|reshape -> transpose|permute -> [contiguous] -> view|reshape|flatten``
  over a (a, b) split of the channels, in either order ((g, n) or (n, g));
* a 1x1 convolution (stride 1, no padding, any groups) whose input is a shuffle
  used only by it, or whose output reaches a shuffle through an optional
  BatchNorm and ReLU, becomes one ``so.pointwise_group_conv`` that also does the
  shuffle(s), the ReLU and (in eval) the BatchNorm folded into its weights;
* so does a 1x1 convolution next to no shuffle but followed by a foldable
  BatchNorm or a ReLU: the fused op's epilogue saves their passes over memory;
* in eval, a 3x3 depthwise convolution (padding 1, stride 1 or 2) becomes
  ``so.depthwise_conv3x3``, with the BatchNorm after it folded and a ReLU
  fused;
* any other convolution followed by an eval-mode BatchNorm gets it folded in;
* in eval, a 3x3 max or average pooling with padding 1 and stride 1 or 2
  (``nn.MaxPool2d`` / ``F.max_pool2d`` without ceil mode or dilation, its
  indices unused; ``nn.AvgPool2d`` / ``F.avg_pool2d`` counting the padding,
  without ceil mode or divisor override) becomes ``so.max_pool3x3`` /
  ``so.avg_pool3x3``;
* in eval, ``relu(a + b)`` over two tensors of the same shape, the sum used
  only by the ReLU (a residual connection): where ``a`` is a 1x1 conv (stock
  or fused) used only by the add, the fused conv adds ``b`` and applies the ReLU in its
  epilogue (``residual=b``); otherwise it becomes one add with the ReLU in
  place on its result: the same values and autograd without a second output
  buffer. (ATen's fused ``_add_relu`` is not used: its CPU kernel turns a NaN
  into 0 outside its vector loop and +inf into the largest finite value, and
  it has no CUDA, bfloat16 or autograd kernel.)
* in eval, a stride-2 3x3 max pooling of the ReLU of a 3x3 convolution with
  stride 2 and padding 1 (a network stem, its BatchNorm folded) becomes
  ``so.stem_conv3x3_maxpool``, which never writes the convolution's output;
* in eval on CPU, a ``linear`` layer on a 2-D input (a classifier) with no bias
  or one bias value per output feature becomes ``small_batch_linear``: up to
  ``SMALL_BATCH`` rows it runs as a ``pointwise_group_conv`` of 1x1 images, which
  splits the output features over the threads where ATen's GEMM reads the weights
  on one, beyond that as before (a bias that ``F.linear`` broadcasts, such as a
  0-dim one, stays with ``linear``);
* in eval, whatever the model computes from its parameters and buffers alone
  (a BatchNorm it folds itself at every call, weights it reshapes or shuffles)
  is computed once, now, and kept as a buffer; plain views of a parameter stay
  views, so the parameter is still shared.

Every rewrite is checked on the op it puts in: the fused call runs on the graph's
example values (fake tensors, the batch size symbolic) and must give what the
replaced nodes gave, the same shape, dtype, device and strides; otherwise the
stock ops stay. That keeps the memory format later ops rely on (the shuffle idiom's
result is contiguous even for a channels_last input, where the fused ops would keep
channels_last) and refuses arguments the fused kernels reject. The shuffle idiom is
recognized only over a static channel count, so a "shuffle" of a dim a transpose
moved the batch into is left alone.

In training mode a BatchNorm normalizes with batch statistics, so it cannot be
folded: a conv then fuses only the shuffle before it and, where no BatchNorm
sits between them, the ReLU and shuffle after it. Everything fused is then
exact up to floating-point rounding of the folded weights.

The result is a ``FusedModule``: the rewritten graph with torch.export's per-call
checks replaced by its own, which name a wrong input against the example, and a
module that pickles, copies and keeps the mode it was fused in.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import math
import operator
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy
import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils import _pytree as pytree

from .functional import (
    avg_pool3x3, channel_shuffle, depthwise_conv3x3, max_pool3x3, pointwise_group_conv, registered_op_call,
    stem_conv3x3_maxpool)
from .ops import NAMESPACE, NATIVE

__all__ = ["FuseError", "FuseReport", "FusedModule", "fuse"]

aten = torch.ops.aten
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_COPIES = {aten.contiguous.default, aten.clone.default}
_STOCK_SHUFFLES = {aten.channel_shuffle.default, aten.native_channel_shuffle.default}
_CONVS = {aten.conv2d.default, aten.convolution.default}
_RELUS = {aten.relu.default, aten.relu_.default}
_MAX_POOLS = {aten.max_pool2d.default, aten.max_pool2d_with_indices.default}

SHUFFLE_OP = "channel shuffle written as torch.channel_shuffle / nn.ChannelShuffle"
SHUFFLE_IDIOM = "channel shuffle written as reshape -> transpose -> reshape"
INPUT_SHUFFLE = "shuffle fused into the following 1x1 conv"
OUTPUT_SHUFFLE = "shuffle fused into the preceding 1x1 conv"
BATCH_NORM = "BatchNorm folded into a fused 1x1 conv"
RELU = "ReLU fused into a 1x1 conv"
STANDALONE = "shuffle left standalone (so.channel_shuffle)"
EPILOGUE_ONLY = "1x1 conv with no shuffle, its BatchNorm/ReLU fused (pointwise_group_conv)"
DEPTHWISE = "3x3 depthwise conv, with its BatchNorm/ReLU (depthwise_conv3x3)"
OTHER_CONV = "BatchNorm folded into another conv"
MAX_POOL = "3x3 max pool (max_pool3x3)"
AVG_POOL = "3x3 average pool (avg_pool3x3)"
ADD_RELU = "add + ReLU, the ReLU in place on the sum"
RESIDUAL_ADD_RELU = "add + ReLU fused into the 1x1 conv computing one addend (residual)"
PARAMETER_COMPUTATION = "computation on parameters alone, done once at fuse time"
STEM = "3x3 stride-2 conv + ReLU + 3x3 stride-2 max pool (stem_conv3x3_maxpool)"
SMALL_BATCH_LINEAR = "linear on a 2-D input, as pointwise_group_conv up to SMALL_BATCH rows"


class FuseError(RuntimeError):
    """The model could not be captured or rewritten."""


@dataclass
class FuseReport:
    """What ``fuse`` did: pattern -> number of occurrences."""

    training: bool
    counts: Counter = field(default_factory=Counter)

    @property
    def shuffles_found(self) -> int:
        return self.counts[SHUFFLE_OP] + self.counts[SHUFFLE_IDIOM]

    def __str__(self) -> str:
        mode = "train" if self.training else "eval"
        lines = [f"so.fuse ({mode} mode):"]
        lines += [f"  {count:4d}  {pattern}" for pattern, count in self.counts.items() if count]
        if len(lines) == 1:
            lines.append("  nothing to fuse: no channel shuffle found")
        return "\n".join(lines)


def fuse(model: nn.Module, example_inputs, *, dynamic_batch: bool = True, dynamic_spatial: bool = False,
         verbose: bool = False) -> FusedModule:
    """Returns a module computing what ``model`` computes, with its channel
    shuffles and the 1x1 convs next to them running as fused ops.

    ``example_inputs``: a tensor or a tuple of positional arguments. The model is
    captured in its current mode (train or eval), and the result computes that
    mode's function: its ``training`` says which, and switching it to the other
    mode raises (fuse the model again in that mode). With ``dynamic_batch`` dim 0
    of each tensor input (the batch) may take any size, even where the example's
    batch is 1. With ``dynamic_spatial`` so may its dims 2 and up (an image's
    height and width), within what the model allows; the rewrites then compare
    symbolic sizes, and where a size reaches 1 in the example (a 1x1 feature map)
    one may go unrecognized, so fixed spatial sizes are the default. The result
    checks each call's inputs against the example's: structure, rank, the fixed
    sizes (channels), dtype, device, and the relations between variable sizes the
    captured graph relies on. It shares the model's parameters except the folded
    ones (eval), which are copies taken now. ``result.fuse_report`` counts what
    was fused per pattern; ``verbose`` prints it and lets torch.export's own log
    through. ``copy.deepcopy(result)`` is a fused module of its own tensors with
    the same report and behaviour; ``torch.save(result)`` /
    ``torch.load(..., weights_only=False)`` round-trip it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: expected model to be a torch.nn.Module, got {type(model).__name__}")
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with contextlib.nullcontext() if verbose else _capture_quietly():
        gm = _capture(model, args, dynamic_batch, dynamic_spatial)
    inputs = _ExpectedInputs.of_capture(type(model).__name__, gm, args, dynamic_batch, dynamic_spatial)
    report = FuseReport(training=model.training)
    if not report.training:
        _fold_parameter_computations(gm, report)
    _rewrite_matches(gm.graph, report, _match_shuffle)
    _fuse_convs(gm, report)
    if not report.training:
        # Inference rewrites, like the depthwise one: the pool's backward is stock ATen, and
        # one buffer saved by the in-place ReLU is little next to a training step's backward.
        _rewrite_matches(gm.graph, report, _pool3x3)
        _rewrite_matches(gm.graph, report, _stem)
        _rewrite_matches(gm.graph, report, _add_relu)
        _rewrite_matches(gm.graph, report, _linear)
    report.counts[STANDALONE] = sum(1 for n in gm.graph.nodes if _is_so_shuffle(n))
    built_on_library_ops = any(_is_library_op(n) for n in gm.graph.nodes)
    _call_registered_ops(gm.graph)
    _erase_unused_reads(gm.graph)
    gm.graph.lint()
    reference = _first_floating_tensor_read(gm)
    if reference is not None:
        inputs.follow(*reference)
    fused = FusedModule(gm, gm.graph, {"fuse_report": report, "_expected_inputs": inputs})
    fused.register_forward_pre_hook(_check_inputs, with_kwargs=True)
    if verbose:
        print(report)
    if not report.shuffles_found and not built_on_library_ops:
        fused_any = any(report.counts.values())
        warnings.warn(
            f"so.fuse: found no channel shuffle in {type(model).__name__}; "
            + ("fused only the other patterns (see fuse_report)" if fused_any else "nothing was fused"),
            stacklevel=2,
        )
    return fused


_PUBLIC_OPS = (channel_shuffle, pointwise_group_conv, depthwise_conv3x3, max_pool3x3, avg_pool3x3,
               stem_conv3x3_maxpool)


def _call_registered_ops(graph: fx.Graph) -> None:
    """Points each call of a public op at the registered op it runs on its input's device: the
    graph's arguments are fixed, so the per-call Python layer of the public op is pure overhead."""
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _PUBLIC_OPS or _val(node.args[0]) is None:
            continue
        call = registered_op_call(node.target, node.args, node.kwargs, _val(node.args[0]).device)
        if call is not None:
            node.target, node.args, node.kwargs = call[0], call[1], {}


def _erase_unused_reads(graph: fx.Graph) -> None:
    """Drops reads of attributes nothing uses (the captured graph reads every buffer, such as each
    BatchNorm's num_batches_tracked) and the size arithmetic only replaced ops used (the output
    sizes of the stock ops, over variable sizes): each is Python work per call."""
    for node in reversed(list(graph.nodes)):
        if node.users:
            continue
        if node.op == "get_attr" or (node.op == "call_function"
                                     and isinstance(node.meta.get("val"), (torch.SymInt, torch.SymBool))):
            graph.erase_node(node)


def _tensor_property(name: str, store: str) -> property:
    def read(self):
        tensors = self.__dict__[store]
        # A name deleted since falls back to nn.Module's lookup, which raises AttributeError.
        return tensors[name] if name in tensors else nn.Module.__getattr__(self, name)

    return property(read)


def _read_tensors_through_properties(gm: fx.GraphModule) -> None:
    """Gives each parameter and buffer the forward reads off ``gm`` itself a property on gm's own
    class (fx makes one per instance): the generated code reads every weight as ``self.<name>``,
    which otherwise fails the normal lookup and runs ``nn.Module.__getattr__``, about 0.5 us a
    read, a hundred reads a ShuffleNet forward. The property reads the module's own
    ``_parameters`` / ``_buffers`` entry, so ``to()``, ``load_state_dict`` and reassignment are
    seen as before."""
    for node in gm.graph.nodes:
        if node.op != "get_attr" or "." in node.target:
            continue
        for store in ("_parameters", "_buffers"):
            if node.target in gm.__dict__[store]:
                setattr(type(gm), node.target, _tensor_property(node.target, store))


def _is_library_op(node: fx.Node) -> bool:
    """Whether ``node`` calls one of this library's registered ops: a model built on them (such as
    ``so.models``) has its shuffles fused already."""
    return node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and (
        node.target.namespace == NAMESPACE)


# --- capture ---------------------------------------------------------------------------------------

def _reject(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def _capture_quietly():
    """Keeps what torch.export writes to stderr while capturing (a failed capture prints the
    partial graph and logs its cause, a specialized dim logs a warning) from reaching the user:
    a failure reaches them as the FuseError that names its cause, and what a capture that
    succeeds printed is written out after it. Torch's log records are filtered out on its loggers
    and on their handlers (which also see the records of loggers created during the capture);
    its prints go to a buffer in place of ``sys.stderr`` meanwhile, for every thread."""
    loggers = [logger for name, logger in list(logging.root.manager.loggerDict.items())
               if isinstance(logger, logging.Logger) and (name == "torch" or name.startswith("torch."))]
    muted = loggers + list({handler for logger in loggers for handler in logger.handlers})
    printed = io.StringIO()
    for target in muted:
        target.addFilter(_reject)
    try:
        with contextlib.redirect_stderr(printed):
            yield
    finally:
        for target in muted:
            target.removeFilter(_reject)
    sys.stderr.write(printed.getvalue())


def _dynamic_dims(t: torch.Tensor, dynamic_batch: bool, dynamic_spatial: bool) -> list[int]:
    """The dims of an example tensor captured as variable sizes: the batch (dim 0) and the
    spatial dims (2 and up). A spatial size of 1 stays fixed: torch.export takes a size-1 example
    dim as that size only, and says so in its log."""
    dims = [0] if dynamic_batch and t.dim() > 0 and t.shape[0] > 0 else []
    if dynamic_spatial:
        dims += [d for d in range(2, t.dim()) if t.shape[d] > 1]
    return dims


def _batch_of_one(a) -> bool:
    return isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1


def _batch_of_two(t: torch.Tensor) -> torch.Tensor:
    """A batch-1 example repeated into a batch of 2: torch.export would take a size-1 dim as that
    size only. The repeat keeps the example's values and memory format."""
    if not _batch_of_one(t):
        return t
    return torch.cat([t.detach(), t.detach()]).requires_grad_(t.requires_grad)


def _capture(model: nn.Module, args: tuple, dynamic_batch: bool, dynamic_spatial: bool) -> fx.GraphModule:
    """``model`` as torch.export's module of ATen ops, with the dims of ``_dynamic_dims`` variable
    wherever the model allows it. An example with a batch of 1 is captured as a batch of 2; where
    the model cannot take that (its dim 0 is no batch) or fixes it to 2, the example is captured
    as given, its dim 0 fixed. torch.export's per-call checks are left out: the fused module
    checks its inputs itself (``_ExpectedInputs``)."""
    if dynamic_batch and any(_batch_of_one(a) for a in pytree.tree_leaves(args)):
        try:
            gm = _export(model, pytree.tree_map_only(torch.Tensor, _batch_of_two, args), dynamic_batch,
                         dynamic_spatial)
        except FuseError:
            gm = None
        if gm is not None and not _fixes_a_doubled_batch(gm, args):
            return gm
        dynamic_batch = False
    return _export(model, args, dynamic_batch, dynamic_spatial)


def _placeholders(gm: fx.GraphModule) -> list:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _fixes_a_doubled_batch(gm: fx.GraphModule, args: tuple) -> bool:
    """Whether the model fixed dim 0 of an input whose batch of 1 was captured as 2: its graph
    computes a batch of 2 only, not the example's."""
    return any(_batch_of_one(a) and _fixed_size(_val(n).shape[0]) is not None
               for n, a in zip(_placeholders(gm), pytree.tree_leaves(args)))


def _export(model: nn.Module, args: tuple, dynamic_batch: bool, dynamic_spatial: bool) -> fx.GraphModule:
    def dims_of(a):
        dims = _dynamic_dims(a, dynamic_batch, dynamic_spatial) if isinstance(a, torch.Tensor) else []
        return {d: torch.export.Dim.AUTO for d in dims} or None

    dynamic_shapes = pytree.tree_map(dims_of, args)
    if not any(d is not None for d in pytree.tree_leaves(dynamic_shapes)):
        dynamic_shapes = None
    try:
        gm = torch.export.export(model, args, dynamic_shapes=dynamic_shapes).module()
    except Exception as error:
        options = [o for o, on in (("dynamic_batch=False", dynamic_batch), ("dynamic_spatial=False", dynamic_spatial))
                   if on]
        raise FuseError(
            f"so.fuse: torch.export could not capture {type(model).__name__} with the given example_inputs "
            f"({type(error).__name__}: {error}). so.fuse needs a model that torch.export can trace; "
            f"check that example_inputs are what forward() takes"
            + (f", or pass {' and '.join(options)} to capture the example's sizes only" if options else "")
            + " (verbose=True shows torch.export's log)."
        ) from error
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    return gm


def _fixed_size(size) -> int | None:
    """A captured size as an int where it is one: a symbolic size torch.export found fixed by
    the model has a number for its expression."""
    if isinstance(size, int):
        return size
    return int(size.node.expr) if size.node.expr.is_number else None


# --- the fused module's inputs -----------------------------------------------------------------------

@dataclass
class _ExpectedTensor:
    """What a tensor input must be: its rank, the sizes fixed at capture (dim -> size, and what to
    do for another size), and the example's dtype and device."""

    rank: int
    fixed: dict
    remedies: dict
    dtype: torch.dtype
    device: torch.device
    follows_dtype: bool = False
    follows_device: bool = False


def _remedy(dim: int, example: torch.Tensor, dynamic_batch: bool, dynamic_spatial: bool) -> str:
    """What to do for another size of a dim fixed at capture; "" where the model fixes it (channels)."""
    if dim == 0:
        if not dynamic_batch:
            return "fuse the model without dynamic_batch=False for any batch size"
        return "the model fixes it, torch.export captures it for this size only"
    if dim == 1:
        return ""
    if not dynamic_spatial:
        return "fuse the model with dynamic_spatial=True, or with an example of this size"
    if example.shape[dim] == 1:
        return "the example's size 1 fixes it: fuse the model with an example of this size"
    return "the model computes this size only"


class _ExpectedInputs:
    """The fused module's inputs as captured: their structure, each tensor's rank, fixed sizes,
    dtype and device, and the relations between variable sizes that the captured graph relies on
    (torch.export's guards, such as a spatial size large enough for every stride-2 stage to
    leave more than one pixel). Checked before each call, so a wrong input is named with what
    the model expects instead of failing inside an op."""

    def __init__(self, model: str, in_spec, names: list, expected: list, arity: int, plain: bool,
                 variables: list, guards: list):
        self.model = model
        self.structure = _Structure(in_spec)
        self.names = names
        self.expected = expected  # per flattened input: _ExpectedTensor, a fixed value, or None
        self.arity = arity
        self.plain = plain  # every input a plain tensor passed positionally: no structure to check
        self.variables = variables  # (variable name, input index, dim) of each variable size
        self.guards = guards  # (Python expression over the variables, the same over input names)
        self.reference_tensor = None
        self._compile_guards()

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in ("_all_guards", "_each_guard")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._compile_guards()

    def _compile_guards(self) -> None:
        """The guards as functions of the variable sizes, made once: torch.compile traces calls of
        them, not the ``eval`` that makes them."""
        from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

        namespace = {**SYMPY_INTERP, "math": math, "inf": math.inf}
        parameters = ", ".join(v for v, _, _ in self.variables)
        body = " and ".join(f"({code})" for code, _ in self.guards) or "True"
        # The expressions are sympy's printing of torch.export's guards, over generated names.
        self._all_guards = eval(f"lambda {parameters}: {body}", namespace)  # noqa: S307
        self._each_guard = [(eval(f"lambda {parameters}: {code}", namespace), readable)  # noqa: S307
                            for code, readable in self.guards]

    @classmethod
    def of_capture(cls, model: str, gm: fx.GraphModule, args: tuple, dynamic_batch: bool,
                   dynamic_spatial: bool) -> _ExpectedInputs:
        placeholders = _placeholders(gm)
        leaves, in_spec = pytree.tree_flatten((args, {}))
        names = [n.name for n in placeholders]
        expected, variables, symbols, equalities = [], [], {}, []
        for index, (node, example) in enumerate(zip(placeholders, leaves)):
            value = node.meta.get("val")
            if not isinstance(value, torch.Tensor):
                expected.append(value if isinstance(value, (bool, int, float, str)) else None)
                continue
            fixed, remedies = {}, {}
            for dim, size in enumerate(value.shape):
                if _fixed_size(size) is not None:
                    fixed[dim] = _fixed_size(size)
                    remedies[dim] = _remedy(dim, example, dynamic_batch, dynamic_spatial)
                    continue
                variable = sympy.Symbol(f"_{index}_{dim}", integer=True)
                variables.append((variable.name, index, dim))
                expr = size.node.expr
                if isinstance(expr, sympy.Symbol) and expr not in symbols:
                    symbols[expr] = variable
                else:
                    equalities.append(sympy.Eq(variable, expr))
            expected.append(_ExpectedTensor(value.dim(), fixed, remedies, value.dtype, value.device))
        readable = {sympy.Symbol(v, integer=True): sympy.Symbol(f"{names[i]}.shape[{d}]") for v, i, d in variables}
        guards = cls._guards(gm, symbols, equalities, readable)
        plain = all(type(a) is torch.Tensor for a in args) and len(leaves) == len(args)
        return cls(model, in_spec, names, expected, len(args), plain, variables, guards)

    @staticmethod
    def _guards(gm: fx.GraphModule, symbols: dict, equalities: list, readable: dict) -> list:
        """torch.export's guards on the input sizes (those its module checks at each call), its
        range constraints above the 2 every variable size is captured from, and the sizes given
        by an expression of another: as Python expressions over the variables."""
        if not symbols and not equalities:
            return []
        from torch.utils._sympy.printers import PythonPrinter

        conditions = list(equalities)
        values = [_val(n) for n in _placeholders(gm)]
        fake_mode = torch._guards.detect_fake_mode([v for v in values if v is not None])
        if fake_mode is not None and fake_mode.shape_env is not None:
            conditions += [guard.expr for guard in fake_mode.shape_env.guards]
        for symbol, bounds in (getattr(gm, "range_constraints", None) or {}).items():
            if isinstance(bounds.lower, sympy.Integer) and bounds.lower > 2:
                conditions.append(sympy.Ge(symbol, bounds.lower))
            if isinstance(bounds.upper, sympy.Integer):
                conditions.append(sympy.Le(symbol, bounds.upper))
        known = set(symbols) | set(readable)
        printer = PythonPrinter()
        guards, seen = [], set()
        for condition in conditions:
            if not condition.free_symbols <= known:
                continue  # a size that is no input's (a data-dependent one): checked in the graph
            condition = condition.xreplace(symbols)
            code = printer.doprint(condition)
            if code not in seen:
                seen.add(code)
                guards.append((code, printer.doprint(condition.xreplace(readable))))
        return guards

    def follow(self, name: str, tensor: torch.Tensor) -> None:
        """Inputs of ``tensor``'s dtype (device) in the example must keep having the dtype (device)
        the module's ``name`` tensor has at the call: a model converted with ``.to()`` takes
        inputs converted likewise."""
        self.reference_tensor = name
        for expected in self.expected:
            if isinstance(expected, _ExpectedTensor):
                expected.follows_dtype = expected.dtype == tensor.dtype
                expected.follows_device = expected.device == tensor.device

    def leaves(self, args: tuple, kwargs: dict) -> list:
        leaves, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.structure.spec:
            shown = pytree.tree_unflatten(self.names, self.structure.spec)[0]
            got = pytree.tree_map(lambda v: type(v).__name__, (args, kwargs))
            raise ValueError(
                f"fused {self.model}: expected the inputs structured as the example_inputs were, "
                f"positional {shown} and no keywords; got positional {got[0]}"
                + (f" and keywords {got[1]}" if kwargs else ""))
        return leaves

    def check(self, module: nn.Module, inputs) -> None:
        reference = _attribute_at(module, self.reference_tensor) if self.reference_tensor else None
        for name, expected, x in zip(self.names, self.expected, inputs):
            if isinstance(expected, _ExpectedTensor):
                self._check_tensor(name, expected, x, reference)
            elif expected is not None and x != expected:
                raise ValueError(f"fused {self.model}: input {name} is {x!r}; the model was fused for {expected!r} "
                                 f"and computes that value only: fuse it again with {name}={x!r}")
        if self.guards:
            sizes = [inputs[index].shape[dim] for _, index, dim in self.variables]
            if not self._all_guards(*sizes):
                self._explain_guard_failure(inputs, sizes)

    def _check_tensor(self, name: str, expected: _ExpectedTensor, x, reference) -> None:
        prefix = f"fused {self.model}: input {name}"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{prefix} must be a tensor, got {type(x).__name__}")
        if x.dim() != expected.rank:
            raise ValueError(f"{prefix} has {x.dim()} dims (shape {list(x.shape)}), the model expects "
                             f"{expected.rank} ({self._shape(expected)})")
        for dim, size in expected.fixed.items():
            if x.shape[dim] != size:
                if dim == 1 and expected.rank == 4:
                    raise ValueError(f"{prefix} has {x.shape[1]} channels, the model expects {size}")
                remedy = expected.remedies[dim]
                raise ValueError(f"{prefix} has size {x.shape[dim]} in dim {dim} (shape {list(x.shape)}), the "
                                 f"model expects {size} ({self._shape(expected)})" + (f": {remedy}" if remedy else ""))
        if reference is None:
            return
        if expected.follows_dtype and x.dtype != reference.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"{prefix} has dtype {x.dtype}, the model computes in {reference.dtype} (the dtype it "
                            f"was fused in or converted to): convert the input with .to({reference.dtype}), or the "
                            f"model with .to({x.dtype})")
        if expected.follows_device and x.device != reference.device:
            raise ValueError(f"{prefix} is on {x.device}, the model's tensors are on {reference.device}: move the "
                             f"input there")

    @staticmethod
    def _shape(expected: _ExpectedTensor) -> str:
        return "[" + ", ".join(str(expected.fixed.get(d, "N" if d == 0 else "*")) for d in range(expected.rank)) + "]"

    def _explain_guard_failure(self, inputs, sizes) -> None:
        failed = [readable for guard, readable in self._each_guard if not guard(*sizes)]
        variable_inputs = sorted({i for _, i, _ in self.variables})
        shapes = ", ".join(f"{self.names[i]} {list(inputs[i].shape)}" for i in variable_inputs)
        raise ValueError(
            f"fused {self.model}: the input sizes ({shapes}) break what the captured graph relies on: "
            f"{failed[0]}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "") + ". The graph was "
            f"captured from the example's sizes; fuse the model again with an example of these sizes")


def _attribute_at(module: nn.Module, qualified_name: str):
    *path, name = qualified_name.split(".")
    for part in path:
        module = getattr(module, part)
    return getattr(module, name)


def _first_floating_tensor_read(gm: fx.GraphModule):
    """(name, tensor) of the first floating-point parameter or buffer the graph reads, or None:
    what the model computes in."""
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _attribute_at(gm, node.target)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return node.target, value
    return None


def _check_inputs(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """The fused module's forward pre-hook. Not under TorchScript tracing (the legacy ONNX
    exporter), which would record the checks' shape comparisons as constants, with a warning each."""
    if torch.jit.is_tracing():
        return
    expected = module._expected_inputs
    if (kwargs or not expected.plain or len(args) != expected.arity
            or any(type(a) is not torch.Tensor for a in args)):
        args = expected.leaves(args, kwargs)
    expected.check(module, args)


# --- the fused module ------------------------------------------------------------------------------

_SWITCH_FROM = {
    False: "it was fused in eval mode, its BatchNorms folded into the convolutions, and cannot compute train "
           "mode (batch statistics and their running averages): to train, fuse the model in train mode, "
           "so.fuse(model.train(), example_inputs)",
    True: "it was fused in train mode (BatchNorms normalize with batch statistics) and cannot compute eval "
          "mode: for inference, fuse the model in eval mode, so.fuse(model.eval(), example_inputs), which "
          "also folds its BatchNorms",
}

# Attributes GraphModule's constructor and recompile() make from the graph.
_FROM_GRAPH = frozenset({"_graph", "_code", "_lineno_map", "_prologue_start", "_in_spec", "_out_spec"})
# nn.Module's hook registries: the saved ones replace the constructor's empty ones.
_HOOKS = frozenset({"_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
                    "_backward_hooks", "_is_full_backward_hook", "_state_dict_hooks", "_state_dict_pre_hooks",
                    "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"})


class FusedModule(fx.GraphModule):
    """What ``so.fuse`` returns: the rewritten graph, the model's tensors it reads, ``fuse_report``,
    and a forward pre-hook checking each call's inputs against the example's. It computes the
    mode it was fused in (``training``); ``train()`` / ``eval()`` to that mode are no-ops, to the
    other they raise. Copies (``copy.copy``, which shares its tensors, and ``copy.deepcopy``) and
    pickling (``torch.save``) rebuild it from its graph's nodes, with its hooks, attributes and
    the kinds of its tensors (parameter, buffer, non-persistent buffer, plain attribute)."""

    def __init__(self, source: nn.Module, graph: fx.Graph, state: dict):
        super().__init__(source, graph, class_name="FusedModule")
        _keep_attribute_kinds(source, self)
        for name, value in state.items():
            if name not in self.__dict__ or name in _HOOKS:
                self.__dict__[name] = value
        for module in self.modules():
            module.training = self.fuse_report.training
        _read_tensors_through_properties(self)

    def train(self, mode: bool = True) -> FusedModule:
        if mode != self.fuse_report.training:
            raise RuntimeError(f"fused {self._expected_inputs.model}: {_SWITCH_FROM[self.fuse_report.training]}")
        return super().train(mode)

    def __reduce__(self):
        return _load_fused_module, (_saved_state(self), _GraphRecipe.of(self.graph))

    def __copy__(self) -> FusedModule:
        state = {name: copy.copy(value) if name in _HOOKS else value for name, value in _saved_state(self).items()}
        return FusedModule(self, _GraphRecipe.of(self.graph).graph(), state)

    def __deepcopy__(self, memo):
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        state = copy.deepcopy(_saved_state(self), memo)
        FusedModule.__init__(copied, _module_of(state), _GraphRecipe.of(self.graph).graph(), state)
        return copied


def _saved_state(fused: FusedModule) -> dict:
    return {name: value for name, value in fused.__dict__.items() if name not in _FROM_GRAPH}


def _module_of(state: dict) -> nn.Module:
    module = nn.Module()
    module.__dict__.update(state)
    return module


def _load_fused_module(state: dict, recipe: _GraphRecipe) -> FusedModule:
    return FusedModule(_module_of(state), recipe.graph(), state)


def _keep_attribute_kinds(source: nn.Module, fused: nn.Module) -> None:
    """GraphModule's constructor registers every tensor the graph reads that is not a parameter
    as a persistent buffer: the non-persistent buffers and the plain tensor attributes (the
    constants torch.export lifts) of ``source`` get their kind back, and so the state_dict its keys."""
    for node in fused.graph.nodes:
        if node.op != "get_attr":
            continue
        path, _, name = node.target.rpartition(".")
        owner, source_owner = fused.get_submodule(path), source.get_submodule(path)
        if name not in owner._buffers:
            continue
        if name in source_owner._non_persistent_buffers_set:
            owner._non_persistent_buffers_set.add(name)
        elif name not in source_owner._buffers:
            value = owner._buffers.pop(name)
            setattr(owner, name, value)


@dataclass(frozen=True)
class _NodeRef:
    name: str


@dataclass(frozen=True)
class _OpRef:
    """A registered op by name (op overloads do not pickle); resolved when the graph is rebuilt,
    where this library's ops are registered by the import that unpickling does."""

    qualified_name: str
    overload: str

    def resolve(self):
        namespace, name = self.qualified_name.split("::")
        try:
            return getattr(getattr(getattr(torch.ops, namespace), name), self.overload)
        except AttributeError as error:
            raise RuntimeError(
                f"loading a fused module: its graph calls {self.qualified_name}.{self.overload}, which is not "
                f"registered; import the library that defines it before loading") from error


class _Structure:
    """A pytree spec as an object of its structure, leaves 0: what pickles on any torch version
    (a pickled spec is a torch-version-specific object)."""

    def __init__(self, spec):
        self.spec = spec

    def __getstate__(self):
        return {"example": pytree.tree_unflatten([0] * self.spec.num_leaves, self.spec)}

    def __setstate__(self, state):
        self.spec = pytree.tree_flatten(state["example"])[1]


@dataclass
class _GraphRecipe:
    """A graph as its nodes' ops, names, targets and arguments, and its input and output
    structure: what rebuilds it."""

    nodes: list
    structure: tuple | None  # forward's argument names and the input and output specs

    @classmethod
    def of(cls, graph: fx.Graph) -> _GraphRecipe:
        nodes = []
        for node in graph.nodes:
            target = node.target
            if isinstance(target, torch._ops.OpOverload):
                target = _OpRef(target._schema.name, target._overloadname)
            args, kwargs = fx.node.map_arg((tuple(node.args), dict(node.kwargs)), lambda n: _NodeRef(n.name))
            nodes.append((node.op, node.name, target, _plain(args), _plain(kwargs)))
        info = getattr(graph._codegen, "pytree_info", None)
        structure = None if info is None else (
            list(info.orig_args), _Structure(info.in_spec), _Structure(info.out_spec))
        return cls(nodes, structure)

    def graph(self) -> fx.Graph:
        graph = fx.Graph()
        made = {}
        for op, name, target, args, kwargs in self.nodes:
            if isinstance(target, _OpRef):
                target = target.resolve()
            args, kwargs = fx.node.map_aggregate(
                (args, kwargs), lambda a: made[a.name] if isinstance(a, _NodeRef) else a)
            made[name] = graph.create_node(op, target, tuple(args), dict(kwargs), name=name)
        if self.structure is not None:
            from torch.fx.graph import _PyTreeCodeGen, _PyTreeInfo

            names, inputs, outputs = self.structure
            graph._codegen = _PyTreeCodeGen(_PyTreeInfo(names, inputs.spec, outputs.spec))
        return graph


def _plain(value):
    """fx's immutable containers as plain ones, which pickle without fx."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        items = [_plain(v) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _val(node):
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dim() == b.dim() and all(str(x) == str(y) for x, y in zip(a.shape, b.shape))


def _only_user(node: fx.Node):
    return next(iter(node.users)) if len(node.users) == 1 else None


def _is_call(node, targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _rank(node) -> int | None:
    value = _val(node)
    return value.dim() if value is not None else None


def _swaps_dims_1_and_2_of_5(node: fx.Node) -> bool:
    """Whether ``node`` transposes or permutes a 5-D tensor's dims 1 and 2 and nothing else."""
    if _rank(node.args[0]) != 5:
        return False
    if node.target is aten.transpose.int:
        return {node.args[1] % 5, node.args[2] % 5} == {1, 2}
    if node.target is aten.permute.default:
        return [d % 5 for d in node.args[1]] == [0, 2, 1, 3, 4]
    return False


def _flattens_dims_1_and_2_of_5(node: fx.Node) -> bool:
    if not _is_call(node, {aten.flatten.using_ints}) or _rank(node.args[0]) != 5:
        return False
    a = _call_arguments(node)
    return (a["start_dim"] % 5, a["end_dim"] % 5) == (1, 2)


def _match_shuffle(node: fx.Node):
    """The rewrite to ``so.channel_shuffle`` if ``node`` ends a channel shuffle."""
    if _is_call(node, _STOCK_SHUFFLES):
        return _Rewrite(channel_shuffle, (node.args[0], node.args[1]), node, [node], SHUFFLE_OP)
    out = _val(node)
    if not (_is_call(node, _VIEWS) or _flattens_dims_1_and_2_of_5(node)) or out is None or out.dim() != 4:
        return None
    chain, current = [node], node.args[0]
    while _is_call(current, _COPIES) and len(current.users) == 1:
        if current.target is aten.clone.default and current.kwargs.get("memory_format") not in (
            None, torch.contiguous_format,
        ):
            return None
        chain.append(current)
        current = current.args[0]
    if not (_is_call(current, {aten.transpose.int, aten.permute.default}) and len(current.users) == 1):
        return None
    if not _swaps_dims_1_and_2_of_5(current):
        return None
    chain.append(current)
    split = current.args[0]
    split_val = _val(split)
    if not (_is_call(split, _VIEWS) and len(split.users) == 1 and split_val is not None and split_val.dim() == 5):
        return None
    chain.append(split)
    x = split.args[0]
    x_val = _val(x)
    if x_val is None or not _same_shape(x_val, out):
        return None
    # The channel counts must be static: a comparison with a symbolic size (a batch dim moved
    # into dim 1 by a transpose) would hold for the example's size only.
    groups, per_group, channels = split_val.shape[1], split_val.shape[2], out.shape[1]
    if not all(isinstance(n, int) for n in (groups, per_group, channels)) or groups * per_group != channels:
        return None
    if [str(s) for s in split_val.shape[3:]] != [str(s) for s in out.shape[2:]] or str(split_val.shape[0]) != str(
        out.shape[0]
    ):
        return None
    return _Rewrite(channel_shuffle, (x, groups), node, chain, SHUFFLE_IDIOM)


def _erase_unused(graph: fx.Graph, nodes) -> None:
    for node in nodes:
        if not node.users:
            graph.erase_node(node)


@dataclass
class _Rewrite:
    """A matched pattern: the uses of ``result`` go to ``function(*args, **kwargs)``, inserted
    before the matched node; then the nodes of ``replaced`` left unused are erased, in that order."""

    function: Callable
    args: tuple
    result: fx.Node
    replaced: list
    pattern: str
    kwargs: dict = field(default_factory=dict)


def _rewrite_matches(graph: fx.Graph, report: FuseReport, match: Callable[[fx.Node], _Rewrite | None]) -> None:
    """Applies ``match``'s rewrite wherever it matches and computes what it replaces, counting
    each under its pattern."""
    for node in list(graph.nodes):
        if node.graph is not graph:  # erased by an earlier rewrite
            continue
        rewrite = match(node)
        if rewrite is None or not _computes_like(rewrite.function, rewrite.args, rewrite.kwargs, rewrite.result):
            continue
        with graph.inserting_before(node):
            new = graph.call_function(rewrite.function, rewrite.args, rewrite.kwargs)
        new.meta["val"] = rewrite.result.meta.get("val")
        rewrite.result.replace_all_uses_with(new)
        _erase_unused(graph, rewrite.replaced)
        report.counts[rewrite.pattern] += 1


def _fake_call(function: Callable, args: tuple, kwargs: dict):
    """``function(*args, **kwargs)`` on the graph's example values (fake tensors, symbolic batch
    size): a node stands for its value, a real tensor is made fake. None where it cannot run on
    them."""
    values = fx.node.map_arg((args, kwargs), lambda n: n.meta.get("val"))
    tensors = [v for v in pytree.tree_leaves(values) if isinstance(v, torch.Tensor)]
    fake_mode = torch._guards.detect_fake_mode(tensors)
    if fake_mode is None:
        return None
    values = pytree.tree_map_only(
        torch.Tensor, lambda t: t if isinstance(t, FakeTensor) else fake_mode.from_tensor(t, static_shapes=True),
        values)
    # The module's guards were fixed at capture: checks the fused op makes here on symbolic
    # sizes must not add any.
    suppress = fake_mode.shape_env.suppress_guards() if fake_mode.shape_env is not None else contextlib.nullcontext()
    try:
        with fake_mode, suppress:
            return function(*values[0], **values[1])
    except Exception:  # the fused op refuses these arguments: the rewrite must not happen
        return None


def _same_layout(a, b) -> bool:
    """Same shape, dtype, device and strides (those of size-1 dims aside, which address nothing):
    what a later view, stride-dependent op or dtype-dependent op sees."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    if a.dtype != b.dtype or a.device != b.device or not _same_shape(a, b):
        return False
    return all(str(x) == str(y) for x, y, size in zip(a.stride(), b.stride(), a.shape) if str(size) != "1")


def _computes_like(function: Callable, args: tuple, kwargs: dict, replaced: fx.Node) -> bool:
    """Whether the call that is to replace ``replaced`` runs on its arguments' example values and
    gives a tensor laid out as ``replaced``'s: a pattern's shape, dtype and memory-format
    assumptions checked on the op itself."""
    return _same_layout(_fake_call(function, args, kwargs), _val(replaced))


def _is_so_shuffle(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is channel_shuffle


def _call_arguments(node: fx.Node) -> dict:
    schema = node.target._schema
    values = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    values.update(zip((a.name for a in schema.arguments), node.args))
    values.update(node.kwargs)
    return values


def _conv2d(node: fx.Node):
    """(arguments, input value, weight value) if ``node`` is a non-transposed 2-D convolution."""
    if not _is_call(node, _CONVS):
        return None
    a = _call_arguments(node)
    weight, x = _val(a["weight"]), _val(a["input"])
    if a.get("transposed", False) or weight is None or x is None or x.dim() != 4 or weight.dim() != 4:
        return None
    return a, x, weight


def _pointwise_conv(node: fx.Node):
    """(x, weight, bias, groups) if ``node`` is a 1x1, stride-1, unpadded 2-D convolution."""
    conv = _conv2d(node)
    if conv is None:
        return None
    a, _, weight = conv
    if tuple(weight.shape[2:]) != (1, 1) or any(s != 1 for s in a["stride"]) or any(p != 0 for p in a["padding"]):
        return None
    return a["input"], a["weight"], a["bias"], a["groups"]


def _is_attribute(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr"


def _eval_batch_norm(node):
    """(output node, nodes to drop, weight, bias, mean, var, eps) of an eval-mode BatchNorm whose
    parameters are attributes of the module, else None."""
    if _is_call(node, {aten.batch_norm.default}):
        a = _call_arguments(node)
        if a["training"]:
            return None
        out, drop = node, [node]
    elif _is_call(node, {aten._native_batch_norm_legit_no_training.default}):
        a = _call_arguments(node)
        if not all(_is_call(u, {operator.getitem}) for u in node.users):
            return None
        used = [u for u in node.users if u.users]
        if len(used) != 1 or used[0].args[1] != 0:
            return None
        out, drop = used[0], [*node.users, node]
    else:
        return None
    params = [a["weight"], a["bias"], a["running_mean"], a["running_var"]]
    if not all(p is None or _is_attribute(p) for p in params):
        return None
    if a["running_mean"] is None or a["running_var"] is None:
        return None
    return (out, drop, *params, a["eps"])


def _attribute(gm: fx.GraphModule, node):
    if node is None:
        return None
    module_path, _, name = node.target.rpartition(".")
    return getattr(gm.get_submodule(module_path), name)


def _fold(gm, weight_node, bias_node, bn):
    _, _, gamma, beta, mean, var, eps = bn
    weight = _attribute(gm, weight_node)
    dtype = weight.dtype
    with torch.no_grad():
        scale = _attribute(gm, var).double().add(eps).rsqrt()
        if gamma is not None:
            scale = scale * _attribute(gm, gamma).double()
        bias = _attribute(gm, bias_node)
        bias = bias.double() if bias is not None else torch.zeros_like(scale)
        bias = (bias - _attribute(gm, mean).double()) * scale
        if beta is not None:
            bias = bias + _attribute(gm, beta).double()
        folded = weight.double() * scale.view(-1, 1, 1, 1)
    return nn.Parameter(folded.to(dtype), weight.requires_grad), nn.Parameter(bias.to(dtype), weight.requires_grad)


def _depthwise_conv(node: fx.Node):
    """(x, weight, bias, stride) if ``node`` is a 3x3 depthwise convolution with padding 1 and stride 1 or 2."""
    conv = _conv2d(node)
    if conv is None:
        return None
    a, x, weight = conv
    if tuple(weight.shape[1:]) != (1, 3, 3):
        return None
    channels = weight.shape[0]
    if not (isinstance(channels, int) and a["groups"] == channels and isinstance(x.shape[1], int)
            and x.shape[1] == channels):
        return None
    stride = list(a["stride"])
    if any(p != 1 for p in a["padding"]) or any(d != 1 for d in a["dilation"]) or len(set(stride)) != 1:
        return None
    if stride[0] not in (1, 2):
        return None
    return a["input"], a["weight"], a["bias"], stride[0]


def _other_conv(node: fx.Node):
    """(x, weight, bias, conv2d arguments) of any other non-transposed 2-D convolution."""
    conv = _conv2d(node)
    if conv is None:
        return None
    a = conv[0]
    return a["input"], a["weight"], a["bias"], (a["stride"], a["padding"], a["dilation"], a["groups"])


def _fuse_convs(gm: fx.GraphModule, report: FuseReport) -> None:
    graph = gm.graph
    attributes_before = {n for n in graph.nodes if n.op == "get_attr" and n.users}
    fused = 0
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue
        pointwise = _pointwise_conv(node)
        if pointwise is not None and not _runs_on(pointwise_group_conv, _val(pointwise[0])):
            pointwise = None
        # The depthwise op only speeds up inference: its backward is stock.
        depthwise = None if pointwise is not None or report.training else _depthwise_conv(node)
        if depthwise is not None and not _runs_on(depthwise_conv3x3, _val(depthwise[0])):
            depthwise = None
        other = None if pointwise is not None or depthwise is not None else _other_conv(node)
        if pointwise is None and depthwise is None and other is None:
            continue
        x, weight, bias = (pointwise or depthwise or other)[:3]
        drop, input_shuffle = [node], None
        if pointwise is not None and _is_so_shuffle(x) and len(x.users) == 1:
            x, input_shuffle = x.args[0], x.args[1]
            drop.append(node.args[0])

        tail, bn, relu, output_shuffle = node, None, False, None
        foldable = not report.training and all(t is None or _is_attribute(t) for t in (weight, bias))
        bn_match = _eval_batch_norm(_only_user(tail)) if foldable else None
        if bn_match is not None:
            bn, tail = bn_match, bn_match[0]
        if other is None and _is_call(_only_user(tail), _RELUS):
            relu, tail = True, _only_user(tail)
        if pointwise is not None and _is_so_shuffle(_only_user(tail)):
            output_shuffle, tail = _only_user(tail).args[1], _only_user(tail)
        shuffled = input_shuffle is not None or output_shuffle is not None
        if pointwise is not None and not (shuffled or bn is not None or relu):
            continue
        if other is not None and bn is None:
            continue

        if bn is not None:
            folded_weight, folded_bias = _fold(gm, weight, bias, bn)
            parameters = folded_weight, folded_bias  # not in the graph yet: their values stand for them
        else:
            parameters = weight, bias
        if pointwise is not None:
            call = pointwise_group_conv, (x, *parameters, pointwise[3]), {
                "input_shuffle": input_shuffle, "output_shuffle": output_shuffle, "relu": relu}
        elif depthwise is not None:
            call = depthwise_conv3x3, (x, *parameters, depthwise[3]), {"relu": relu}
        else:
            call = aten.conv2d.default, (x, *parameters, *other[3]), {}
        if not _computes_like(*call, tail):
            continue
        if bn is not None:
            names = f"fused_conv{fused}_weight", f"fused_conv{fused}_bias"
            gm.register_parameter(names[0], folded_weight)
            gm.register_parameter(names[1], folded_bias)
            with graph.inserting_before(tail):
                weight, bias = graph.get_attr(names[0]), graph.get_attr(names[1])
            weight.meta["val"], bias.meta["val"] = folded_weight, folded_bias  # read by later rewrites
            call = call[0], (x, weight, bias, *call[1][3:]), call[2]
        with graph.inserting_before(tail):
            new = graph.call_function(*call)
        new.meta["val"] = tail.meta.get("val")
        chain, current = [], tail
        while current is not node:  # tail back to the conv, through the ReLU and the BatchNorm
            if bn is not None and current is bn[0]:
                chain += bn[1]
                current = bn[1][-1].args[0]
            else:
                chain.append(current)
                current = current.args[0]
        tail.replace_all_uses_with(new)
        _erase_unused(graph, chain + drop)
        fused += 1
        if depthwise is not None:
            report.counts[DEPTHWISE] += 1
        elif other is not None:
            report.counts[OTHER_CONV] += 1
        elif not shuffled:
            report.counts[EPILOGUE_ONLY] += 1
        else:
            report.counts[INPUT_SHUFFLE] += input_shuffle is not None
            report.counts[OUTPUT_SHUFFLE] += output_shuffle is not None
            report.counts[BATCH_NORM] += bn is not None
            report.counts[RELU] += relu
    _delete_unused_attributes(gm, attributes_before)


def _delete_unused_attributes(gm: fx.GraphModule, attributes_before) -> None:
    """Drops the conv and BatchNorm tensors that only the folded convs used."""
    still_used = {n.target for n in gm.graph.nodes if n.op == "get_attr" and n.users}
    for node in attributes_before:
        if node.users:
            continue
        gm.graph.erase_node(node)
        if node.target not in still_used:
            module_path, _, name = node.target.rpartition(".")
            delattr(gm.get_submodule(module_path), name)


def _is_pure_op(node: fx.Node) -> bool:
    target = node.target
    return (node.op == "call_function" and isinstance(target, torch._ops.OpOverload)
            and not target._schema.is_mutable and torch.Tag.nondeterministic_seeded not in target.tags)


def _fold_parameter_computations(gm: fx.GraphModule, report: FuseReport) -> None:
    """Replaces each value computed from attributes (parameters, buffers) alone, where the rest of
    the graph uses it, by a buffer holding it, computed now."""
    graph = gm.graph
    attributes_before = {n for n in graph.nodes if n.op == "get_attr" and n.users}
    constant: dict[fx.Node, bool] = {}  # node -> whether its value involves more than views
    for node in graph.nodes:
        if node.op == "get_attr":
            constant[node] = False
        elif _is_pure_op(node) and _val(node) is not None:
            inputs = node.all_input_nodes
            if inputs and all(i in constant for i in inputs):
                constant[node] = not node.target.is_view or any(constant[i] for i in inputs)
    frontier = [n for n, computed in constant.items()
                if computed and any(u not in constant for u in n.users)]
    values: dict[fx.Node, torch.Tensor] = {}

    def value(node: fx.Node):
        if node not in values:
            if node.op == "get_attr":
                values[node] = _attribute(gm, node)
            else:
                args, kwargs = fx.node.map_arg((node.args, node.kwargs), value)
                values[node] = node.target(*args, **kwargs)
        return values[node]

    for index, node in enumerate(frontier):
        with torch.no_grad():
            folded = value(node).clone()
        name = f"parameter_computation{index}"
        gm.register_buffer(name, folded)
        with graph.inserting_before(node):
            replacement = graph.get_attr(name)
        replacement.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(replacement, delete_user_cb=lambda user: user not in constant)
        report.counts[PARAMETER_COMPUTATION] += 1
    for node in reversed(list(constant)):
        if node.op == "call_function" and not node.users:
            graph.erase_node(node)
    _delete_unused_attributes(gm, attributes_before)


# A one-element problem for each fused function, to ask its kernel whether it runs a dtype.
_PROBES = {
    pointwise_group_conv: lambda t: pointwise_group_conv(t, t),
    depthwise_conv3x3: lambda t: depthwise_conv3x3(t, t.expand(1, 1, 3, 3)),
    max_pool3x3: max_pool3x3,
    avg_pool3x3: avg_pool3x3,
    stem_conv3x3_maxpool: lambda t: stem_conv3x3_maxpool(t, t.expand(1, 1, 3, 3)),
}


@functools.cache
def _kernel_runs(function: Callable, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``function`` runs tensors of ``dtype`` on ``device``: a rewritten op must run
    wherever the original ran. Asked of the kernel itself, so no list of dtypes is kept here."""
    try:
        with torch.no_grad():
            _PROBES[function](torch.zeros(1, 1, 1, 1, dtype=dtype, device=device))
    except Exception:  # an unsupported dtype, no kernel or no backend for the device: all mean "no"
        return False
    return True


def _runs_on(function: Callable, x: torch.Tensor) -> bool:
    return _kernel_runs(function, x.device, x.dtype)


def _pair(value) -> tuple:
    """An ``int[2]`` argument as a tuple of two (an int or a one-element list stands for both)."""
    values = [value] if isinstance(value, int) else list(value)
    return tuple(values * 2) if len(values) == 1 else tuple(values)


def _pool3x3(node: fx.Node):
    """The rewrite to ``so.max_pool3x3`` / ``so.avg_pool3x3`` if ``node`` is a 3x3 pooling with
    padding 1 and stride 1 or 2 that pool3x3 computes."""
    if not _is_call(node, _MAX_POOLS | {aten.avg_pool2d.default}):
        return None
    a = _call_arguments(node)
    x = _val(a["self"])
    rewrite_to = avg_pool3x3 if node.target is aten.avg_pool2d.default else max_pool3x3
    if x is None or x.dim() != 4 or not _runs_on(rewrite_to, x):
        return None
    kernel = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) or kernel  # an empty stride is the kernel size
    if kernel != (3, 3) or stride not in ((1, 1), (2, 2)) or _pair(a["padding"]) != (1, 1) or a["ceil_mode"]:
        return None
    if node.target is aten.avg_pool2d.default:
        if not a["count_include_pad"] or a["divisor_override"] is not None:
            return None
        return _Rewrite(avg_pool3x3, (a["self"], stride[0]), node, [node], AVG_POOL)
    if _pair(a["dilation"]) != (1, 1):
        return None
    if node.target is aten.max_pool2d.default:
        return _Rewrite(max_pool3x3, (a["self"], stride[0]), node, [node], MAX_POOL)
    # max_pool2d_with_indices: (values, indices), taken apart by getitem
    if not all(_is_call(u, {operator.getitem}) for u in node.users):
        return None
    values = [u for u in node.users if u.args[1] == 0]
    if len(values) != 1 or any(u.args[1] == 1 and u.users for u in node.users):
        return None
    return _Rewrite(max_pool3x3, (a["self"], stride[0]), values[0], [*node.users, node], MAX_POOL)


def _stem(node: fx.Node):
    """The rewrite to ``stem_conv3x3_maxpool`` if ``node`` is a stride-2 ``max_pool3x3`` of the ReLU
    of a 3x3 convolution with stride 2 and padding 1 (no groups, no dilation), each used only by
    the next."""
    if not (_is_call(node, {max_pool3x3}) and node.args[1] == 2):
        return None
    relu = node.args[0]
    if not (_is_call(relu, _RELUS) and len(relu.users) == 1 and len(relu.args[0].users) == 1):
        return None
    conv = _conv2d(relu.args[0])
    if conv is None:
        return None
    a, x, weight = conv
    if tuple(weight.shape[2:]) != (3, 3) or a["groups"] != 1 or not _runs_on(stem_conv3x3_maxpool, x):
        return None
    if any(_pair(a[name]) != value for name, value in (("stride", (2, 2)), ("padding", (1, 1)),
                                                       ("dilation", (1, 1)))):
        return None
    return _Rewrite(stem_conv3x3_maxpool, (a["input"], a["weight"], a["bias"]), node, [node, relu, relu.args[0]],
                    STEM)


def add_relu(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``F.relu(a + b)``, the ReLU in place on the sum's own buffer."""
    return torch.add(a, b).relu_()


def _conv_without_epilogue(node) -> dict | None:
    """The arguments of ``pointwise_group_conv`` for ``node`` if it computes a 1x1 conv (stock, the
    fused function or the registered op) with no ReLU or residual yet, and nothing else uses its
    output."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or len(node.users) != 1:
        return None
    if node.target is pointwise_group_conv:
        a = dict(zip(("x", "weight", "bias", "groups"), node.args)) | node.kwargs
    elif node.target is NATIVE.pointwise_group_conv:
        a = _call_arguments(node)
    elif (stock := _pointwise_conv(node)) is not None and _runs_on(pointwise_group_conv, _val(stock[0])):
        a = dict(zip(("x", "weight", "bias", "groups"), stock))
    else:
        return None
    if a.get("relu") or a.get("residual") is not None:
        return None
    return a


def _add_relu(node: fx.Node):
    """If ``node`` is a ReLU of ``a + b`` over two tensors of the same shape and dtype, the sum used
    by nothing else: the rewrite to a ``pointwise_group_conv`` computing ``a`` that adds ``b`` and
    the ReLU in its epilogue, else to ``add_relu``."""
    if not _is_call(node, _RELUS):
        return None
    add = node.args[0]
    if not (_is_call(add, {aten.add.Tensor}) and len(add.users) == 1):
        return None
    a = _call_arguments(add)
    x, y = _val(a["self"]), _val(a["other"])
    if a["alpha"] != 1 or x is None or y is None or not _same_shape(x, y) or x.dtype != y.dtype:
        return None
    for conv, residual in ((a["self"], a["other"]), (a["other"], a["self"])):
        c = _conv_without_epilogue(conv)
        if c is not None:
            kwargs = {"input_shuffle": c.get("input_shuffle"), "output_shuffle": c.get("output_shuffle"),
                      "relu": True, "residual": residual}
            return _Rewrite(pointwise_group_conv, (c["x"], c["weight"], c["bias"], c["groups"]), node,
                            [node, add, conv], RESIDUAL_ADD_RELU, kwargs)
    return _Rewrite(add_relu, (a["self"], a["other"]), node, [node, add], ADD_RELU)


# Up to this many rows, a CPU linear layer runs faster as pointwise_group_conv
# on 1x1 images, which splits the output features over the threads. At
# ShuffleNet's classifier (960 -> 1000, weights not in cache) it took 0.4x
# ATen's time at batch 1-3 and 0.6x at batch 4, and about as long at batch 6;
# beyond that ATen's GEMM, one pass over the weights for all rows, wins.
SMALL_BATCH = 4


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for a 2-D ``x``; up to ``SMALL_BATCH`` rows as ``pointwise_group_conv``
    where ``bias`` is None or one value per output feature (``F.linear`` broadcasts others)."""
    # Under torch.compile a branch on the batch size would compile one graph per side of it;
    # a TorchScript trace would keep the example's side for every batch.
    if (torch.compiler.is_compiling() or torch.jit.is_tracing() or x.shape[0] > SMALL_BATCH
            or (bias is not None and bias.shape != weight.shape[:1])):
        return torch.nn.functional.linear(x, weight, bias)
    images = pointwise_group_conv(x[:, :, None, None], weight[:, :, None, None], bias)
    return images.view(x.shape[0], weight.shape[0])


def _linear(node: fx.Node):
    """The rewrite to ``small_batch_linear`` if ``node`` is a linear layer on a 2-D CPU input of a
    dtype the fused kernel runs."""
    if not _is_call(node, {aten.linear.default}):
        return None
    a = _call_arguments(node)
    x, weight = _val(a["input"]), _val(a["weight"])
    if x is None or weight is None or x.dim() != 2 or weight.dim() != 2 or x.device.type != "cpu":
        return None
    if not _runs_on(pointwise_group_conv, x) or weight.dtype != x.dtype or weight.device != x.device:
        return None
    # F.linear broadcasts any bias to the output ([], [1], [1, out], [rows, out], ...); the
    # fused conv takes one value per output feature: other shapes stay with F.linear.
    bias = _val(a["bias"]) if a["bias"] is not None else None
    if a["bias"] is not None and not (
        bias is not None and bias.dim() == 1 and isinstance(bias.shape[0], int) and isinstance(weight.shape[0], int)
        and bias.shape[0] == weight.shape[0] and bias.dtype == x.dtype and bias.device == x.device
    ):
        return None
    return _Rewrite(small_batch_linear, (a["input"], a["weight"], a["bias"]), node, [node], SMALL_BATCH_LINEAR)
