"""``so.save``: ``torch.save`` that leaves no partial file behind."""

from __future__ import annotations

import os
import tempfile

import torch


def save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, written to a temporary file beside ``path`` and
    renamed over it only once complete. ``torch.save`` creates its file before it
    pickles, so an object that fails to pickle (a lambda hook, say) leaves a
    truncated file that ``torch.load`` cannot read; here ``path`` is either the
    whole new file or left as it was. Load with ``torch.load(path, weights_only=False)``
    for a whole module, or plain ``torch.load`` for a state_dict."""
    path = os.fspath(path)
    handle, partial = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                       prefix=f".{os.path.basename(path)}.", suffix=".partial")
    os.close(handle)
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    except BaseException:
        os.unlink(partial)
        raise
