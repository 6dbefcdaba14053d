"""Task mappers: which task's head should answer an image, from anchors each task shares (SKILL Sec. 5).

* **GMMC** (Eq. 3-4): each task fits k = 25 diagonal Gaussians to its training features and shares
  their weights, means and variances. An image goes to the task owning the cluster of highest
  ``φ_m N(x | μ_m, Σ_m)`` among all received clusters.
* **MAHA** (Eq. 5, Lee et al. 2018): each task shares its class means and m = 5 images per class; the
  receiver computes their features and one covariance tied over every class received,
  ``Σ = 1/N Σ_c Σ_{i: y_i = c} (x_i − μ_c)(x_i − μ_c)ᵀ``, and sends an image to the task of the class
  of smallest Mahalanobis distance. With fewer shared images than feature dimensions the covariance
  is singular; the paper's form uses its pseudo-inverse (``shrinkage: none``).
* **ours** (``maha_lw`` + heads): the tied covariance shrunk towards a scaled identity by Ledoit and
  Wolf's formula (well conditioned for any N), and each task's score is its best class's
  ``−d²/2`` plus ``confidence`` times the log-probability that task's own head gives its top class:
  a task whose head does not recognise the image loses it. ``confidence`` is chosen on a validation
  split (``benchmarks/lll.py``).

All scores are computed in float64. Functions here are pure: anchors in, scores out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GMMC_K = 25  # clusters per task (Sec. 5)
MAHA_M = 5  # shared images per class (Sec. 5)


@dataclass(frozen=True)
class GMMCAnchor:
    weights: torch.Tensor  # (k,), sums to 1
    means: torch.Tensor  # (k, D)
    variances: torch.Tensor  # (k, D), > 0
    fit_macs: int = 0  # what fitting it cost (gmmc_fit_macs); not shared


def fit_gmmc(features: torch.Tensor, k: int = GMMC_K, seed: int = 0) -> GMMCAnchor:
    """k diagonal Gaussians fitted by EM (scikit-learn), k capped by the number of samples."""
    from sklearn.mixture import GaussianMixture

    k = max(1, min(k, len(features) // 2))
    gmm = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=1e-4, max_iter=200, random_state=seed)
    gmm.fit(features.double().numpy())
    as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    fit_macs = gmmc_fit_macs(len(features), k, features.shape[1], int(gmm.n_iter_))
    return GMMCAnchor(as_t(gmm.weights_), as_t(gmm.means_), as_t(gmm.covariances_), fit_macs)


def gmmc_fit_macs(n: int, k: int, d: int, iterations: int, kmeans_iterations: int = 300) -> int:
    """Multiply-accumulates of fitting k diagonal Gaussians to n d-dim points by EM, by formula:
    k-means initialisation (at most ``kmeans_iterations`` Lloyd steps of n k d) plus per EM iteration
    the E-step's weighted distances (2 n k d: squares and products against 1/σ²) and the M-step's
    means and variances (2 n k d)."""
    return n * k * d * (kmeans_iterations + 4 * iterations)


def gmmc_scores(x: torch.Tensor, anchors: list[GMMCAnchor]) -> torch.Tensor:
    """(N, T): per task, the largest ``log φ_m + log N(x | μ_m, diag σ²_m)`` over its clusters (Eq. 4's argmax).

    The quadratic term is expanded into three products on features centred on the task's mean of
    means; the products run in float32 (they are most of the cost), the sums in float64."""
    out, x = [], x.float()
    for a in anchors:
        var, centre = a.variances.double(), a.means.double().mean(0)
        mu, xc = a.means.double() - centre, x - centre.float()
        inv = 1.0 / var
        quad = ((xc * xc) @ inv.float().T).double() - 2 * (xc @ (mu * inv).float().T).double() + (mu * mu * inv).sum(1)
        log_n = -0.5 * (quad + torch.log(var).sum(1) + mu.shape[1] * np.log(2 * np.pi))
        out.append((torch.log(a.weights.double()) + log_n).max(1).values)
    return torch.stack(out, 1)


def tied_covariance(samples: torch.Tensor, labels: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """Σ = 1/N Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ (Eq. 5's covariance), float64."""
    centred = samples.double() - means.double()[labels]
    return centred.T @ centred / max(len(samples), 1)


def precision(samples: torch.Tensor, labels: torch.Tensor, means: torch.Tensor, shrinkage: str) -> torch.Tensor:
    """The inverse tied covariance: pseudo-inverse (``none``, the paper) or Ledoit-Wolf shrunk (``ledoit_wolf``)."""
    if shrinkage == "none":
        # Σ = CᵀC / N for the centred samples C (N, D): with C = U S Vᵀ (thin SVD, cheap when N < D),
        # Σ⁺ = V diag(N / s²) Vᵀ over the singular values above the usual pseudo-inverse cut-off.
        centred = samples.double() - means.double()[labels]
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        keep = s > s.max() * max(centred.shape) * torch.finfo(torch.float64).eps if len(s) else s > 0
        v = vh[keep].T
        return (v * (len(samples) / s[keep] ** 2)) @ v.T
    if shrinkage == "ledoit_wolf":
        from sklearn.covariance import ledoit_wolf

        centred = (samples.double() - means.double()[labels]).numpy()
        cov, _ = ledoit_wolf(centred, assume_centered=True)
        return torch.linalg.inv(torch.from_numpy(cov))
    raise ValueError(f"shrinkage must be 'none' or 'ledoit_wolf', got {shrinkage!r}")


def mahalanobis_sq(x: torch.Tensor, means: torch.Tensor, prec: torch.Tensor) -> torch.Tensor:
    """(N, C): (x − μ_c)ᵀ P (x − μ_c) for every image and class.

    Expanded as xᵀPx − 2 xᵀPμ + μᵀPμ after centring both on the means' average. The one large product,
    (N, D) x (D, D), runs in float32 (half the time of float64); the rest in float64."""
    centre = means.double().mean(0)
    xc, mu = (x.double() - centre), (means.double() - centre)
    xp = (xc.float() @ prec.float()).double()
    return ((xp * xc).sum(1, keepdim=True) - 2 * xp @ mu.T + ((mu @ prec) * mu).sum(1)).clamp_min(0)


def maha_scores(x: torch.Tensor, means: torch.Tensor, owners: torch.Tensor, prec: torch.Tensor,
                n_tasks: int) -> torch.Tensor:
    """(N, T): per task, −d²/2 of its nearest class (``owners[c]`` is class c's task)."""
    score = -0.5 * mahalanobis_sq(x, means, prec)
    out = torch.full((len(x), n_tasks), float("-inf"), dtype=torch.float64)
    for t in range(n_tasks):
        cols = owners == t
        if cols.any():
            out[:, t] = score[:, cols].max(1).values
    return out


def head_confidence(x: torch.Tensor, heads: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """(N, T): each task's head's log-probability of its own top class."""
    return torch.stack([torch.log_softmax(x.double() @ w.double().T + b.double(), 1).max(1).values
                        for w, b in heads], 1)
