"""Knowledge sources: the common contract, and what each source promises on a small trained expert."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from exmodel.data.registry import load_dataset
from exmodel.errors import ConfigError
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.synthesis import balanced_labels, build_source, list_sources
from exmodel.synthesis.auxiliary import balanced_subset
from exmodel.synthesis.guide import Guide
from exmodel.synthesis.impression import class_similarity, dirichlet_concentration
from exmodel.training import FitSettings, fit

TRAINED = (3, 7)  # the expert's classes; its head covers all 10 digits (the paper's "full" head)
FAST = {"steps": 5, "batch_size": 16}  # enough to exercise batching without spending time


def make_card(arch: str, net, class_ids: list[int], trained: list[int], side: int = 28) -> ExpertCard:
    return ExpertCard(name=f"test-{arch}", arch=arch, arch_kwargs=dict(net.arch_kwargs), class_ids=class_ids,
                      class_names=[str(c) for c in class_ids], trained_class_ids=trained, num_global_classes=10,
                      input_shape=(1, side, side), normalization={"mean": [0.1307], "std": [0.3081]})


@pytest.fixture(scope="module")
def experience():
    """200 MNIST training images of each trained class (the experience's data)."""
    train = load_dataset("mnist").train
    idx = torch.cat([torch.nonzero(train.labels == c).flatten()[:200] for c in TRAINED])
    return train.subset(idx)


@pytest.fixture(scope="module")
def expert(experience) -> Expert:
    """A LeNet with BatchNorm trained for 2 epochs on 3s and 7s (about a second on one core)."""
    torch.manual_seed(0)
    class_ids = list(range(10))
    net = build_model("lenet_bn", num_classes=10, in_channels=1, input_size=28)
    e = Expert(make_card("lenet_bn", net, class_ids, list(TRAINED)), net)
    fit(e, experience, FitSettings(epochs=2, batch_size=32, lr=1e-3), torch.Generator().manual_seed(0),
        label_map={c: c for c in class_ids})
    return e


class FakeProgress:
    def __init__(self) -> None:
        self.totals: dict[int, int] = {}
        self.advanced: Counter[int] = Counter()
        self.removed: list[int] = []

    def add(self, description: str, total: int) -> int:
        self.totals[len(self.totals)] = total
        return len(self.totals) - 1

    def advance(self, task: int, n: int = 1) -> None:
        self.advanced[task] += n

    def remove(self, task: int) -> None:
        self.removed.append(task)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def trained_prediction(expert: Expert, x01: torch.Tensor, classes=TRAINED) -> torch.Tensor:
    with torch.no_grad():
        logits = expert.global_logits(x01)
    return torch.tensor(classes)[logits[:, list(classes)].argmax(1)]


# ------------------------------------------------------------------------------------------ balanced labels
def test_balanced_labels_spreads_evenly_and_shuffles():
    y = balanced_labels([4, 1, 9], 10, gen())
    counts = Counter(y.tolist())
    assert set(counts) == {1, 4, 9} and sorted(counts.values()) == [3, 3, 4]
    assert y.dtype == torch.int64 and len(y) == 10
    assert torch.equal(y, balanced_labels([4, 1, 9], 10, gen()))
    # the extra sample does not always go to the same class, and the order is mixed
    winners = {Counter(balanced_labels([4, 1, 9], 4, gen(s)).tolist()).most_common(1)[0][0] for s in range(12)}
    assert len(winners) > 1
    assert sorted(balanced_labels([0, 1], 40, gen()).tolist()) != balanced_labels([0, 1], 40, gen()).tolist()


def test_balanced_labels_edge_cases():
    assert balanced_labels([2, 5], 0, gen()).tolist() == []
    assert sorted(balanced_labels([2, 5, 8], 2, gen()).tolist()) in ([2, 5], [2, 8], [5, 8])
    with pytest.raises(ValueError, match="classes must not be empty"):
        balanced_labels([], 3, gen())


# ------------------------------------------------------------------------------------------ registry
def test_registry_lists_sources_and_rejects_typos():
    assert list_sources() == ["auxiliary", "data_impression", "delegator", "generative", "model_inversion", "noise",
                              "replay"]
    with pytest.raises(ConfigError, match="unknown knowledge source 'inversion'; available: auxiliary, "):
        build_source("inversion", {})
    with pytest.raises(ConfigError, match="'model_inversion': unknown param 'stpes'; allowed: temperature, w_bn, ") as err:
        build_source("model_inversion", {"stpes": 3})
    assert ", batch_size, steps, lr, " in str(err.value) and str(err.value).count("\n") == 0
    with pytest.raises(ConfigError, match="'noise': param std: Input should be greater than 0"):
        build_source("noise", {"std": -1})
    src = build_source("model_inversion", {"steps": 7})
    assert src.params.steps == 7 and src.params.lr == 0.1
    assert (src.ex_model, src.needs_data) == (True, False)
    replay = build_source("replay")
    assert (replay.ex_model, replay.needs_data) == (False, True)


# ------------------------------------------------------------------------------------------ the contract
SOURCES = [
    ("model_inversion", FAST),
    ("data_impression", FAST),
    ("generative", {"steps": 5, "batch_size": 16}),
    ("delegator", {"epochs": 2, "batch_size": 8}),
    ("auxiliary", {"batch_size": 16}),
    ("noise", {"batch_size": 16}),
    ("replay", {}),
]


@pytest.mark.parametrize(("name", "params"), SOURCES, ids=[s[0] for s in SOURCES])
def test_source_contract(name, params, expert, experience):
    src = build_source(name, params)
    expert.train()  # generation must put it in eval mode and restore this
    expert.net.block1[0].bias.requires_grad_(False)  # a mixed set of flags must come back as it was
    before = copy.deepcopy(expert.state_dict())
    flags = [p.requires_grad for p in expert.parameters()]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    progress = FakeProgress()

    x, y = src.generate(expert, 37, gen(5), data=experience, progress=progress)  # type: ignore[arg-type]

    # the caller's global random stream is untouched
    assert torch.equal(torch.rand(3), expected_next)
    assert x.shape == (37, 1, 28, 28) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert y.shape == (37,) and y.dtype == torch.int64
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert set(y.tolist()) <= set(TRAINED)
    # the expert is unchanged: weights, BN running statistics, flags and mode
    after = expert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in expert.parameters()] == flags
    assert expert.training
    # progress: one task per generate call, fully advanced, then removed
    if name != "replay":
        assert list(progress.totals) == [0] and progress.removed == [0]
        assert progress.advanced[0] == progress.totals[0] > 0
    # same generator seed -> same output; another seed -> different images
    expert.eval()
    x2, y2 = src.generate(expert, 37, gen(5), data=experience)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = src.generate(expert, 37, gen(6), data=experience)
    assert not torch.equal(x, x3)
    expert.net.block1[0].bias.requires_grad_(True)


