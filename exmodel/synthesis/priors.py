"""Natural-image priors (paper Sec. 4.1) and the extra regularisers of our improved configuration.

Pixel-level optimisation (model inversion, data impression) finds images that the expert classifies
with high confidence but that look like noise. These terms pull the images towards natural ones:

* :func:`l2_prior` penalises large activations, ``||x||²``;
* :func:`blur_prior` penalises high frequencies, ``||x - blur(x)||²`` with a 3×3 Gaussian blur;
* :func:`total_variation` (an extra, not in the paper) penalises differences of neighbouring pixels;
* :func:`bn_statistics_loss` matches the per-channel mean and standard deviation that the synthetic
  batch produces at every BatchNorm layer with the running statistics the expert recorded on its
  real training data (DeepInversion, Yin et al. 2020); :class:`BNStatsRecorder` collects them;
* :func:`diversity_loss` (an extra) pushes the features of a batch apart so that the samples of one
  class are not all the same image.

All functions are pure, differentiable, and return a scalar averaged over the batch (a per-sample
*sum* over pixels, then the mean over samples), so their size does not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# [1, 2, 1]ᵀ[1, 2, 1] / 16: the binomial approximation of a Gaussian with sigma ≈ 0.85 pixels.
_BLUR_1D = torch.tensor([1.0, 2.0, 1.0])
BLUR_KERNEL_3X3 = torch.outer(_BLUR_1D, _BLUR_1D) / 16.0

# Added to the variance before the square root in the BN term: sqrt has an infinite gradient at 0.
BN_STD_EPS = 1e-8


def _check_images(x: torch.Tensor, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images shaped (B, C, H, W), got {tuple(x.shape)}")


def l2_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``||x_i||²₂`` (sum of squares over all of a sample's values)."""
    return x.pow(2).flatten(1).sum(1).mean()


