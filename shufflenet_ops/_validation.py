"""Argument checks for every Python-side path (the fake kernels, the Triton and
reference backends). The compiled backends share the C++ twin of this module,
csrc/validation.cpp, so ops called through torch.ops are checked too. The
public functions check only the Python types before handing the arguments to a
backend, which checks the rest: the compiled backends would otherwise pay for
the same checks twice on every call."""

import torch


def shuffle_groups(value, name: str, op: str) -> int:
    """A shuffle argument as the ops take it: None means 1, i.e. no shuffle."""
    if value is None:
        return 1
    return _integer(value, name, op)


def _integer(value, name: str, op: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{op}: expected {name} to be an int, got {type(value).__name__}")
    return value


def _tensor(t, name: str, op: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
    return t


def _activation(t, name: str, op: str) -> None:
    _tensor(t, name, op)
    if t.dim() != 4:
        raise ValueError(f"{op}: expected {name} to be a 4-D tensor (N, C, H, W), got a {t.dim()}-D tensor")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: expected {name} to be a floating-point tensor, got {t.dtype}")


def _matches(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str, op: str) -> None:
    _tensor(t, name, op)
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: expected {name} to have the same dtype as {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{op}: expected {name} to be on the same device as {ref_name} ({ref.device}), got {t.device}")


def _divides(groups, name: str, what: str, channels: int, op: str) -> None:
    groups = _integer(groups, name, op)
    if groups <= 0:
        raise ValueError(f"{op}: expected {name} to be a positive integer, got {groups}")
    if channels % groups != 0:
        raise ValueError(f"{op}: expected {name} ({groups}) to divide the {what} ({channels})")


def _weight(weight: torch.Tensor, op: str) -> None:
    pointwise_4d = weight.dim() == 4 and weight.shape[2] == 1 and weight.shape[3] == 1
    if not (pointwise_4d or weight.dim() == 2):
        raise ValueError(
            f"{op}: expected weight of shape [C_out, C_in / groups, 1, 1] or [C_out, C_in / groups], "
            f"got {list(weight.shape)}"
        )


def _out_channels(name: str, out_channels: int, groups: int, op: str) -> None:
    """A convolution needs at least one output channel per group (stock conv2d rejects C_out = 0
    as well); its input channels may be none, an empty sum."""
    if out_channels <= 0:
        raise ValueError(
            f"{op}: expected {name} (C_out = {out_channels}) to be a positive multiple of groups ({groups})")


def _shuffles(op: str, in_channels, out_channels, groups, input_shuffle, output_shuffle) -> None:
    _divides(groups, "groups", "input channels", in_channels, op)
    _divides(groups, "groups", "output channels", out_channels, op)
    _divides(input_shuffle, "input_shuffle", "input channels", in_channels, op)
    _divides(output_shuffle, "output_shuffle", "output channels", out_channels, op)


def check_argument_types(op: str, *, tensors: dict, optional_tensors: dict | None = None,
                         integers: dict | None = None, strings: dict | None = None) -> None:
    """What a public function checks itself before a backend takes over: the
    Python types, which a registered op's schema would otherwise reject with a
    generic message (and a bool would pass as an int)."""
    for name, t in tensors.items():
        _tensor(t, name, op)
    for name, t in (optional_tensors or {}).items():
        if t is not None:
            _tensor(t, name, op)
    for name, value in (integers or {}).items():
        _integer(value, name, op)
    for name, value in (strings or {}).items():
        if not isinstance(value, str):
            raise TypeError(f"{op}: expected {name} to be a str, got {type(value).__name__}")


def _bias(bias, x: torch.Tensor, channels: int, shape: str, op: str) -> None:
    """bias, when given: like x, of shape [channels]; ``shape`` names that dimension."""
    if bias is None:
        return
    _matches(bias, "bias", x, "x", op)
    if bias.dim() != 1 or bias.shape[0] != channels:
        raise ValueError(f"{op}: expected bias of shape {shape} = [{channels}], got {list(bias.shape)}")


def check_channel_shuffle(x, groups) -> None:
    op = "channel_shuffle"
    _tensor(x, "x", op)
    if x.dim() < 3:
        raise ValueError(f"{op}: expected x to have at least 3 dimensions (N, C, *), got {x.dim()}")
    _divides(groups, "groups", "channels of x", x.shape[1], op)


def check_pointwise_group_conv(x, weight, bias, groups, input_shuffle, output_shuffle, residual=None) -> None:
    op = "pointwise_group_conv"
    _activation(x, "x", op)
    _matches(weight, "weight", x, "x", op)
    _weight(weight, op)
    _shuffles(op, x.shape[1], weight.shape[0], groups, input_shuffle, output_shuffle)
    _out_channels("weight.size(0)", weight.shape[0], groups, op)
    if weight.shape[1] * groups != x.shape[1]:
        raise ValueError(
            f"{op}: expected weight.size(1) ({weight.shape[1]}) to equal C_in / groups ({x.shape[1]} / {groups})"
        )
    _bias(bias, x, weight.shape[0], "[C_out]", op)
    if residual is not None:
        _matches(residual, "residual", x, "x", op)
        expected = [x.shape[0], weight.shape[0], *x.shape[2:]]
        if list(residual.shape) != expected:
            raise ValueError(f"{op}: expected residual of the output's shape [N, C_out, H, W] = {expected}, "
                             f"got {list(residual.shape)}")


def check_grad_input(grad_out, weight, groups, input_shuffle, output_shuffle) -> None:
    op = "pointwise_group_conv_grad_input"
    _activation(grad_out, "grad_out", op)
    _matches(weight, "weight", grad_out, "grad_out", op)
    _weight(weight, op)
    groups = _integer(groups, "groups", op)
    if groups <= 0:
        raise ValueError(f"{op}: expected groups to be a positive integer, got {groups}")
    _shuffles(op, weight.shape[1] * groups, weight.shape[0], groups, input_shuffle, output_shuffle)
    _out_channels("weight.size(0)", weight.shape[0], groups, op)
    if grad_out.shape[1] != weight.shape[0]:
        raise ValueError(
            f"{op}: expected grad_out.size(1) ({grad_out.shape[1]}) to equal weight.size(0) ({weight.shape[0]})"
        )


def check_grad_weight(grad_out, x, groups, input_shuffle, output_shuffle) -> None:
    op = "pointwise_group_conv_grad_weight"
    _activation(grad_out, "grad_out", op)
    _activation(x, "x", op)
    _matches(x, "x", grad_out, "grad_out", op)
    _shuffles(op, x.shape[1], grad_out.shape[1], groups, input_shuffle, output_shuffle)
    _out_channels("grad_out.size(1)", grad_out.shape[1], groups, op)
    if (grad_out.shape[0], grad_out.shape[2], grad_out.shape[3]) != (x.shape[0], x.shape[2], x.shape[3]):
        raise ValueError(
            f"{op}: expected grad_out ({list(grad_out.shape)}) and x ({list(x.shape)}) to agree in N, H and W"
        )


def check_grad_bias(grad_out, output_shuffle) -> None:
    op = "pointwise_group_conv_grad_bias"
    _activation(grad_out, "grad_out", op)
    _divides(output_shuffle, "output_shuffle", "output channels", grad_out.shape[1], op)


def check_depthwise_conv3x3(x, weight, bias, stride) -> None:
    op = "depthwise_conv3x3"
    _activation(x, "x", op)
    _matches(weight, "weight", x, "x", op)
    channels = x.shape[1]
    if tuple(weight.shape) != (channels, 1, 3, 3):
        raise ValueError(f"{op}: expected weight of shape [C, 1, 3, 3] = [{channels}, 1, 3, 3], got {list(weight.shape)}")
    stride = _integer(stride, "stride", op)
    if stride not in (1, 2):
        raise ValueError(f"{op}: expected stride to be 1 or 2, got {stride}")
    _bias(bias, x, channels, "[C]", op)


def check_pool3x3(x, stride) -> None:
    op = "pool3x3"
    _activation(x, "x", op)
    stride = _integer(stride, "stride", op)
    if stride not in (1, 2):
        raise ValueError(f"{op}: expected stride to be 1 or 2, got {stride}")


def check_stem_conv3x3_maxpool(x, weight, bias) -> None:
    op = "stem_conv3x3_maxpool"
    _activation(x, "x", op)
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"{op}: expected x to have a positive height and width, got {list(x.shape)}")
    _matches(weight, "weight", x, "x", op)
    if weight.dim() != 4 or weight.shape[1] != x.shape[1] or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"{op}: expected weight of shape [C_out, C_in, 3, 3] with C_in = {x.shape[1]}, "
                         f"got {list(weight.shape)}")
    _bias(bias, x, weight.shape[0], "[C_out]", op)


def check_dtype_supported(t: torch.Tensor, name: str, op: str, supported) -> None:
    """Each backend states the dtypes its kernels implement (the C++ twin: check_dtype_supported)."""
    if t.dtype not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise TypeError(f"{op}: this backend supports dtypes {{{names}}}, got {name} of {t.dtype}; "
                        "convert the tensors to one of these dtypes")


def check_shufflenet_config(model: str, groups, width_mult, num_classes=None, *, allowed_groups: tuple,
                            width_range: tuple) -> None:
    """A ShuffleNet's construction arguments: ``groups`` one of ``allowed_groups``, ``width_mult``
    within ``width_range`` (both ends included), ``num_classes`` (where given) positive."""
    groups = _integer(groups, "groups", model)
    if groups not in allowed_groups:
        raise ValueError(f"{model}: expected groups in {{{', '.join(map(str, allowed_groups))}}}, got {groups}")
    if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)):
        raise TypeError(f"{model}: expected width_mult to be a number, got {type(width_mult).__name__}")
    low, high = width_range
    if not low <= width_mult <= high:  # NaN too
        raise ValueError(f"{model}: expected width_mult from {low} to {high}, got {width_mult}")
    if num_classes is not None and _integer(num_classes, "num_classes", model) <= 0:
        raise ValueError(f"{model}: expected num_classes to be a positive integer, got {num_classes}")


