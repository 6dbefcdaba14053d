"""Device names given by users (``--device``, a config's ``device``), checked before any work."""

from __future__ import annotations

import torch

from exmodel.errors import ConfigError


def parse_device(value: str) -> torch.device:
    """``value`` as a torch device; one-line :class:`ConfigError` if it names none."""
    try:
        return torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {value!r} is not a device name (cpu, cuda, cuda:1, mps)") from None


def check_device(value: str) -> str:
    """``value`` if it names a device this machine has; one-line :class:`ConfigError` otherwise."""
    device = parse_device(value)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {value!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {value!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {value!r}: exmodel runs on cpu, cuda or mps")
    return value
