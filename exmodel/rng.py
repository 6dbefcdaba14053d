"""Random state that belongs to whoever draws from it.

Most of exmodel's draws go through explicit ``torch.Generator`` objects. Two things cannot take one:
a module's weight initialisation and kornia's augmentations draw from torch's *global* generator.
These helpers give those draws a seed of their own without touching the caller's global state:

* :func:`seeded`: inside the block the global generator is seeded with ``seed``; after it, it is as
  it was before (a model built inside is the same whatever ran earlier).
* :class:`PrivateRNG`: a global-generator stream kept across several blocks, e.g. a strategy's steps:
  each block continues where the previous one stopped, and what runs between blocks cannot shift it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _fork(device: torch.device | str = "cpu"):
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda")


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """torch's global generator (CPU, and ``device`` if it is a GPU) seeded with ``seed`` inside the
    block, and restored on exit."""
    with _fork(device):
        torch.manual_seed(seed)
        yield


class PrivateRNG:
    """A global-generator stream of one owner, started from ``seed`` (see the module docstring).
    Re-entering while inside is allowed and continues the same stream."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._state: torch.Tensor | None = None
        self._depth = 0

    @contextmanager
    def scope(self) -> Iterator[None]:
        if self._depth:
            yield
            return
        with _fork():
            if self._state is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self._state)
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                self._state = torch.get_rng_state()
