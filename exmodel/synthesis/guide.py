"""Guided generation: the previous ex-model joins the expert in judging a new expert's samples.

An expert trained on classes {2, 3} calls every image either 2 or 3, so the images a generator
draws for its 3s may well look like a 5 — a class this expert never saw. The previous ex-model
knows the 5s (from earlier experts' samples). With a *guide*, the generator also minimises the
cross-entropy of a combined classifier over the old and the new classes: the guide's logits for the
classes it knows and the expert's standardized logits for the expert's classes. Both are on the
ex-model's scale: the ex-model was distilled towards standardized logits (Eq. 6-7), so its raw logits
already are; the expert's, often ten times larger, would otherwise drown the guide's. A generated 3
that the guide takes for a 5 is then penalised; a 3 the guide finds unremarkable is not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from exmodel.logits import normalize_logits


@dataclass
class Guide:
    """The previous ex-model (``[0, 1]`` images of ``input_shape`` → (B, K) global logits) and the
    (K,) boolean mask of the classes it has learned."""

    model: nn.Module
    classes: torch.Tensor
    input_shape: tuple[int, int, int]


def guided_cross_entropy(guide_logits: torch.Tensor, expert_logits: torch.Tensor, target: torch.Tensor,
                         old: torch.Tensor, expert_columns: Sequence[int], classes: Sequence[int]) -> torch.Tensor:
    """Mean CE of the combined classifier for global targets ``target`` (B,).

    ``guide_logits`` (B, K) over the global classes, ``expert_logits`` (B, U) over the expert's output
    units; ``old`` (K,) marks the guide's classes, ``classes`` are the expert's (global ids) and
    ``expert_columns`` their units. The expert's logits are standardized over all its units; the
    combined row holds the guide's raw logits for ``old`` classes that are not the expert's, the
    expert's standardized values for ``classes``, and −inf elsewhere."""
    if len(expert_columns) != len(classes):
        raise ValueError("guided_cross_entropy: one expert column per class")
    g, e = guide_logits, normalize_logits(expert_logits, "standardize")
    cls = torch.as_tensor(list(classes), dtype=torch.long, device=g.device)
    cols = torch.as_tensor(list(expert_columns), dtype=torch.long, device=e.device)
    keep = old.to(g.device).clone()
    keep[cls] = False
    combined = torch.where(keep.unsqueeze(0), g, torch.full_like(g, float("-inf")))
    combined[:, cls] = e[:, cols]
    return F.cross_entropy(combined, target)
