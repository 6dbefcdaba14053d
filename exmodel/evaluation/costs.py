"""Cost meters: wall-clock time, compute (MACs), kept state and peak memory.

The ex-model setting constrains *resources*: a strategy may not keep the whole stream of experts,
and it should scale to long streams. These meters make those costs measurable and comparable:

* :class:`Stopwatch` -- accumulated wall-clock seconds (``time.perf_counter``);
* :func:`count_macs` -- multiply-accumulates of one forward pass, from PyTorch's FLOP counter
  (which counts matmul/convolution FLOPs as 2 per MAC, and ignores element-wise ops such as bias
  adds and activations);
* :func:`state_bytes` -- bytes of tensor storage a strategy keeps between steps, each storage once;
* :class:`PeakMemory` -- process RSS high-water mark and, on CUDA, peak allocated device memory.
"""

from __future__ import annotations

import dataclasses
import resource
import threading
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PeakMemory", "Stopwatch", "count_macs", "state_bytes"]


class Stopwatch:
    """Accumulates the seconds spent inside ``with stopwatch:`` blocks; reusable, not re-entrant."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start: float | None = None

    def __enter__(self) -> "Stopwatch":
        if self._start is not None:
            raise RuntimeError("Stopwatch is already running")
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._start is not None
        self.seconds += time.perf_counter() - self._start
        self._start = None

    def reset(self) -> None:
        self.seconds = 0.0


def count_macs(model: nn.Module, example_input: torch.Tensor | tuple[Any, ...], **forward_kwargs: Any) -> int:
    """MACs of ``model(example_input, **forward_kwargs)`` (a tuple input is unpacked as positional args).

    MACs = FLOPs / 2 as counted by ``FlopCounterMode`` (matmul, conv, bmm, attention). The whole
    batch is counted, so pass a batch of 1 for per-sample cost. The forward runs without autograd and
    with the model temporarily in eval mode, so BatchNorm running statistics are left untouched.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*args, **forward_kwargs)
    finally:
        for m, training in modes.items():
            m.training = training
    return int(counter.get_total_flops()) // 2


def state_bytes(obj: Any) -> int:
    """Bytes of tensor/array storage reachable from ``obj``, counting each storage once.

    Walks tensors, ``nn.Module`` (parameters and buffers), optimizers (their per-parameter state),
    dicts (keys and values), lists, tuples, sets, dataclasses and numpy arrays. A tensor counts its
    whole underlying storage (``untyped_storage().nbytes()``), because a view keeps that storage
    alive; storages shared by several tensors are counted once (keyed by device and data pointer).
    Other objects count 0 bytes, so pass strategies' state as one of the types above.
    """
    seen_storage: set[tuple[str, int]] = set()
    seen_obj: set[int] = set()
    total = 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += _tensor_bytes(item, seen_storage, stack)
            continue
        if isinstance(item, np.ndarray):
            base = item if item.base is None or not isinstance(item.base, np.ndarray) else item.base
            key = ("numpy", base.__array_interface__["data"][0])
            if key not in seen_storage:
                seen_storage.add(key)
                total += base.nbytes
            continue
        if id(item) in seen_obj:
            continue
        seen_obj.add(id(item))
        if isinstance(item, nn.Module):
            stack.extend(item.parameters())
            stack.extend(item.buffers())
        elif isinstance(item, torch.optim.Optimizer):
            stack.extend(item.state.values())
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return total


def _tensor_bytes(t: torch.Tensor, seen: set[tuple[str, int]], stack: list[Any]) -> int:
    if t.device.type == "meta":
        return 0  # meta tensors have no data
    if t.layout != torch.strided:
        if t.is_sparse:
            stack.extend([t._indices(), t._values()])
            return 0
        raise TypeError(f"state_bytes does not support tensors with layout {t.layout}")
    storage = t.untyped_storage()
    key = (str(t.device), storage.data_ptr())
    if key in seen:
        return 0
    seen.add(key)
    return storage.nbytes()


