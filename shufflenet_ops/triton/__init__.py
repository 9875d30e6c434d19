"""The Triton backend: ``backend="triton"``.

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (Triton's
interpreter, which executes the same kernels in Python; slow, meant for tests).
The kernels are registered as the ``torch.ops.shufflenet_ops.triton_*`` op
family, which shares the native ops' schemas, fake kernels and autograd, so the
ops trace through torch.compile as opaque custom ops. Without triton installed
this package registers nothing.
"""

try:
    import triton  # noqa: F401
except ModuleNotFoundError as error:
    if error.name != "triton":
        raise
    AVAILABLE = False
else:
    AVAILABLE = True
    from . import _registration  # noqa: F401
