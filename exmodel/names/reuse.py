"""Reusing learned class weights (SKILL Sec. 7.2) and scoring by class name (Sec. 7.1).

A head is one linear layer on the frozen backbone's features; its output units do not talk to each
other, so each class's row of weights is evidence for that class alone and can be copied into a new
task's head. Rows trained as they are do not mix across tasks (their scales differ), so heads here
are trained with each row divided by its ∞-norm (``w'_i = w_i / max_d |w_{i,d}|``, the paper's choice:
the 2-norm forces every row to one magnitude, the ∞-norm keeps the magnitudes' information), and the
normalized rows are what is reused:

* a new task made of learned classes starts from the concatenation of those classes' rows;
* a new task with *similar* classes starts each class from the row of the most similar learned class
  by name (cosine similarity of name embeddings at least ``threshold``), the others at random.

A head trained by softmax cross-entropy alone learns to tell its own classes apart and nothing about
anything else: on another task's image its rows answer at an arbitrary level, so two such heads
concatenated disagree about whose image it is (63.6 % at epoch 0 on SKILL-mini's task pairs, against
90.5 % after training). exmodel's heads therefore also learn each row as a one-vs-rest detector
(``one_vs_rest``): a binary cross-entropy that pushes the row up on its class and down on the task's
other classes and on *negatives*, the features of the images other tasks share as anchors (MAHA's m
per class, which every agent holds). A row's level then means the same in every head, and the
concatenation works before any training on the new task (88.5 % at epoch 0).

All functions are pure (tensors in, tensors out) and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def inf_normalized(weight: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest absolute entry (rows of zeros stay zero)."""
    return weight / weight.abs().amax(1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class HeadTraining:
    epochs: int = 10
    lr: float = 1e-3  # Adam
    batch_size: int = 64
    seed: int = 0
    bias: bool = True  # False: no bias (kept at zero)
    # start every head at the scale of a default random row (see train_head); False: the paper's rows
    # as given (learned rows at ∞-norm 1)
    rescale: bool = True
    # also a one-vs-rest binary cross-entropy, against the task's other classes and any negatives given
    # to train_head (other tasks' shared anchors); False: softmax cross-entropy alone (the paper)
    one_vs_rest: bool = True


def random_head(n_classes: int, n_features: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch's default initialization of a linear layer (uniform in ±1/sqrt(fan_in)), drawn from ``generator``."""
    bound = 1.0 / n_features ** 0.5
    w = (torch.rand(n_classes, n_features, generator=generator) * 2 - 1) * bound
    b = (torch.rand(n_classes, generator=generator) * 2 - 1) * bound
    return w, b


def accuracy(head: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the ∞-normalized head ``(weight, bias)`` on features ``x``, labels ``y``."""
    w, b = head
    return float(((x @ inf_normalized(w).T + b).argmax(1) == y).float().mean()) if len(y) else 0.0


def head_loss(logits: torch.Tensor, y: torch.Tensor, negative_logits: torch.Tensor | None = None,
              one_vs_rest: bool = True) -> torch.Tensor:
    """Softmax cross-entropy of ``logits`` (N, C) against ``y``; with ``one_vs_rest`` plus the mean binary
    cross-entropy of every logit against its one-hot target and, for ``negative_logits`` (M, C), the
    binary cross-entropy of every logit against 0 (no class of this head)."""
    loss = F.cross_entropy(logits, y)
    if not one_vs_rest:
        return loss
    loss = loss + F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    if negative_logits is not None and len(negative_logits):
        loss = loss + F.binary_cross_entropy_with_logits(negative_logits, torch.zeros_like(negative_logits))
    return loss


def train_head(x: torch.Tensor, y: torch.Tensor, init: tuple[torch.Tensor, torch.Tensor],
               params: HeadTraining = HeadTraining(), test: tuple[torch.Tensor, torch.Tensor] | None = None,
               negatives: torch.Tensor | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], list[float]]:
    """Train a head with ∞-normalized rows from ``init`` by Adam on mini-batches of ``(x, y)``, by
    :func:`head_loss`; with ``params.one_vs_rest`` each step also draws a batch of ``negatives``
    (features of no class of this head) with replacement.

    Returns the head as ``(normalized weight, bias)`` and, when ``test`` is given, its accuracy on it
    before training (epoch 0) and after every epoch: ``params.epochs + 1`` values.
    """
    g = torch.Generator().manual_seed(params.seed)
    # Every start at the scale of a default random row (∞-norm 1/sqrt(D)): the forward pass divides the
    # scale out, but a step's effect grows as the rows shrink, so learned rows kept at ∞-norm 1 would
    # move 1/sqrt(D) times slower than a random start (36x at D = 1280) and lose to it for that alone.
    w = (inf_normalized(init[0]) / init[0].shape[1] ** 0.5 if params.rescale else init[0].clone()).requires_grad_(True)
    b = init[1].clone().requires_grad_(params.bias)
    if not params.bias:
        b.zero_()
    opt = torch.optim.Adam([w, b] if params.bias else [w], lr=params.lr)
    curve = [accuracy((w.detach(), b.detach()), *test)] if test is not None else []
    for _ in range(params.epochs):
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), params.batch_size):
            rows = order[i:i + params.batch_size]
            wn = inf_normalized(w)
            neg = None
            if params.one_vs_rest and negatives is not None and len(negatives):
                neg = negatives[torch.randint(len(negatives), (params.batch_size,), generator=g)] @ wn.T + b
            loss = head_loss(x[rows] @ wn.T + b, y[rows], neg, params.one_vs_rest)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if test is not None:
            curve.append(accuracy((w.detach(), b.detach()), *test))
    return (inf_normalized(w.detach()), b.detach()), curve


def concatenated(heads: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One head answering every class of ``heads`` (in order): their normalized rows and biases stacked."""
    return torch.cat([inf_normalized(w) for w, _ in heads]), torch.cat([b for _, b in heads])


def name_matches(new: torch.Tensor, old: torch.Tensor, threshold: float) -> list[tuple[int, float] | None]:
    """For each row of ``new`` (unit-length name embeddings), the most similar row of ``old`` and the
    cosine similarity, or None when it is below ``threshold``."""
    if len(old) == 0:
        return [None] * len(new)
    best, where = (new @ old.T).max(1)
    return [(int(j), float(s)) if s >= threshold else None for s, j in zip(best.tolist(), where.tolist())]


def matched_init(matches: list[tuple[int, float] | None], old: tuple[torch.Tensor, torch.Tensor],
                 n_features: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A new head: a matched class takes its learned class's normalized row and bias; the others are
    drawn as :func:`random_head` draws them (the same draws as an all-random head from ``generator``)."""
    w, b = random_head(len(matches), n_features, generator)
    old_w = inf_normalized(old[0])
    for i, m in enumerate(matches):
        if m is not None:
            w[i], b[i] = old_w[m[0]], old[1][m[0]]
    return w, b


def corrective_correct(pred_name: torch.Tensor, true_name: torch.Tensor, similarity: torch.Tensor,
                       threshold: float) -> torch.Tensor:
    """Sec. 7.1: whether each prediction counts as right when the predicted class's name and the true
    one are at least ``threshold`` similar. ``pred_name``, ``true_name`` index the rows and columns of
    ``similarity`` (one per class of the bank, every task's classes in turn); a class is always
    similar to itself, so every strictly right answer stays right."""
    same = pred_name == true_name
    return same | (similarity[pred_name, true_name] >= threshold)


def name_space(class_names: list[list[str]] | list[tuple[str, ...]], embed) -> tuple[torch.Tensor, torch.Tensor]:
    """For tasks' class names (one list per task, in bank order): each task's offset into the flat list of
    classes, and the cosine similarity of every pair of class names (``embed`` gives unit rows)."""
    flat = [c for names in class_names for c in names]
    e = embed(flat)
    sizes = torch.tensor([0, *(len(names) for names in class_names)])
    return sizes.cumsum(0)[:-1], e @ e.T


def corrective_per_task(pred: torch.Tensor, true: torch.Tensor, sizes: list[int], similarity: torch.Tensor,
                        threshold: float) -> list[float]:
    """Per test set (``sizes`` images each, in order): the share right by :func:`corrective_correct`.
    ``true`` < 0 marks an image whose task is not held: never right."""
    right = corrective_correct(pred, true.clamp_min(0), similarity, threshold) & (true >= 0)
    return [float(r.float().mean()) for r in right.split(sizes)]
