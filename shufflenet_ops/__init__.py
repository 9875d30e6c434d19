"""shufflenet_ops: fused channel shuffle + pointwise group convolution for PyTorch.

    import shufflenet_ops as so
    y = so.pointwise_group_conv(x, weight, groups=3, output_shuffle=3, relu=True)
"""

from . import reference
from .backends import available_backends
from .functional import (
    avg_pool3x3, channel_shuffle, depthwise_conv3x3, max_pool3x3, pointwise_group_conv, stem_conv3x3_maxpool)
from . import triton as _triton_backend  # noqa: F401  (registers backend "triton" where triton is installed)
from . import batching  # noqa: F401,E402  (registers the ops' torch.vmap rules)
from . import flops, models, nn  # noqa: E402  (flops registers the ops' FLOP formulas)
from .fuse import FusedModule, FuseError, fuse  # noqa: E402
from . import onnx  # noqa: F401,E402  (registers the ops' ONNX translations)
from .saving import save  # noqa: E402

__all__ = [
    "available_backends",
    "avg_pool3x3",
    "channel_shuffle",
    "depthwise_conv3x3",
    "FusedModule",
    "FuseError",
    "fuse",
    "max_pool3x3",
    "models",
    "nn",
    "onnx",
    "pointwise_group_conv",
    "reference",
    "save",
    "stem_conv3x3_maxpool",
]