def pixel_l1(x01: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``Σ |x01|``, the summed intensity of images in [0, 1] pixel units: a
    sparsity prior that darkens the background (digits are bright strokes on black)."""
    return x01.abs().flatten(1).sum(1).mean()


def gaussian_blur3x3(x: torch.Tensor) -> torch.Tensor:
    """Blur every channel of ``x`` (B, C, H, W) separately with :data:`BLUR_KERNEL_3X3`.

    Borders use *replicate* padding (the edge pixel is repeated), so a constant image is left
    unchanged and the prior does not penalise image borders.
    """
    _check_images(x, "gaussian_blur3x3")
    channels = x.shape[1]
    kernel = BLUR_KERNEL_3X3.to(dtype=x.dtype, device=x.device).expand(channels, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


def blur_prior(x: torch.Tensor) -> torch.Tensor:
    """Mean over samples of ``||x_i - blur(x_i)||²₂`` (paper Sec. 4.1, "Blur")."""
    return (x - gaussian_blur3x3(x)).pow(2).flatten(1).sum(1).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: per sample, the sum of ``|x[h+1, w] - x[h, w]|`` and
    ``|x[h, w+1] - x[h, w]|`` over all channels and positions; then the mean over samples."""
    _check_images(x, "total_variation")
    dh = (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(1)
    dw = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs().flatten(1).sum(1)
    return (dh + dw).mean()


BNStat = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def bn_statistics_loss(stats: Sequence[BNStat], first_weight: float = 1.0) -> torch.Tensor:
    """``Σ_layers w_l (||μ - μ_syn||² + ||σ - σ_syn||²)`` with ``σ = sqrt(var)``.

    ``stats`` holds one ``(mean_syn, var_syn, running_mean, running_var)`` tuple per BatchNorm layer,
    each a per-channel vector. ``w_l`` is ``first_weight`` for the first layer (the one closest to the
    pixels; DeepInversion weighs it 10×) and 1 for the others. An empty list gives 0.
    """
    if not stats:
        return torch.zeros(())
    total = None
    for i, (mean_syn, var_syn, running_mean, running_var) in enumerate(stats):
        std_syn = torch.sqrt(var_syn + BN_STD_EPS)
        std_run = torch.sqrt(running_var.to(var_syn) + BN_STD_EPS)
        term = (running_mean.to(mean_syn) - mean_syn).pow(2).sum() + (std_run - std_syn).pow(2).sum()
        if i == 0 and first_weight != 1.0:
            term = first_weight * term
        total = term if total is None else total + term
    return total  # type: ignore[return-value]


def batch_moments(inp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BatchNorm input: over (N, H, W) for 4-D input,
    (N, L) for 3-D input, and over the batch dimension for 2-D input (BatchNorm1d on features)."""
    dims = [0] + list(range(2, inp.ndim))
    return inp.mean(dim=dims), inp.var(dim=dims, unbiased=False)


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """``model.bn_layers()`` for an ExModelNet (or an Expert wrapping one), else every BatchNorm module."""
    target = getattr(model, "net", model)
    if hasattr(target, "bn_layers"):
        return [m for _, m in target.bn_layers()]
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


class BNStatsRecorder:
    """Forward hooks on every BatchNorm layer that record the batch statistics of its *input*.

    Use as a context manager; the hooks are removed on exit::

        with BNStatsRecorder(expert) as rec:
            expert(x)
            loss = rec.loss()          # bn_statistics_loss of the last forward pass

    Only the latest forward pass is kept. Set ``rec.enabled = False`` to run forward passes that
    must not overwrite the recorded statistics (e.g. a confidence check). Layers without running
    statistics (``track_running_stats=False``) are skipped.

    With ``rec.groups`` set to a (B,) tensor of group ids (e.g. the classes of the batch), the
    moments are taken within each group and :meth:`loss` is the mean of the groups' BN terms: every
    class on its own must look like the recorded data, not only the batch as a whole.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in batchnorm_layers(model) if m.running_mean is not None]
        self.enabled = True
        self.groups: torch.Tensor | None = None
        self._moments: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __len__(self) -> int:
        return len(self.layers)

    def _hook(self, index: int):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            if self.enabled:
                x = inputs[0]
                if self.groups is None:
                    self._moments[index] = [batch_moments(x)]
                else:
                    self._moments[index] = [batch_moments(x[self.groups == g]) for g in self.groups.unique()]
        return record

    def __enter__(self) -> "BNStatsRecorder":
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        self._moments = {}

    def group_stats(self) -> list[list[BNStat]]:
        """For each group (one without ``groups``), ``(mean_syn, var_syn, running_mean, running_var)``
        for each layer seen in the last pass."""
        seen = [(i, layer) for i, layer in enumerate(self.layers) if i in self._moments]
        n_groups = len(self._moments[seen[0][0]]) if seen else 0
        return [[(*self._moments[i][g], layer.running_mean, layer.running_var) for i, layer in seen]
                for g in range(n_groups)]  # type: ignore[misc]

    @property
    def stats(self) -> list[BNStat]:
        """``(mean_syn, var_syn, running_mean, running_var)`` for each layer seen in the last pass
        (of the first group when ``groups`` is set)."""
        groups = self.group_stats()
        return groups[0] if groups else []

    def loss(self, first_weight: float = 1.0) -> torch.Tensor:
        groups = self.group_stats()
        if not groups:
            return torch.zeros(())
        return torch.stack([bn_statistics_loss(g, first_weight) for g in groups]).mean()


def diversity_loss(features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean pairwise cosine similarity between the feature vectors of different samples.

    ``features`` is (B, D). With ``labels`` only pairs of samples with the same label count (samples
    of different classes already differ; we want variety *within* a class). Minimising it spreads the
    batch out in feature space. Returns 0 when there is no pair.
    """
    if features.ndim != 2:
        raise ValueError(f"diversity_loss: expected features shaped (B, D), got {tuple(features.shape)}")
    unit = F.normalize(features, dim=1)
    sim = unit @ unit.T
    b = features.shape[0]
    mask = ~torch.eye(b, dtype=torch.bool, device=features.device)
    if labels is not None:
        mask &= labels.view(-1, 1) == labels.view(1, -1)
    if not bool(mask.any()):
        return features.new_zeros(())
    return sim[mask].mean()



# ---------------------------------------------------------------------------------------------- BN-free priors
# An expert without BatchNorm records no statistics of its training data, so the BN term above has
# nothing to match. These terms need only what every expert has: its input normalization and its
# penultimate features (``forward_features``).


def input_moments_loss(x: torch.Tensor) -> torch.Tensor:
    """``||μ_syn||² + ||σ_syn − 1||²`` summed over channels, where ``μ_syn`` and ``σ_syn`` are the
    per-channel mean and (biased) standard deviation over (N, H, W) of a batch ``x`` of *normalized*
    images.

    Every expert standardises its input with the per-channel mean and std of its training data, so
    on real data the normalized pixels have mean 0 and std 1 per channel: the normalization is a
    BatchNorm layer in front of the network whose running statistics are known, and this is the BN
    term of that layer (:func:`bn_statistics_loss` with running mean 0 and variance 1). On MNIST
    (mean 0.13, std 0.31 in [0, 1]) it asks for near-binary images with about 13 % ink: dark
    background, bright strokes.
    """
    _check_images(x, "input_moments_loss")
    mean, var = batch_moments(x)
    std = torch.sqrt(var + BN_STD_EPS)
    return mean.pow(2).sum() + (std - 1.0).pow(2).sum()


def activation_loss(features: torch.Tensor) -> torch.Tensor:
    """DAFL's activation loss (Chen et al. 2019): ``−mean |features|``, the negative mean absolute
    value over the batch and the feature dimensions. Real images excite the expert's penultimate
    features far more than patterns that merely cross its decision boundary; minimising this asks
    for such images."""
    if features.ndim != 2:
        raise ValueError(f"activation_loss: expected features shaped (B, D), got {tuple(features.shape)}")
    return -features.abs().mean()


def entropy_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """DAFL's information-entropy loss: ``Σ_k p̄_k log p̄_k`` (the negative entropy) of the batch's
    mean class distribution ``p̄``; minimal (−log K) when the batch is spread evenly over the K
    classes. ``probs`` is (B, K), rows summing to 1."""
    if probs.ndim != 2:
        raise ValueError(f"entropy_balance_loss: expected probabilities shaped (B, K), got {tuple(probs.shape)}")
    mean = probs.mean(0)
    return (mean * torch.log(mean.clamp_min(1e-12))).sum()
