"""The backend registry behind the ``backend=`` argument of the public ops.

A backend is a named pair of implementations (channel_shuffle,
pointwise_group_conv) plus the device types it runs on. ``"auto"`` picks, for
the tensor's device, the registered backend with the highest priority there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Backend:
    name: str
    channel_shuffle: Callable
    pointwise_group_conv: Callable
    # device type -> priority for "auto" (higher wins); absent: cannot run there.
    # Fixed when the backend registers, so selection traces cleanly under torch.compile.
    priority: dict[str, int]

    def runs_on(self, device_type: str) -> bool:
        return device_type in self.priority


_registry: dict[str, Backend] = {}
# device type -> the backend "auto" picks there.
_auto: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _registry[backend.name] = backend
    for device_type, priority in backend.priority.items():
        current = _auto.get(device_type)
        if current is None or priority > current.priority[device_type]:
            _auto[device_type] = backend


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """The backends this install can run, on ``device`` if given."""
    names = []
    for name, backend in _registry.items():
        devices = backend.priority
        if devices and (device is None or torch.device(device).type in devices):
            names.append(name)
    return names


def select(name: str, device: torch.device) -> Backend:
    if name == "auto":
        backend = _auto.get(device.type)
        if backend is None:
            raise RuntimeError(f"no shufflenet_ops backend runs on device '{device}'")
        return backend
    backend = _registry.get(name)
    if backend is None or not backend.priority:
        raise ValueError(
            f"unknown or unavailable backend {name!r}; available backends: {available_backends()} (or 'auto')"
        )
    if not backend.runs_on(device.type):
        raise ValueError(
            f"backend {name!r} cannot run on device '{device}'; backends for it: "
            f"{available_backends(device)} (or 'auto')"
        )
    return backend
