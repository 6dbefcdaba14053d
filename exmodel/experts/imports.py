"""Experts as users hold them: a ``torch.export`` file or a live ``nn.Module``, made into a bundle-ready
:class:`~exmodel.experts.expert.Expert`.

Both paths end in the same place: a :class:`~exmodel.experts.program.ProgramNet` (the model's graph of
ATen operators and its tensors, no code of the sender's) and a card built by :func:`make_card` from
what the user says about the model (which class each output unit is, how inputs were normalized)
and what the program itself tells (input shape, number of outputs). Every problem with those options
is reported at once, in one line.

* :func:`import_program` reads a ``.pt2`` file with :func:`exmodel.experts.pt2.read_pt2`, which
  never unpickles;
* :func:`expert_from_module` exports a module with ``torch.export`` in memory (the user's own code, run
  by the user's choice in the user's process) and reads the result through the same safe reader, so
  the bundle written from it needs no code to be loaded anywhere.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from exmodel.errors import BundleError
from exmodel.experts.bundle import assemble_expert
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.experts.program import PROGRAM_ARCH, ProgramNet
from exmodel.experts.pt2 import read_pt2


def _known_names(dataset: str | None) -> tuple[str, ...] | None:
    if dataset is None:
        return None
    from exmodel.data.catalog import get_info

    return tuple(get_info(dataset).class_names)


def _square_shape(features: int) -> tuple[int, int, int] | None:
    for channels in (1, 3):
        side = math.isqrt(features // channels)
        if features % channels == 0 and side * side * channels == features:
            return channels, side, side
    return None


def make_card(net: nn.Module, *, name: str, classes: Sequence[int] | None = None,
              class_names: Sequence[str] | None = None, num_classes: int | None = None,
              trained_classes: Sequence[int] | None = None, mean: Sequence[float] | None = None,
              std: Sequence[float] | None = None, input_shape: Sequence[int] | None = None,
              dataset: str | None = None, training: dict[str, Any] | None = None,
              source: str = "expert") -> ExpertCard:
    """The card of ``net`` (a :class:`ProgramNet`), with defaults inferred where the program tells.

    ``classes``: the global class id of each output unit (default 0, 1, ...); ``dataset``: a known
    dataset whose class names and class count apply; ``mean``/``std``: the per-channel input
    normalization the model was trained with (default none: inputs in [0, 1] go in unchanged).
    """
    problems: list[str] = []
    shape = tuple(input_shape) if input_shape is not None else None
    sample = tuple(getattr(net, "sample_shape", ()))
    if shape is None:
        shape = sample if len(sample) == 3 else _square_shape(sample[0]) if len(sample) == 1 else None
        if shape is None:
            problems.append(f"give the input shape (C, H, W): the program takes {list(sample)}")
    elif len(shape) != 3 or min(shape) < 1:
        problems.append(f"input shape must be three positive sizes (C, H, W), got {list(shape)}")
        shape = None
    outputs = None
    if shape is not None:
        try:
            with torch.no_grad():
                out = net(torch.zeros(1, *shape))
            outputs = out.shape[-1] if out.ndim == 2 else None
            if outputs is None:
                problems.append(f"the model returns shape {tuple(out.shape)}; an expert returns (batch, classes) logits")
        except Exception as exc:  # noqa: BLE001  the shape does not fit the program
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            problems.append(f"the model cannot run on input shape {list(shape)} ({first[:160]})")
    names_known = _known_names(dataset)
    ids = list(classes) if classes is not None else list(range(outputs or 0))
    if outputs is not None and len(ids) != outputs:
        problems.append(f"the model has {outputs} outputs but {len(ids)} classes were given")
    k = num_classes or (len(names_known) if names_known else (max(ids) + 1 if ids else 1))
    if any(not 0 <= c < k for c in ids):
        problems.append(f"class ids must lie in [0, {k}), got {ids}")
    if class_names is not None:
        names = [str(n) for n in class_names]
        if len(names) != len(ids):
            problems.append(f"{len(names)} class names for {len(ids)} classes")
    elif names_known is not None:
        names = [names_known[c] if 0 <= c < len(names_known) else str(c) for c in ids]
    else:
        names = [str(c) for c in ids]
    channels = shape[0] if shape is not None else None
    mean = list(mean) if mean is not None else ([0.0] * channels if channels else [0.0])
    std = list(std) if std is not None else ([1.0] * channels if channels else [1.0])
    if channels is not None:
        if len(mean) == 1 and channels > 1:
            mean = mean * channels
        if len(std) == 1 and channels > 1:
            std = std * channels
        if len(mean) != channels or len(std) != channels:
            problems.append(f"normalization needs {channels} mean and std values, got {len(mean)} and {len(std)}")
    if any(not s > 0 for s in std):
        problems.append(f"std values must be > 0, got {std}")
    trained = list(trained_classes) if trained_classes is not None else ids
    if any(c not in ids for c in trained):
        problems.append(f"trained classes {trained} must be among the classes {ids}")
    if problems:
        raise BundleError(f"{source}: " + "; ".join(problems))
    return ExpertCard.from_dict({
        "name": name, "arch": PROGRAM_ARCH, "arch_kwargs": {}, "class_ids": ids, "class_names": names,
        "trained_class_ids": trained, "num_global_classes": k, "input_shape": list(shape),
        "normalization": {"mean": mean, "std": std}, "training": dict(training or {}),
    }, source=f"{source} card")


def _expert(program: dict, tensors: dict, source: str, name: str, training: dict, card_options: dict) -> Expert:
    try:
        net = ProgramNet(program, tensors)
    except BundleError as exc:
        raise BundleError(f"{source}: {exc}") from None
    card = make_card(net, name=name, training=training, source=source, **card_options)
    return assemble_expert(card, tensors, source, program=program)


def import_program(path: str | os.PathLike, *, name: str | None = None, **card_options: Any) -> Expert:
    """An :class:`Expert` from a ``torch.export`` file; ``card_options`` as in :func:`make_card`."""
    path = Path(path)
    program, tensors = read_pt2(path)
    training = {"imported_from": "torch.export", "file": path.name, "torch_version": program.get("torch_version")}
    return _expert(program, tensors, str(path), name or path.stem, training, card_options)


def expert_from_module(module: nn.Module, *, name: str = "expert", input_shape: Sequence[int] | None = None,
                       example: torch.Tensor | None = None, **card_options: Any) -> Expert:
    """Export ``module`` (in eval mode, with a dynamic batch dimension) and make it an :class:`Expert`.

    Give ``input_shape`` (C, H, W) of the normalized images the module takes, or an ``example`` batch.
    """
    if example is None:
        if input_shape is None:
            raise BundleError(f"{name}: give input_shape=(C, H, W) or an example batch to export the module")
        example = torch.zeros(2, *input_shape)
    elif input_shape is None:
        input_shape = tuple(example.shape[1:])
    if len(example) < 2:  # a batch of one would be specialised to a fixed batch size
        example = torch.cat([example, example])
    was_training = module.training
    module.eval()
    try:
        exported = torch.export.export(module, (example.detach().cpu(),),
                                       dynamic_shapes=({0: torch.export.Dim("batch")},))
        buffer = io.BytesIO()
        torch.export.save(exported, buffer)
    except Exception as exc:  # noqa: BLE001  torch.export's many error types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{name}: torch.export could not export the module ({first[:200]}); see "
                          "https://pytorch.org/docs/stable/export.html for what it supports") from None
    finally:
        module.train(was_training)
    buffer.seek(0)
    program, tensors = read_pt2(buffer)
    training = {"imported_from": "nn.Module", "module": type(module).__qualname__,
                "torch_version": program.get("torch_version")}
    return _expert(program, tensors, name, name, training, {"input_shape": input_shape, **card_options})