@pytest.mark.parametrize("name", ["model_inversion", "data_impression", "generative", "delegator", "noise", "auxiliary",
                                  "replay"])
def test_source_rejects_classes_the_expert_does_not_output(name, experience):
    torch.manual_seed(0)
    net = build_model("lenet", num_classes=2)
    local = Expert(make_card("lenet", net, [3, 7], [3, 7]), net)  # local head: outputs only 3 and 7
    with pytest.raises(ValueError, match=r"class 5 is not an output of expert 'test-lenet' \(class_ids \[3, 7\]\)"):
        params = FAST if "_" in name or name == "generative" else {}
        build_source(name, params).generate(local, 4, gen(), classes=[3, 5], data=experience)


# ------------------------------------------------------------------------------------------ model inversion
def test_model_inversion_reaches_the_targets(expert):
    src = build_source("model_inversion", {"steps": 60, "batch_size": 64})
    x, y = src.generate(expert, 64, gen(1))
    assert sorted(Counter(y.tolist()).values()) == [32, 32]
    hits = (trained_prediction(expert, x, range(10)) == y).float().mean().item()
    assert hits >= 0.9  # classified as its target among all 10 output units (noise: about half)
    with torch.no_grad():
        prob = expert.global_logits(x).softmax(1).gather(1, y.view(-1, 1))
    # confidently so: after 5 steps no sample is above 0.9, after 60 all of them are
    assert (prob >= 0.9).float().mean().item() >= 0.9


def head_calls(expert: Expert, source, **kwargs) -> tuple[int, torch.Tensor]:
    """How many times the expert's head ran while ``source`` generated (optimisation + checks)."""
    calls = []
    hook = expert.net.head.register_forward_hook(lambda *_: calls.append(1))
    try:
        _, y = source.generate(expert, 9, gen(), **kwargs)
    finally:
        hook.remove()
    return len(calls), y


