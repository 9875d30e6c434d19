import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton backend's kernels run on CPU tensors through
    # Triton's interpreter, which must be switched on before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _fix_interpreter_loop_bounds() -> None:
    """triton 3.6's interpreter converts a scalar to int with int(ndarray of
    shape (1,)), which numpy >= 2.4 rejects, so every loop with a runtime bound
    fails (triton-lang/triton#9171, fixed upstream by #9172). Apply that fix."""
    try:
        from triton.runtime import interpreter
    except ModuleNotFoundError:
        return
    patch_tensor = interpreter._patch_lang_tensor

    def patch_tensor_with_scalar_index(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    interpreter._patch_lang_tensor = patch_tensor_with_scalar_index


if os.environ.get("TRITON_INTERPRET") == "1":
    _fix_interpreter_loop_bounds()
