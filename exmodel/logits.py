"""Per-sample normalization of logits (Carta et al. 2021, Eq. 6-7), shared by the distillation losses
(`strategies/ed/losses.py`) and the generator's guide (:mod:`exmodel.synthesis.guide`)."""

from __future__ import annotations

import torch

NORMALIZATIONS = ("standardize", "l2", "none")


def normalize_logits(z: torch.Tensor, mode: str = "standardize", eps: float = 1e-6) -> torch.Tensor:
    """Per-sample normalization of logits (B, K); NaN entries (units without a value) are ignored.

    * ``standardize``: (z − mean(z)) / std(z) over the sample's units (population std), so every
      sample's logits have mean 0 and unit variance whatever the model's scale;
    * ``l2``: (z − mean(z)) / ||z − mean(z)||₂ ;
    * ``none``: z unchanged.
    """
    if mode == "none":
        return z
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got '{mode}'")
    valid = ~torch.isnan(z)
    n = valid.sum(1, keepdim=True).clamp_min(1)
    zz = torch.where(valid, z, torch.zeros_like(z))
    mean = zz.sum(1, keepdim=True) / n
    centered = torch.where(valid, z - mean, torch.zeros_like(z))
    if mode == "standardize":
        scale = (centered.pow(2).sum(1, keepdim=True) / n).sqrt()
    else:
        scale = centered.pow(2).sum(1, keepdim=True).sqrt()
    out = centered / (scale + eps)
    return torch.where(valid, out, torch.full_like(out, float("nan")))
