"""What a knowledge source is: something that turns an expert into a labelled set of images.

Ex-model distillation (paper Sec. 3) never sees an expert's training data. At every step it asks a
*knowledge source* for ``n`` images and labels that stand in for that data (paper Sec. 4): images
optimised against the expert (model inversion, data impression), images of another dataset
labelled by the expert (auxiliary data), random noise labelled by the expert (a lower bound), or,
as the non-ex-model upper bound, real images of the experience (replay).

Every source answers the same call::

    x01, y = source.generate(expert, n, generator, classes=None, data=None, progress=None)

* ``x01``: float32 (n, C, H, W) in [0, 1] on the CPU, shaped like ``expert.card.input_shape``;
* ``y``: int64 (n,) *global* class ids (columns of the stream's label space);
* ``classes`` (default ``expert.card.trained_class_ids``) are the global classes asked for; sources
  that choose the labels spread them evenly over these (:func:`balanced_labels`);
* ``generator`` makes the result reproducible: the same seed gives the same tensors;
* ``data`` is only read by sources with ``needs_data = True`` (replay);
* ``progress`` (an :class:`exmodel.progress.Progress`) gets one task, advanced per optimisation
  step or batch, and removed at the end.

Sources never change the expert: they run it in eval mode, with its parameters' ``requires_grad``
switched off, and restore both afterwards (:func:`frozen_expert`).

Adding a source: see ``README.md`` in this folder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError
from exmodel.experts.expert import Expert
from exmodel.params import validate_params
from exmodel.progress import Progress
from exmodel.registry import Registry
from exmodel.rng import seeded


class SourceParams(BaseModel):
    """Base of every source's ``Params``: unknown keys are errors (they are usually typos)."""

    model_config = ConfigDict(extra="forbid")


