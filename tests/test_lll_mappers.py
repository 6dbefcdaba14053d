"""Task mappers and heads of the LLL agent, against hand computations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exmodel.agents import mappers as M
from exmodel.agents.lll import HeadParams, fit_linear_head, maha_picks
from exmodel.agents.sequential import validation_split
from exmodel.reporting.lll_plots import normalized


def test_gmmc_scores_match_scikit_learn_per_component() -> None:
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 6))).float()
    a = M.fit_gmmc(x[:100], k=3, seed=0)
    b = M.fit_gmmc(x[100:] + 4, k=2, seed=0)
    scores = M.gmmc_scores(x[:5], [a, b])
    # task a's score is the best weighted component log-density: sklearn's _estimate_weighted_log_prob
    gm = GaussianMixture(3, covariance_type="diag").fit(x[:100].numpy())
    gm.weights_, gm.means_, gm.covariances_ = a.weights.double().numpy(), a.means.double().numpy(), a.variances.double().numpy()
    gm.precisions_cholesky_ = 1 / np.sqrt(gm.covariances_)
    ref = gm._estimate_weighted_log_prob(x[:5].double().numpy()).max(1)
    assert np.allclose(scores[:, 0].numpy(), ref, atol=1e-6)
    assert scores.shape == (5, 2) and (scores[:, 0] > scores[:, 1]).all()  # the shifted task is far away


def test_gmmc_caps_clusters_by_samples() -> None:
    a = M.fit_gmmc(torch.randn(10, 4), k=25)
    assert len(a.weights) == 5 and a.means.shape == (5, 4) and float(a.weights.sum()) == pytest.approx(1, abs=1e-5)


def test_training_cost_formulas_by_hand() -> None:
    from exmodel.agents.sequential import maha_receiver_macs

    # k-means (at most 300 Lloyd steps) + 4 n k d per EM iteration
    assert M.gmmc_fit_macs(100, 5, 8, iterations=10) == 100 * 5 * 8 * (300 + 40)
    # the receiver's SVD after each task: 10 then 25 shared samples of dimension 20
    assert maha_receiver_macs([10, 15], 20) == 10 * 20 * 10 + 25 * 20 * 20
    assert M.fit_gmmc(torch.randn(40, 3), k=2).fit_macs >= 40 * 2 * 3 * 300


def test_tied_covariance_by_hand() -> None:
    samples = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    means = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    # deviations (-1,0), (1,0), (0,-1), (0,1): Σ = diag(2, 2) / 4
    assert torch.allclose(M.tied_covariance(samples, labels, means), torch.diag(torch.tensor([0.5, 0.5])).double())


def test_mahalanobis_by_hand_and_scores_per_task() -> None:
    means = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    prec = torch.diag(torch.tensor([1.0, 0.25])).double()
    x = torch.tensor([[1.0, 2.0]])
    d2 = M.mahalanobis_sq(x, means, prec)
    assert torch.allclose(d2, torch.tensor([[1 + 1.0, 9 + 1.0, 1 + 1.0]]).double())
    owners = torch.tensor([0, 1, 1])
    s = M.maha_scores(x, means, owners, prec, 2)
    assert torch.allclose(s, torch.tensor([[-1.0, -1.0]]).double())


def test_ledoit_wolf_precision_is_sklearns_and_pinv_is_papers() -> None:
    from sklearn.covariance import ledoit_wolf

    rng = np.random.default_rng(1)
    samples = torch.from_numpy(rng.normal(size=(12, 30)))  # fewer samples than dimensions
    labels = torch.arange(12) % 3
    means = torch.stack([samples[labels == c].mean(0) for c in range(3)])
    lw = M.precision(samples, labels, means, "ledoit_wolf")
    ref = np.linalg.inv(ledoit_wolf((samples - means[labels]).numpy(), assume_centered=True)[0])
    assert np.allclose(lw.numpy(), ref)
    from scipy.linalg import pinvh

    cov = M.tied_covariance(samples, labels, means)
    pinv = M.precision(samples, labels, means, "none")
    assert torch.linalg.matrix_rank(cov) < 30 and torch.allclose(cov @ pinv @ cov, cov, atol=1e-8)
    assert np.allclose(pinv.numpy(), pinvh(cov.numpy()), atol=1e-8)
    with pytest.raises(ValueError, match="shrinkage must be 'none' or 'ledoit_wolf'"):
        M.precision(samples, labels, means, "oas")


def test_head_confidence_is_log_softmax_max() -> None:
    w, b = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2)
    x = torch.tensor([[2.0, 0.0]])
    conf = M.head_confidence(x, [(w, b)])
    assert conf.item() == pytest.approx(float(torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]))


def test_linear_head_reads_raw_features_and_separates_classes() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(50, 8, generator=g) * 3 + 100, torch.randn(50, 8, generator=g) * 3 + 106])
    y = torch.repeat_interleave(torch.arange(2), 50)
    stats: dict = {}
    w, b = fit_linear_head(x, y, 2, HeadParams(iterations=100), stats)
    assert w.shape == (2, 8) and b.shape == (2,)
    assert 1 <= stats["evaluations"] <= 125 and stats["macs"] == 2 * stats["evaluations"] * 100 * 8 * 2
    assert ((x @ w.T + b).argmax(1) == y).float().mean() >= 0.98  # raw, unstandardized features
    w2, b2 = fit_linear_head(x, y, 2, HeadParams(iterations=100))
    assert torch.equal(w, w2) and torch.equal(b, b2)  # deterministic


def test_maha_picks_m_per_class_seeded() -> None:
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 2])
    picks = maha_picks(labels, 3, 2, seed=0)
    assert labels[picks].tolist() == [0, 0, 1, 1, 2]
    assert torch.equal(picks, maha_picks(labels, 3, 2, seed=0))


def test_validation_split_holds_out_a_share_of_each_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    fit, held = validation_split(labels, 0.2, seed=0)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(16))
    assert labels[held].tolist() == [0, 0, 1]  # 2 of 10, 1 of 5, none of a single image


def test_normalized_accuracy_divides_by_the_accuracy_right_after_learning() -> None:
    acc = [[0.8], [0.4, 0.5], [0.2, 0.5, 0.9]]
    n = normalized(acc, 2)
    assert np.allclose(n[0], [1.0, 0.5, 0.25]) and np.isnan(n[1, 0]) and np.allclose(n[1, 1:], [1.0, 1.0])
