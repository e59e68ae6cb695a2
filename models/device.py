"""One way to turn a device setting into a ``torch.device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``).

Model code is device-generic: modules are moved with ``.to(device)`` and new tensors are created on the
device of the tensors they combine with; there are no CUDA-call literals. Random draws that must be
reproducible (posterior samples, degradation draws) use CPU generators and are moved afterwards, so a result
does not depend on which device's RNG produced it (docs/architecture.md §4).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads where a device is resolved: configs validate without it (fast CLI start)
    import torch
    from torch import nn

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"


class DeviceError(ValueError):
    """A device setting that cannot be honoured on this machine; the message names the config key."""


def resolve_device(spec: str | None, key: str = "run.device") -> torch.device:
    """``auto`` → cuda when available, else cpu; ``cuda`` on a machine without one is an error naming ``key``."""
    import torch

    spec = spec or "auto"
    if not re.fullmatch(DEVICE_PATTERN, spec):
        raise DeviceError(f"{key}={spec!r}: expected auto, cpu, cuda or cuda:N")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{key}={spec!r}: no CUDA device is available on this machine "
                              f"(use {key}=cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{key}={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def module_device(module: nn.Module, default: torch.device | str = "cpu") -> torch.device:
    """The device of a module's first parameter or buffer (``default`` for parameter-free modules)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    import torch

    return torch.device(default)
