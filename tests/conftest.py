import os

import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton backend's kernels run on CPU tensors through
    # Triton's interpreter, which must be switched on before triton is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")