def check_model_input(x, model: str, stem_weight: torch.Tensor, *, training: bool, downsampling: int) -> None:
    """A network's input against what the network expects: a 4-D batch of images with the
    channels, dtype and device of its stem convolution ``stem_weight``, each image at least one
    pixel high and wide. In training, the last stage (``downsampling`` times smaller, rounded up)
    must keep more than one value per channel for its BatchNorms' batch statistics. One check at
    the network's entry, so that a mistake is told in the user's terms, not those of an op deep
    inside. Not under TorchScript tracing (the legacy ONNX exporter), which would record the
    shape comparisons as constants, with a warning each."""
    if torch.jit.is_tracing():
        return
    channels = stem_weight.shape[1]
    expected = f"[N, {channels}, H, W]"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model}: expected the input to be a torch.Tensor {expected}, got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (one image? add the batch dimension: x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"{model}: expected a 4-D input {expected}, got a {x.dim()}-D tensor of shape "
                         f"{list(x.shape)}{hint}")
    if x.shape[1] != channels:
        hint = " (channels last? x.permute(0, 3, 1, 2))" if x.shape[3] == channels else ""
        raise ValueError(f"{model}: expected an input of {channels} channels {expected}, got {list(x.shape)}{hint}")
    if not x.is_floating_point():
        raise TypeError(f"{model}: expected a floating-point input (the model's dtype is {stem_weight.dtype}), got "
                        f"{x.dtype}; convert it (x.to({stem_weight.dtype}))")
    if x.dtype != stem_weight.dtype:
        autocast = torch.amp.is_autocast_available(x.device.type) and torch.is_autocast_enabled(x.device.type)
        if not autocast:  # autocast casts the input for the convolutions
            raise TypeError(
                f"{model}: the model's parameters are {stem_weight.dtype} but the input is {x.dtype}; convert the "
                f"input (x.to({stem_weight.dtype})) or the model (model.to({x.dtype})), or call the model under "
                f"torch.autocast")
    if x.device != stem_weight.device:
        raise ValueError(f"{model}: the model is on {stem_weight.device} but the input on {x.device}; move the "
                         f"input (x.to('{stem_weight.device}')) or the model (model.to('{x.device}'))")
    height, width = x.shape[2], x.shape[3]
    if height == 0 or width == 0:
        raise ValueError(f"{model}: expected images at least 1 pixel high and wide, got an input of {list(x.shape)}")
    if training and x.shape[0] * -(-height // downsampling) * -(-width // downsampling) == 1:
        raise ValueError(
            f"{model}: in train mode the BatchNorms normalize with the batch's statistics, which needs more than "
            f"one value per channel, but an input of {list(x.shape)} leaves 1 pixel of 1 image in the last stage; "
            f"train on batches of 2 or more images or on images larger than {downsampling}x{downsampling}, or "
            f"call model.eval() for inference")