def test_model_inversion_stops_early_once_confident(expert):
    # 20 steps, no early stop: exactly 20 forward passes
    assert head_calls(expert, build_source("model_inversion", {"steps": 20, "confidence": None}))[0] == 20
    # a reachable threshold, checked every 5 steps: k steps + k / 5 checks, far below 200 + 39
    calls, y = head_calls(expert, build_source("model_inversion", {"steps": 200, "confidence": 0.5, "check_every": 5}),
                          classes=[7])
    assert 0 < calls < 100
    assert y.tolist() == [7] * 9


# ------------------------------------------------------------------------------------------ data impression
def test_class_similarity_by_hand():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-1.0, 0.0]])
    r = 2**-0.5
    expected = torch.tensor([[1, 0, r, -1], [0, 1, r, 0], [r, r, 1, -r], [-1, 0, -r, 1]], dtype=torch.float32)
    torch.testing.assert_close(class_similarity(w), expected)


def test_dirichlet_concentration_min_max_scales_rows():
    c = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    alpha = dirichlet_concentration(c, beta=2.0, eps=0.01)
    # row 0: (1, -1, 0) -> (1, 0, 0.5) -> 2 * that + 0.01
    torch.testing.assert_close(alpha[0], torch.tensor([2.01, 0.01, 1.01]))
    torch.testing.assert_close(alpha[2], torch.tensor([0.01, 0.01, 2.01]))
    assert (alpha > 0).all()
    torch.testing.assert_close(dirichlet_concentration(torch.ones(1, 1), beta=0.5, eps=0.01), torch.tensor([[0.51]]))
    with pytest.raises(ValueError, match="beta must be > 0"):
        dirichlet_concentration(c, beta=0.0)


@pytest.mark.parametrize(("over", "width"), [("trained", 2), ("all", 10)])
def test_data_impression_label_is_argmax_of_its_soft_target(expert, over, width):
    src = build_source("data_impression", {**FAST, "similarity_over": over})
    x, y, targets = src.generate_with_targets(expert, 40, gen(2))
    units = list(TRAINED) if over == "trained" else list(range(10))
    assert targets.shape == (40, width)
    torch.testing.assert_close(targets.sum(1), torch.ones(40))
    assert y.tolist() == [units[i] for i in targets.argmax(1).tolist()]
    assert x.shape == (40, 1, 28, 28)


def test_data_impression_rejects_classes_outside_its_units(expert):
    with pytest.raises(ValueError, match=r"classes \[5\] are not among the trained output units \[3, 7\]"):
        build_source("data_impression", FAST).generate(expert, 4, gen(), classes=[3, 5])


# ------------------------------------------------------------------------------------------ auxiliary data
def test_auxiliary_labels_are_the_expert_predictions(expert):
    fashion = load_dataset("fashion_mnist").train
    x, y = build_source("auxiliary").generate(expert, 50, gen(3))
    assert torch.equal(y, trained_prediction(expert, x))
    # the images are genuine Fashion-MNIST images, all distinct
    pixels = {bytes(img) for img in fashion.images.flatten(1).numpy()}
    drawn = [bytes(img) for img in (x * 255).round().to(torch.uint8).flatten(1).numpy()]
    assert set(drawn) <= pixels and len(set(drawn)) == 50


def test_auxiliary_balance_picks_a_class_balanced_subset(expert):
    x, y = build_source("auxiliary", {"balance": True}).generate(expert, 30, gen(3))
    assert Counter(y.tolist()) == {3: 15, 7: 15}
    assert torch.equal(y, trained_prediction(expert, x))


def test_auxiliary_redraws_images_the_expert_assigns_to_the_requested_class(expert):
    fashion = load_dataset("fashion_mnist").train
    src = build_source("auxiliary")
    want = torch.tensor([3, 7, 7, 3, 3, 7])
    assert src.redraw(want, gen(0)) is None  # nothing generated yet
    src.generate(expert, 10, gen(3))
    x, y = src.redraw(want, gen(4))
    assert torch.equal(y, trained_prediction(expert, x)) and torch.equal(y, want)
    pixels = {bytes(img) for img in fashion.images.flatten(1).numpy()}
    assert {bytes(img) for img in (x * 255).round().to(torch.uint8).flatten(1).numpy()} <= pixels
    src.release()
    assert src.redraw(want, gen(4)) is None


