"""The SKILL paper's Sec. 7 experiments on SKILL-mini's features.

* :func:`corrective` (Sec. 7.1, Fig. 10): accuracy without a task label when a prediction also counts
  as right if its class name is at least ``threshold`` similar to the true one;
* :func:`combination_curves` (Sec. 7.2 part 1, Fig. 11): a new task made of all classes of two learned
  tasks, its head started from the two heads' concatenated ∞-normalized rows or at random, accuracy
  after every epoch;

Heads learn their rows one-vs-rest against other tasks' shared anchors (see
:mod:`exmodel.names.reuse`): :func:`shared_anchors` gives every task's, :func:`base_heads` trains
each task's head against those of every other task (``negatives="all"``, as when every task has been
shared) or of the tasks before it only (``"prior"``, as a sequential learner holds them).
* :func:`similar_class_table` (Sec. 7.2 part 2, Table 3): a new task whose classes are matched by name
  to learned ones, started from the matched rows or at random, trained on all / 10 / 5 / 3 images per
  class.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import torch

from exmodel.agents.mappers import MAHA_M
from exmodel.agents.sequential import shared_rows
from exmodel.names.reuse import (HeadTraining, accuracy, concatenated, corrective_per_task, matched_init,
                                 name_matches, name_space, random_head, train_head)


def shared_anchors(tasks: Sequence, m: int = MAHA_M, seed: int = 0) -> list[torch.Tensor]:
    """The features of the m training images per class each task shares for MAHA (the LLL agent's picks)."""
    return [shared_rows(t, m, seed) for t in tasks]


def negatives_except(anchors: Sequence[torch.Tensor] | None, keep: Callable[[int], bool]) -> torch.Tensor | None:
    """The anchors of every task ``k`` with ``keep(k)``, stacked (None without anchors or when none is kept)."""
    picked = [a for k, a in enumerate(anchors or []) if keep(k)]
    return torch.cat(picked) if picked else None


def base_heads(tasks: Sequence, params: HeadTraining, anchors: Sequence[torch.Tensor] | None = None,
               negatives: str = "all") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every task's head with ∞-normalized rows, trained from a seeded random start on its own data and,
    one-vs-rest, against the ``anchors`` of every other task (``negatives="all"``) or of the tasks
    before it (``"prior"``)."""
    if negatives not in ("all", "prior"):
        raise ValueError(f"negatives must be 'all' or 'prior', not {negatives!r}")
    out = {}
    for k, t in enumerate(tasks):
        init = random_head(len(t.train.class_names), t.f_train.shape[1], torch.Generator().manual_seed(params.seed + k))
        neg = negatives_except(anchors, lambda j: j < k if negatives == "prior" else j != k)
        out[t.name], _ = train_head(t.f_train, t.train.labels, init, params, negatives=neg)
    return out


def _union(a, b) -> tuple[torch.Tensor, ...]:
    shift = len(a.train.class_names)
    return (torch.cat([a.f_train, b.f_train]), torch.cat([a.train.labels, b.train.labels + shift]),
            torch.cat([a.f_test, b.f_test]), torch.cat([a.test.labels, b.test.labels + shift]))


def combination_curves(tasks: Sequence, starts: dict[str, dict], params: HeadTraining,
                       pairs: Sequence[tuple[int, int]] | None = None, tick: Callable[[], None] | None = None,
                       anchors: Sequence[torch.Tensor] | None = None) -> dict:
    """Fig. 11: for every pair of tasks (all by default) a new task with all their classes, trained for
    ``params.epochs`` from the concatenated heads of each set in ``starts`` (name -> heads by task) and
    from a random head ("random"); one-vs-rest against the ``anchors`` of the other tasks.

    Returns every pair's curves, their mean per start, and for each start whether it is ahead of the
    random head at every epoch and how far its epoch 0 is below its last epoch (``gap``)."""
    if "random" in starts:
        raise ValueError("'random' names the random start; call the reused heads something else")
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(range(len(tasks)), 2))
    rows = []
    for n, (i, j) in enumerate(pairs):
        a, b = tasks[i], tasks[j]
        x, y, xt, yt = _union(a, b)
        neg = negatives_except(anchors, lambda k: k not in (i, j))
        row = {"tasks": [a.name, b.name]}
        for kind, heads in starts.items():
            _, row[kind] = train_head(x, y, concatenated([heads[a.name], heads[b.name]]), params, (xt, yt), neg)
        init = random_head(int(y.max()) + 1, x.shape[1], torch.Generator().manual_seed(params.seed + 1000 + n))
        _, row["random"] = train_head(x, y, init, params, (xt, yt), neg)
        rows.append(row)
        if tick:
            tick()
    mean = {k: torch.tensor([r[k] for r in rows]).mean(0).tolist() for k in (*starts, "random")}
    return {"epochs": params.epochs, "pairs": rows, "mean": mean,
            "ahead_every_epoch": {k: all(r > q for r, q in zip(mean[k], mean["random"])) for k in starts},
            "gap": {k: mean[k][-1] - mean[k][0] for k in (*starts, "random")}}


def shots_of(labels: torch.Tensor, shots: int | None, generator: torch.Generator) -> torch.Tensor:
    """Rows of ``shots`` images per class drawn from ``generator`` (all rows when ``shots`` is None)."""
    if shots is None:
        return torch.arange(len(labels))
    picks = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:shots]])
    return torch.cat(picks).sort().values


def similar_class_table(tasks: Sequence, heads: dict, embed: Callable[[list[str]], torch.Tensor],
                        experiments: Sequence[tuple[Sequence[str], str]], params: HeadTraining, threshold: float,
                        shots: Sequence[int | None] = (None, 10, 5, 3), draws: int = 5,
                        tick: Callable[[], None] | None = None, anchors: Sequence[torch.Tensor] | None = None
                        ) -> list[dict]:
    """Table 3: for each ``(old task names, new task name)``, the new task's test accuracy after
    training on ``shots`` images per class from a random head and from the matched rows, averaged over
    ``draws`` draws of the images (the same draws and the same random rows for both starts); one-vs-rest
    against the ``anchors`` of every other task."""
    by_name = {t.name: t for t in tasks}
    out = []
    for olds, new in experiments:
        t = by_name[new]
        neg = negatives_except(anchors, lambda k: tasks[k].name != new)
        old_names = [c for o in olds for c in by_name[o].train.class_names]
        matches = name_matches(embed(list(t.train.class_names)), embed(old_names), threshold)
        old_head = concatenated([heads[o] for o in olds])
        row = {"old": list(olds), "new": new, "threshold": threshold,
               "matched": [[t.train.class_names[i], old_names[m[0]], round(m[1], 4)]
                           for i, m in enumerate(matches) if m is not None], "shots": {}}
        for s in shots:
            acc = {"random": [], "reused": []}
            for d in range(draws):
                rows = shots_of(t.train.labels, s, torch.Generator().manual_seed(params.seed + d))
                p = dataclasses.replace(params, seed=params.seed + d)
                for kind in acc:
                    g = torch.Generator().manual_seed(params.seed + 2000 + d)
                    n_features = t.f_train.shape[1]
                    init = random_head(len(t.train.class_names), n_features, g) if kind == "random" \
                        else matched_init(matches, old_head, n_features, g)
                    head, _ = train_head(t.f_train[rows], t.train.labels[rows], init, p, negatives=neg)
                    acc[kind].append(accuracy(head, t.f_test, t.test.labels))
            row["shots"]["all" if s is None else str(s)] = {k: sum(v) / len(v) for k, v in acc.items()}
            if tick:
                tick()
        out.append(row)
    return out


def corrective(agent, mapper: str, tasks: Sequence, embed: Callable[[list[str]], torch.Tensor],
               thresholds: Sequence[float]) -> dict:
    """Sec. 7.1 for an agent that holds ``tasks`` in its bank (in this order): average accuracy without a
    task label, strictly and with name similarity at each threshold, and how many test images change."""
    qualified = [f"{t.name}/{c}" for t in tasks for c in t.train.class_names]
    offsets, similarity = name_space([t.train.class_names for t in tasks], embed)
    task, cls = agent.predict(torch.cat([t.f_test for t in tasks]), mapper)
    pred = offsets[task] + cls
    true = torch.cat([offsets[j] + t.test.labels for j, t in enumerate(tasks)])
    sizes = [len(t.test.labels) for t in tasks]

    strict = [float(r.float().mean()) for r in (pred == true).split(sizes)]
    out = {"mapper": mapper, "strict": {"per_task": strict, "average": sum(strict) / len(strict)}, "thresholds": {}}
    for thr in thresholds:
        acc = corrective_per_task(pred, true, sizes, similarity, thr)
        pairs = sorted({(qualified[p], qualified[q]) for p, q in zip(pred.tolist(), true.tolist())
                        if p != q and similarity[p, q] >= thr})
        out["thresholds"][str(thr)] = {"per_task": acc, "average": sum(acc) / len(acc),
                                       "gain": sum(acc) / len(acc) - out["strict"]["average"],
                                       "pairs_counted": [list(p) for p in pairs]}
    return out
