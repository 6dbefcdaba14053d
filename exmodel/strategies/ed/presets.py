"""The Ex-Model Distillation presets, each a typed :class:`EDParams` registered under its name: the
paper's settings (``<x>_ed_paper``) and ours (``<x>_ed``), per knowledge source. A config's
``params`` update the preset's values. Every value cites the paper or the measurement that chose it.
"""

from __future__ import annotations

from typing import Any

from exmodel.strategies.ed.params import EDParams

# The paper (Sec. 3-5) fixes N = 5,000, SGD, MSE + λ_CE·CE, augmentation of synthetic images during
# generation and distillation, and the priors of Sec. 4.1 (L2, blur, BN statistics); it leaves the
# iteration counts, learning rates and prior weights to its code. Where it is silent we use the
# EDParams / source defaults, chosen on a validation split.
_PAPER_COMMON: dict[str, Any] = {"buffer_size": 5000, "iterations": 1000, "optimizer": "sgd", "lr": 0.01,
                                 "lambda_ce": 1.0, "augment": True, "quantize_buffer": False}
# The paper gives neither the pixel learning rate nor the BN weight; lr 0.6 and BN 1 were chosen
# on a validation split for model inversion (43.5 % there; with lr 0.1 and BN 1e-3 it was 20.7 % on
# the embedded test set). Data impression optimises pixels the same way with another target loss,
# so it shares them.
_PAPER_PIXELS: dict[str, Any] = {"steps": 200, "lr": 0.6, "w_bn": 1.0}
PRESETS: dict[str, EDParams] = {}
PRESETS["mi_ed_paper"] = EDParams(
    # The paper inverts with CE(f(x)/τ) and does not give τ: 0.5 was chosen on the validation splits of
    # the three streams (41.4 against 38.6 % with τ = 1; docs/ed_tuning.md, "The paper presets").
    source="model_inversion", **_PAPER_COMMON,
    source_params={**_PAPER_PIXELS, "temperature": 0.5, "confidence": 0.99})
PRESETS["di_ed_paper"] = EDParams(
    # Nayak et al. 2019 use a softmax temperature of 20 for the Dirichlet targets and β ∈ {1.0, 0.1}.
    source="data_impression", **_PAPER_COMMON,
    source_params={**_PAPER_PIXELS, "temperature": 20.0, "beta": 1.0})
PRESETS["aux_ed_paper"] = EDParams(source="auxiliary", **_PAPER_COMMON, source_params={"dataset": "fashion_mnist"})
PRESETS["replay_ed_paper"] = EDParams(source="replay", **_PAPER_COMMON)
PRESETS["noise_ed_paper"] = EDParams(source="noise", **_PAPER_COMMON)
# Ours. Measured on the validation split of Split-MNIST (docs/ed_tuning.md; ablation in the README):
# model inversion through a small conditional generator (``generative``: smooth, stroke-like images
# instead of per-pixel noise) with BN-statistics matching and a within-class diversity term, labels
# from the expert's prediction, Adam (lr 1e-3) distillation with style jitter, and a 2,000-sample
# uint8 buffer. Diversity weight 1.5 rather than 3: 85.9 against 84.8 % on the validation splits of
# three NC streams (likely because a two-class expert's region for one class holds every other digit,
# which a strong diversity term fills with look-alikes; not measured).
_OURS_COMMON: dict[str, Any] = {"buffer_size": 2000, "iterations": 1000, "optimizer": "adam", "lr": 0.001,
                                "lambda_ce": 1.0, "augment": True, "quantize_buffer": True}
_OURS_PRIORS: dict[str, Any] = {"w_bn": 1.0, "w_tv": 0.01, "steps": 100}
_OURS_GENERATOR: dict[str, Any] = {"steps": 500, "w_bn": 0.3, "w_div": 1.5, "relabel": True}
# The generator's realism prior is chosen per expert (``prior: auto``, the source's default): the BN
# term above for an expert with BatchNorm layers (unchanged), and for one without the ``bn_free``
# prior — input-normalization moments (``w_input`` 1) and DAFL's activation loss (``w_act`` 0.1) —
# which lifted plain-LeNet experts from 21.2 to 37.1 % on validation (docs/ed_tuning.md, "Experts
# without BatchNorm").
# Style jitter in distillation (random stroke width, gamma, blur): every generator draws in its own
# style, shared by the classes of its expert; jittering it keeps the ex-model from telling experts
# apart by style instead of classes apart by shape (+3.4 points on validation).
_OURS_JITTER: dict[str, Any] = {"jitter_morph": 0.5, "jitter_gamma": 0.7, "jitter_blur": 0.3}
# Not in the default: an ex-model without BatchNorm (``norm: auto``) with a cosine lr gained 2.3 points
# on the validation splits of three NC streams but nothing on the test streams (82.4 against 82.6) and
# lost 2.4 on Joint MNIST (95.5 against 98.1 on validation); see docs/ed_tuning.md.
PRESETS["mi_ed"] = EDParams(source="generative", **_OURS_COMMON, source_params=_OURS_GENERATOR, **_OURS_JITTER)
PRESETS["di_ed"] = EDParams(
    # Data impression with the converged pixel optimiser of the paper preset (lr 0.6, 200 steps) and the
    # style jitter: 71.8 % on validation, against 55.7 % without the jitter.
    source="data_impression", **_OURS_COMMON, **_OURS_JITTER,
    source_params={**_OURS_PRIORS, **_PAPER_PIXELS, "temperature": 20.0, "beta": 1.0})
PRESETS["aux_ed"] = EDParams(
    # Auxiliary data, class-balanced, with the style jitter: 28.2 % on validation against 23.0 % without.
    source="auxiliary", **_OURS_COMMON, **_OURS_JITTER, source_params={"dataset": "fashion_mnist", "balance": True})
PRESETS["replay_ed"] = EDParams(source="replay", **_OURS_COMMON)
# SKD's knowledge delegator (imitate & explore against each expert, paper 002 Sec. III-B) as the source,
# with our distillation settings; measured in docs/results.md, "SKD".
PRESETS["skd_ed"] = EDParams(source="delegator", **_OURS_COMMON, **_OURS_JITTER)
PRESETS["noise_ed"] = EDParams(source="noise", **_OURS_COMMON)