def test_balanced_subset_by_hand():
    labels = torch.tensor([3, 3, 3, 7, 3])
    # quotas 2 + 2: positions 0, 1 (class 3) and 3 (class 7); class 7 is one short -> position 2
    assert balanced_subset(labels, [3, 7], 4, gen()).tolist() == [0, 1, 2, 3]


def test_auxiliary_shape_mismatch_is_a_config_error():
    torch.manual_seed(0)
    net = build_model("lenet", num_classes=2, input_size=32)
    big = Expert(make_card("lenet", net, [0, 1], [0, 1], side=32), net)
    with pytest.raises(ConfigError, match=r"dataset 'fashion_mnist' has images shaped \(1, 28, 28\) but expert "
                                          r"'test-lenet' expects \(1, 32, 32\)"):
        build_source("auxiliary").generate(big, 4, gen())


# ------------------------------------------------------------------------------------------ replay, noise
def test_replay_returns_real_balanced_samples(expert, experience):
    x, y = build_source("replay").generate(expert, 31, gen(4), data=experience)
    assert sorted(Counter(y.tolist()).values()) == [15, 16]
    index = {bytes(img): int(lbl) for img, lbl in zip(experience.images.flatten(1).numpy(), experience.labels)}
    drawn = [bytes(img) for img in (x * 255).round().to(torch.uint8).flatten(1).numpy()]
    assert [index[d] for d in drawn] == y.tolist()  # every image is real and carries its true label
    assert len(set(drawn)) == 31


def test_replay_without_data_fails(expert):
    with pytest.raises(ValueError, match=r"'replay' needs the experience's training data \(data=None given\)"):
        build_source("replay").generate(expert, 4, gen())


def test_noise_is_grey_noise_labelled_by_the_expert(expert):
    x, y = build_source("noise", {"std": 0.1}).generate(expert, 64, gen(7))
    assert abs(x.mean().item() - 0.5) < 0.02 and 0.08 < x.std().item() < 0.12
    assert torch.equal(y, trained_prediction(expert, x))


# ------------------------------------------------------------------------------------------ generative inversion
def test_generator_draws_valid_images_of_any_size():
    from exmodel.synthesis.generative import ConditionalGenerator

    torch.manual_seed(0)
    for shape in [(1, 28, 28), (3, 32, 32), (3, 30, 26)]:
        g = ConditionalGenerator(3, shape, z_dim=8, width=4)
        x = g(torch.randn(5, 8), torch.tensor([0, 1, 2, 0, 1]))
        assert x.shape == (5, *shape) and 0.0 <= x.min().item() and x.max().item() <= 1.0


def test_generative_inversion_reaches_the_targets(expert):
    src = build_source("generative", {"steps": 60, "batch_size": 64, "relabel": False, "w_bn": 0.1})  # 0.97 at 50
    x, y = src.generate(expert, 64, gen(1))
    assert sorted(Counter(y.tolist()).values()) == [32, 32]
    # classified as its target among all 10 output units (an untrained generator: about half)
    assert (trained_prediction(expert, x, range(10)) == y).float().mean().item() >= 0.9
    # and different samples of a class are different images
    assert (x[y == 3][0] - x[y == 3][1]).abs().max().item() > 0.05


def test_generative_relabel_takes_the_expert_prediction(expert):
    x, y = build_source("generative", {"steps": 3, "batch_size": 16, "relabel": True}).generate(expert, 24, gen(2))
    assert torch.equal(y, trained_prediction(expert, x))


def test_several_generators_each_draw_an_interleaved_share(expert, monkeypatch):
    from exmodel.synthesis.generative import GenerativeInversion

    trained, drawn = [], []
    train, sample = GenerativeInversion.train_generator, GenerativeInversion.sample
    monkeypatch.setattr(GenerativeInversion, "train_generator",
                        lambda self, *a, **k: trained.append(1) or train(self, *a, **k))
    monkeypatch.setattr(GenerativeInversion, "sample",
                        lambda self, g, c, y, r: drawn.append(y.tolist()) or sample(self, g, c, y, r))
    src = build_source("generative", {"steps": 2, "batch_size": 8, "generators": 3, "relabel": False})
    x, y = src.generate(expert, 7, gen(4))
    assert len(trained) == 3 and drawn == [y[0::3].tolist(), y[1::3].tolist(), y[2::3].tolist()]
    assert x.shape == (7, 1, 28, 28) and 0.0 <= x.min().item() and x.max().item() <= 1.0
    trained.clear()
    src.generate(expert, 2, gen(4))  # fewer samples than generators: only as many generators as samples
    assert len(trained) == 2