def _rss_high_water_bytes() -> int:
    """``ru_maxrss`` of this process in bytes (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _rss_current_bytes() -> int | None:
    """Current resident set size from ``/proc/self/statm`` (Linux only), else ``None``."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident_pages * resource.getpagesize()


class PeakMemory:
    """Peak memory while inside ``with PeakMemory() as pm:``.

    ``ru_maxrss`` is a *process-lifetime* high-water mark: it only grows, so a block whose peak stays
    below an earlier peak leaves it unchanged. Hence both values are kept: ``rss_peak_before_bytes``
    (high-water mark on entry) and ``rss_peak_after_bytes`` (on exit); the block's own peak is
    ``<= rss_peak_after_bytes`` and is exactly that value whenever it grew. ``rss_before_bytes`` is the
    current RSS on entry (Linux), for reference.

    On CUDA (``device`` a CUDA device, or ``None`` and CUDA already initialised) the device's peak
    statistics are reset on entry and ``cuda_peak_bytes`` is ``torch.cuda.max_memory_allocated`` on
    exit; resetting is global, so nesting two meters on one device makes the outer one under-report.
    """

    def __init__(self, device: str | torch.device | None = None, sample_interval_s: float | None = 0.01) -> None:
        self.device: torch.device | None = torch.device(device) if device is not None else None
        self.sample_interval_s = sample_interval_s
        self.rss_sampled_peak_bytes: int | None = None  # the block's own peak RSS, sampled by a thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rss_before_bytes: int | None = None
        self.rss_peak_before_bytes = 0
        self.rss_peak_after_bytes = 0
        self.cuda_before_bytes: int | None = None
        self.cuda_peak_bytes: int | None = None

    def _cuda_device(self) -> torch.device | None:
        if self.device is not None:
            return self.device if self.device.type == "cuda" else None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            now = _rss_current_bytes()
            if now is not None and now > (self.rss_sampled_peak_bytes or 0):
                self.rss_sampled_peak_bytes = now

    @property
    def peak_increase_bytes(self) -> int | None:
        """Sampled peak RSS during the block minus RSS on entry (the block's working memory)."""
        if self.rss_sampled_peak_bytes is None or self.rss_before_bytes is None:
            return None
        return max(0, self.rss_sampled_peak_bytes - self.rss_before_bytes)

    def __enter__(self) -> "PeakMemory":
        self.rss_before_bytes = _rss_current_bytes()
        self.rss_sampled_peak_bytes = self.rss_before_bytes
        if self.sample_interval_s and self.rss_before_bytes is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="exmodel-peak-memory", daemon=True)
            self._thread.start()
        self.rss_peak_before_bytes = _rss_high_water_bytes()
        self._cuda = self._cuda_device()
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
            self.cuda_before_bytes = torch.cuda.memory_allocated(self._cuda)
            torch.cuda.reset_peak_memory_stats(self._cuda)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            now = _rss_current_bytes()
            if now is not None and now > (self.rss_sampled_peak_bytes or 0):
                self.rss_sampled_peak_bytes = now
        if self._cuda is not None:
            torch.cuda.synchronize(self._cuda)
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated(self._cuda)
        self.rss_peak_after_bytes = _rss_high_water_bytes()

    def as_dict(self) -> dict[str, int | None]:
        return {
            "rss_before_bytes": self.rss_before_bytes,
            "rss_peak_before_bytes": self.rss_peak_before_bytes,
            "rss_peak_after_bytes": self.rss_peak_after_bytes,
            "rss_sampled_peak_bytes": self.rss_sampled_peak_bytes,
            "peak_increase_bytes": self.peak_increase_bytes,
            "cuda_before_bytes": self.cuda_before_bytes,
            "cuda_peak_bytes": self.cuda_peak_bytes,
        }