class KnowledgeSource(ABC):
    """See the module docstring. Subclasses set ``name`` (via :func:`register_source`), ``Params``
    and implement :meth:`generate`."""

    name: ClassVar[str] = ""
    ex_model: ClassVar[bool] = True  # uses nothing but the expert (False: reads real data)
    needs_data: ClassVar[bool] = False  # generate() requires ``data``
    accepts_guide: ClassVar[bool] = False  # generate() takes ``guide=`` (the previous ex-model; see guide.py)
    Params: ClassVar[type[SourceParams]] = SourceParams

    def __init__(self, params: SourceParams | None = None, *, data_dir: str | None = None) -> None:
        """``data_dir`` is where datasets are read from (only the auxiliary source uses it; None =
        ``$EXMODEL_DATA_DIR`` or the embedded subsets, as in :func:`exmodel.data.registry.load_dataset`)."""
        self.params = params if params is not None else self.Params()
        if not isinstance(self.params, self.Params):
            raise TypeError(f"source '{self.name}' expects {self.Params.__qualname__}, got {type(self.params).__name__}")
        self.data_dir = data_dir

    @abstractmethod
    def generate(self, expert: Expert, n: int, generator: torch.Generator, *,
                 classes: Sequence[int] | None = None, data: ImageDataset | None = None,
                 progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` images in [0, 1] and their global labels; see the module docstring."""

    def redraw(self, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Fresh images for the requested global labels ``y`` from the expert of the last
        :meth:`generate` call, and their labels; None for sources that cannot draw more cheaply
        (``generative`` and ``auxiliary`` can). :meth:`release` ends this."""
        return None

    def release(self) -> None:
        """Drop whatever :meth:`generate` kept for :meth:`redraw` (nothing is kept between experts)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params!r})"


# --------------------------------------------------------------------------------------- registry
_REGISTRY: Registry[type[KnowledgeSource]] = Registry("knowledge source")


def register_source(name: str):
    """Class decorator: make a :class:`KnowledgeSource` buildable by ``name``."""
    def deco(cls: type[KnowledgeSource]) -> type[KnowledgeSource]:
        cls.name = name
        return _REGISTRY.add(name, cls)
    return deco


def list_sources() -> list[str]:
    return _REGISTRY.names()


def source_class(name: str) -> type[KnowledgeSource]:
    return _REGISTRY.get(name)


def build_source(name: str, params: dict[str, Any] | None = None, *, data_dir: str | None = None) -> KnowledgeSource:
    """The source ``name`` with ``params`` validated against its ``Params`` (one-line ConfigError)."""
    cls = source_class(name)
    return cls(validate_params(f"knowledge source '{name}'", cls.Params, params), data_dir=data_dir)


# --------------------------------------------------------------------------------------- helpers
def resolve_classes(expert: Expert, classes: Sequence[int] | None) -> list[int]:
    """``classes`` (default: the expert's trained classes), checked to be output units of the expert."""
    chosen = list(expert.card.trained_class_ids if classes is None else classes)
    if not chosen:
        raise ValueError(f"expert '{expert.card.name}': no classes to generate (trained_class_ids is empty)")
    outputs = set(expert.card.class_ids)
    for c in chosen:
        if int(c) not in outputs:
            raise ValueError(f"class {c} is not an output of expert '{expert.card.name}' "
                             f"(class_ids {list(expert.card.class_ids)})")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"classes {chosen} contain duplicates")
    return [int(c) for c in chosen]


def check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")


def balanced_counts(k: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """How many of ``n`` samples each of ``k`` classes gets: ``n // k`` each, and the ``n % k`` left
    over go to distinct classes chosen at random (so no class is favoured across calls)."""
    counts = torch.full((k,), n // k, dtype=torch.long)
    extra = torch.randperm(k, generator=generator)[: n % k]
    counts[extra] += 1
    return counts


def balanced_labels(classes: Sequence[int], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` labels (int64) spread as evenly as possible over ``classes``, in random order.

    Every class appears ``n // k`` or ``n // k + 1`` times. The order is shuffled so that every
    optimisation batch mixes classes (BatchNorm statistics are those of a mixed batch).
    """
    check_count(n)
    if len(classes) == 0:
        raise ValueError("balanced_labels: classes must not be empty")
    values = torch.as_tensor(list(classes), dtype=torch.long)
    counts = balanced_counts(len(values), n, generator)
    labels = torch.repeat_interleave(values, counts)
    return labels[torch.randperm(n, generator=generator)]


def draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator`` (to seed libraries that use the global RNG)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device | str = "cpu") -> Iterator[None]:
    """Inside the block torch's global RNG (CPU, and ``device`` if it is a GPU) is seeded from
    ``generator``; outside it is untouched. kornia's augmentation and Dirichlet sampling use the
    global RNG; this makes them reproducible without disturbing the caller's random state."""
    with seeded(draw_seed(generator), device):
        yield


@contextmanager
def frozen_expert(expert: Expert) -> Iterator[Expert]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    was_training = expert.training
    flags = [p.requires_grad for p in expert.parameters()]
    expert.eval()
    for p in expert.parameters():
        p.requires_grad_(False)
    try:
        yield expert
    finally:
        for p, flag in zip(expert.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        expert.train(was_training)


def expert_device(expert: Expert) -> torch.device:
    param = next(expert.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def predict_among(expert: Expert, x01: torch.Tensor, classes: Sequence[int], batch_size: int = 256,
                  progress: Progress | None = None, task: Any = None) -> torch.Tensor:
    """Global label = the class of ``classes`` with the largest expert logit, for each image."""
    cols = torch.tensor(expert.units(classes), dtype=torch.long)
    values = torch.tensor(list(classes), dtype=torch.long)
    device = expert_device(expert)
    out = []
    with frozen_expert(expert):
        for start in range(0, len(x01), batch_size):
            logits = expert(x01[start:start + batch_size].to(device)).cpu()
            out.append(values[logits[:, cols].argmax(1)])
            if task is not None and progress is not None:
                progress.advance(task)
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def fit_input(x01: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resize images to another (C, H, W) with the same channels (models trained at other resolutions)."""
    if tuple(x01.shape[1:]) == tuple(shape):
        return x01
    return F.interpolate(x01, size=tuple(shape[1:]), mode="bilinear", align_corners=False).clamp(0, 1)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