def test_generative_redraws_fresh_images_until_released(expert):
    src = build_source("generative", {"steps": 3, "batch_size": 16, "relabel": False})
    assert src.redraw(torch.tensor([3]), gen(0)) is None  # nothing generated yet
    x, _ = src.generate(expert, 8, gen(5))
    want = torch.tensor([3, 7, 7, 3, 3])
    x2, y2 = src.redraw(want, gen(6))
    assert torch.equal(y2, want) and x2.shape == (5, 1, 28, 28) and 0.0 <= x2.min() and x2.max() <= 1.0
    assert not any(torch.equal(a, b) for a in x2 for b in x)  # new codes, new images
    relabelled = build_source("generative", {"steps": 3, "batch_size": 16, "relabel": True})
    relabelled.generate(expert, 8, gen(5))
    x3, y3 = relabelled.redraw(want, gen(6))
    assert torch.equal(y3, trained_prediction(expert, x3))  # fresh images are labelled like the buffer's
    src.release()
    assert src.redraw(want, gen(6)) is None
    assert build_source("noise").redraw(want, gen(6)) is None  # sources without a generator draw no more


class BrightIsFive(torch.nn.Module):
    """A stand-in previous ex-model: its logit for class 5 grows with the image's brightness."""

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x01), 10)
        return out + F.one_hot(torch.tensor(5), 10) * 20 * x01.mean((1, 2, 3)).unsqueeze(1)


def test_a_guide_steers_the_generator_away_from_old_classes(expert):
    params = {"steps": 20, "batch_size": 32, "relabel": False, "w_bn": 0.0}  # 0.67 darker at 20 steps
    guide = Guide(BrightIsFive(), torch.arange(10) == 5, (1, 28, 28))
    plain, _ = build_source("generative", params).generate(expert, 64, torch.Generator().manual_seed(0))
    off, _ = build_source("generative", params).generate(expert, 64, torch.Generator().manual_seed(0), guide=guide)
    assert torch.equal(plain, off)  # w_guide 0: the guide is ignored
    guided, _ = build_source("generative", {**params, "w_guide": 5.0}).generate(
        expert, 64, torch.Generator().manual_seed(0), guide=guide)
    assert guided.mean().item() < plain.mean().item() - 0.05  # darker: less of an old "5" to the guide


def test_prior_terms_adds_each_weighted_prior_by_hand():
    from exmodel.synthesis.objective import PriorParams, prior_terms
    from exmodel.synthesis.priors import diversity_loss, total_variation

    x01 = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    tv_in = 2 * x01 - 1
    feats, labels = torch.randn(4, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 0, 1, 1])
    assert prior_terms(PriorParams(), x01=x01, tv_input=tv_in, features=feats, labels=labels, bn=None) == 0.0
    p = PriorParams(w_l1=0.5, w_tv=0.25, w_div=2.0)
    got = prior_terms(p, x01=x01, tv_input=tv_in, features=feats, labels=labels, bn=None)
    want = 0.5 * x01.sum() / 4 + 0.25 * total_variation(tv_in) + 2.0 * diversity_loss(feats, labels)
    torch.testing.assert_close(got, want)
    only_tv = prior_terms(PriorParams(w_tv=1.0), x01=x01, tv_input=tv_in, features=feats, labels=labels, bn=None)
    assert only_tv.item() == pytest.approx(2 * total_variation(x01).item(), rel=1e-5)  # TV of tv_input, not x01


def test_upsample2_is_nearest_interpolation_with_and_without_gradients():
    from exmodel.synthesis.upsample import Upsample2, upsample2

    x = torch.randn(2, 3, 4, 5, generator=gen(0), requires_grad=True)
    y = torch.randn(2, 3, 8, 10, generator=gen(1))
    ref = F.interpolate(x, scale_factor=2)
    with torch.no_grad():  # the broadcast view: the same values
        assert torch.equal(upsample2(x), ref) and torch.equal(Upsample2()(x), ref)
        assert upsample2(x).is_contiguous()
    (g,) = torch.autograd.grad((Upsample2()(x) * y).sum(), x)  # with gradients: F.interpolate itself
    (g_ref,) = torch.autograd.grad((ref * y).sum(), x)
    assert torch.equal(g, g_ref)
