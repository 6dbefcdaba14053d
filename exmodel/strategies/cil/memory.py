"""A class-balanced exemplar memory: real training images kept between tasks.

The budget is either a fixed total ``M`` shared by every class seen so far (iCaRL: ``M // classes``
per class, older classes shrink as new ones arrive) or a fixed number per class (LUCIR, PODNet: the
memory grows with the classes). Images stay ``uint8``, as in the dataset, so the bytes reported are
the bytes a user would keep. Each class's exemplars are stored in priority order, so shrinking keeps
a prefix: the first ``m`` of a herding selection are that selection for ``m``.
"""

from __future__ import annotations

import torch

from exmodel.data.types import ImageDataset


class ExemplarMemory:
    def __init__(self, total: int | None = None, per_class: int | None = None) -> None:
        if (total is None) == (per_class is None) or (total or per_class or 0) < 1:
            raise ValueError(f"give exactly one positive budget: total={total}, per_class={per_class}")
        self.total, self.fixed_per_class = total, per_class
        self.images: dict[int, torch.Tensor] = {}  # class -> uint8 (m, C, H, W), in priority order

    def per_class(self, n_classes: int) -> int:
        return self.fixed_per_class if self.fixed_per_class is not None else self.total // max(1, n_classes)

    def add(self, cls: int, images: torch.Tensor) -> None:
        self.images[int(cls)] = images.detach().to(torch.uint8).cpu().clone()

    def shrink(self, m: int) -> None:
        self.images = {c: x[:m].clone() for c, x in self.images.items()}  # a view would keep the dropped images alive

    def __len__(self) -> int:
        return sum(len(x) for x in self.images.values())

    def as_dataset(self, like: ImageDataset) -> ImageDataset | None:
        if not len(self):
            return None
        classes = sorted(self.images)
        x = torch.cat([self.images[c] for c in classes])
        y = torch.cat([torch.full((len(self.images[c]),), c, dtype=torch.long) for c in classes])
        return ImageDataset(x, y, like.class_names, like.name, like.mean, like.std)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``n`` exemplars drawn uniformly (with replacement when fewer are kept), in [0, 1]."""
        if not len(self):
            return None
        classes = sorted(self.images)
        x = torch.cat([self.images[c] for c in classes])
        y = torch.cat([torch.full((len(self.images[c]),), c, dtype=torch.long) for c in classes])
        idx = torch.randint(len(x), (n,), generator=generator)
        return x[idx].float().div_(255.0), y[idx]

    def state(self) -> dict[int, torch.Tensor]:
        return self.images


def random_selection(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """``m`` of ``n`` indices, uniformly without replacement (ER's class-balanced buffer)."""
    return torch.randperm(n, generator=generator)[:m]


def herding_selection(features: torch.Tensor, m: int) -> torch.Tensor:
    """iCaRL's herding (Rebuffi et al. 2017, Alg. 4): indices ``p_1..p_m`` such that the mean of the
    first ``k`` L2-normalised features is as close as possible to the class mean, for every ``k``."""
    f = torch.nn.functional.normalize(features.double(), dim=1)
    mu = f.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mu)
    available = torch.ones(len(f), dtype=torch.bool)
    for k in range(1, min(m, len(f)) + 1):
        dist = (mu - (running + f) / k).norm(dim=1)
        dist[~available] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        available[i] = False
        running += f[i]
    return torch.tensor(chosen, dtype=torch.long)
