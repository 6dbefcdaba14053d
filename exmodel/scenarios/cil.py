"""Class-incremental learning from data (``kind: cil``): which classes each task brings.

The learner gets one task's training data at a time, nothing of the earlier tasks' data, and
predicts over every class seen so far with one head and no task label. Two protocols of the field:

* ``half_base`` — a base task holding the first ``base_classes`` classes of the order (half of them by
  default), then ``n_tasks`` equal tasks with the rest (LUCIR, PODNet, SKD: "50 + 5 × 10" on CIFAR-100);
* ``from_scratch`` — ``n_tasks`` equal tasks (iCaRL, M²KD; Split-MNIST "5 × 2").

``class_groups`` gives every task's classes explicitly instead. The class order is the run seed's
permutation (``shuffle_classes``), one fixed permutation shared by every seed (``class_order_seed``,
numpy's permutation as in iCaRL's code: CIFAR-100 uses 1993), or the given ``class_order``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from exmodel.errors import ConfigError

PROTOCOLS = ("half_base", "from_scratch")


@dataclass(frozen=True)
class CILProtocol:
    protocol: str | None = None
    n_tasks: int | None = None
    base_classes: int | None = None
    class_groups: list[list[int]] | None = None


def class_order(num_classes: int, given: list[int] | None, order_seed: int | None, run_seed: int,
                shuffle: bool) -> list[int]:
    """The order in which classes arrive (a permutation of ``0..num_classes-1``)."""
    if given is not None:
        order = list(given)
    elif order_seed is not None:
        order = np.random.RandomState(order_seed).permutation(num_classes).tolist()
    elif shuffle:
        g = torch.Generator().manual_seed(run_seed)
        order = torch.randperm(num_classes, generator=g).tolist()
    else:
        order = list(range(num_classes))
    if sorted(order) != list(range(num_classes)):
        raise ConfigError(f"scenario.class_order must be a permutation of 0..{num_classes - 1}, got {order}")
    return order


def _checked_groups(groups: list[list[int]], num_classes: int) -> list[list[int]]:
    if not groups or any(not g for g in groups):
        raise ConfigError("scenario.class_groups must list at least one task, each with at least one class")
    seen: dict[int, int] = {}
    for t, group in enumerate(groups):
        for c in group:
            if not 0 <= c < num_classes:
                raise ConfigError(f"scenario.class_groups: class {c} of task {t} is not among the dataset's "
                                  f"{num_classes} classes (0..{num_classes - 1})")
            if c in seen:
                where = f"task {seen[c]} and task {t}" if seen[c] != t else f"task {t} twice"
                raise ConfigError(f"scenario.class_groups overlap: class {c} is in {where}; "
                                  f"class-incremental tasks bring disjoint classes")
            seen[c] = t
    return [list(g) for g in groups]


def cil_groups(num_classes: int, spec: CILProtocol, order: list[int]) -> list[list[int]]:
    """Every task's classes, base task first. Errors name the offending key and what would fit."""
    if spec.class_groups is not None:
        if spec.protocol is not None or spec.n_tasks is not None or spec.base_classes is not None:
            raise ConfigError("scenario.class_groups lists the tasks itself: drop protocol, n_tasks and base_classes")
        return _checked_groups(spec.class_groups, num_classes)
    if spec.protocol is None:
        raise ConfigError(f"scenario.kind 'cil' needs scenario.protocol ({' or '.join(PROTOCOLS)}) "
                          f"or scenario.class_groups")
    if spec.protocol not in PROTOCOLS:
        raise ConfigError(f"scenario.protocol '{spec.protocol}' is not one of {', '.join(PROTOCOLS)}")
    n = spec.n_tasks
    if n is None or n < 1:
        raise ConfigError(f"scenario.n_tasks must be ≥ 1 (the number of tasks{' after the base' if spec.protocol == 'half_base' else ''}), "
                          f"got {n}")
    if spec.protocol == "from_scratch":
        if spec.base_classes is not None:
            raise ConfigError("scenario.base_classes applies to protocol 'half_base' only")
        if num_classes % n:
            raise ConfigError(f"{num_classes} classes cannot be split into {n} equal tasks (scenario.n_tasks)")
        size = num_classes // n
        return [order[i * size:(i + 1) * size] for i in range(n)]
    base = num_classes // 2 if spec.base_classes is None else spec.base_classes
    if not 1 <= base < num_classes:
        raise ConfigError(f"scenario.base_classes must leave classes for the tasks: between 1 and {num_classes - 1} "
                          f"for {num_classes} classes, got {base}")
    rest = num_classes - base
    if rest % n:
        raise ConfigError(f"the {rest} classes after a base of {base} cannot be split into {n} equal tasks "
                          f"(scenario.n_tasks); divisors of {rest}: "
                          f"{', '.join(str(d) for d in range(1, rest + 1) if rest % d == 0)}")
    size = rest // n
    return [order[:base]] + [order[base + i * size: base + (i + 1) * size] for i in range(n)]
