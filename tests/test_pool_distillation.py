"""Consolidation on an auxiliary pool: the glyphs dataset, ownership by hand, and the whole path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import exmodel.data.glyphs as glyphs
from exmodel.consolidation import budget_params, consolidate
from exmodel.data.registry import clear_cache, load_dataset
from exmodel.errors import ExmodelError
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.pool_distillation import owner_targets


@pytest.fixture
def small_glyphs(monkeypatch):
    monkeypatch.setattr(glyphs, "SIZES", {"train": 240, "test": 40})
    clear_cache()
    yield
    clear_cache()


def test_glyphs_are_the_same_every_time_and_leave_the_global_generator_alone(small_glyphs):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = glyphs.render(50, seed=3)
    assert torch.equal(torch.rand(3), expected)  # rendering drew nothing from the global generator
    b = glyphs.render(50, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, glyphs.render(50, seed=4).images)
    assert a.images.shape == (50, 1, 28, 28) and a.images.dtype == torch.uint8
    assert 0 <= int(a.labels.min()) and int(a.labels.max()) < 62 and len(a.class_names) == 62
    ink = a.images.float().mean() / 255
    assert 0.03 < ink < 0.3  # bright strokes on black, like handwriting
    splits = load_dataset("glyphs")
    assert len(splits.train) == 240 and len(splits.test) == 40
    assert splits.train.mean[0] == pytest.approx(float(splits.train.images.float().mean() / 255))


class _Fixed(nn.Module):
    """Logits chosen per image: the image's first normalized pixel selects a row of ``table``."""

    def __init__(self, table: list[list[float]]) -> None:
        super().__init__()
        self.table = torch.tensor(table)

    def forward(self, x: torch.Tensor, task_id=None) -> torch.Tensor:
        return self.table[(x[:, 0, 0, 0] > 0).long()]


def _expert(name: str, classes: list[int], table: list[list[float]]) -> Expert:
    card = ExpertCard(name=name, arch="mlp", arch_kwargs={}, class_ids=classes, class_names=[str(c) for c in classes],
                      trained_class_ids=classes, num_global_classes=4, input_shape=(1, 2, 2),
                      normalization={"mean": [0.5], "std": [0.5]})
    return Expert(card, _Fixed(table))


def test_each_image_goes_to_the_most_confident_expert_with_its_probabilities():
    a = _expert("a", [0, 1], [[3.0, 0.0], [0.0, 0.0]])  # sure of the dark image, unsure of the bright one
    b = _expert("b", [2, 3], [[0.0, 0.0], [0.0, 4.0]])  # the other way round
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    targets, owner = owner_targets([a, b], x, num_classes=4)
    assert owner.tolist() == [0, 1]
    pa = 1 / (1 + math.exp(-3))
    pb = 1 / (1 + math.exp(-4))
    torch.testing.assert_close(targets, torch.tensor([[pa, 1 - pa, 0, 0], [0, 0, 1 - pb, pb]]))
    # ties go to the first expert
    _, owner = owner_targets([b, b], x, num_classes=4)
    assert owner.tolist() == [0, 0]


def test_temperature_brings_the_mean_confidence_to_the_target():
    from exmodel.pool_distillation import temperature_for

    logits = torch.tensor([[10.0, 0.0], [6.0, 0.0], [1.0, 0.0]])
    t = temperature_for(logits, 0.7)
    assert (logits / t).softmax(1).max(1).values.mean().item() == pytest.approx(0.7, abs=1e-6)
    assert temperature_for(logits, 0.9) < t  # surer on average: a lower temperature


def test_calibration_gives_an_image_to_the_expert_sure_of_it_by_its_own_standard():
    # a is sure of everything (raw confidence 1.0 and 0.998); b is unsure of the dark image (0.5)
    # and fairly sure of the bright one (0.95). Raw, a owns both; calibrated to the same mean
    # confidence 0.7, b's 0.9 on the bright image beats a's 0.64.
    a = _expert("a", [0, 1], [[10.0, 0.0], [6.0, 0.0]])
    b = _expert("b", [2, 3], [[0.0, 0.0], [0.0, 3.0]])
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    assert owner_targets([a, b], x, num_classes=4)[1].tolist() == [0, 0]
    targets, owner = owner_targets([a, b], x, num_classes=4, calibrate=0.7)
    assert owner.tolist() == [0, 1]
    pb = 1 / (1 + math.exp(-3))
    torch.testing.assert_close(targets[1], torch.tensor([0, 0, 1 - pb, pb]))  # the expert's own probabilities


def test_fixed_temperatures_are_the_calibration_of_the_images_given():
    from exmodel.pool_distillation import calibration_temperatures

    a = _expert("a", [0, 1], [[10.0, 0.0], [6.0, 0.0]])
    b = _expert("b", [2, 3], [[0.0, 0.0], [0.0, 3.0]])
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    temperatures = calibration_temperatures([a, b], x, 0.7)
    for got, want in zip(owner_targets([a, b], x, 4, temperatures=temperatures),
                         owner_targets([a, b], x, 4, calibrate=0.7)):
        torch.testing.assert_close(got, want)
    # temperatures fixed on the pool apply to any later batch: the bright image alone still goes to b
    assert owner_targets([a, b], x[1:], 4, temperatures=temperatures)[1].tolist() == [1]
    assert owner_targets([a, b], x[1:], 4)[1].tolist() == [0]


def test_a_heavier_pen_widens_strokes_by_one_pixel_each_side():
    from exmodel.synthesis.augment import heavy_pen

    x = torch.zeros(2, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0  # a dot
    x[:, 0, 0, 4] = 0.5  # a fainter one in the corner
    heavy = heavy_pen(x, 1.0)
    want = torch.zeros(5, 5)
    want[1:4, 1:4] = 1.0
    want[0:2, 3:5] = torch.maximum(want[0:2, 3:5], torch.tensor(0.5))
    torch.testing.assert_close(heavy[0, 0], want)
    assert torch.equal(heavy_pen(x, 0.0), x)
    picked = heavy_pen(torch.cat([x] * 50), 0.5, torch.Generator().manual_seed(0))
    thick = (picked.flatten(1).sum(1) > x[0].sum()).float().mean().item()
    assert 0.3 < thick < 0.7  # about half redrawn, the rest untouched
    assert torch.equal(picked, heavy_pen(torch.cat([x] * 50), 0.5, torch.Generator().manual_seed(0)))


def _mnist_like(name: str, classes: list[int], seed: int, arch: str) -> Expert:
    torch.manual_seed(seed)
    kwargs = {"hidden": [16]} if arch == "mlp" else {}
    net = build_model(arch, num_classes=len(classes), in_channels=1, input_size=28, **kwargs)
    card = ExpertCard(name=name, arch=arch, arch_kwargs=dict(net.arch_kwargs), class_ids=classes,
                      class_names=[str(c) for c in classes], trained_class_ids=classes, num_global_classes=10,
                      input_shape=(1, 28, 28), normalization={"mean": [0.5], "std": [0.5]})
    return Expert(card, net).eval()


def test_consolidate_on_the_pool_reports_agreement_and_is_deterministic(small_glyphs):
    experts = [_mnist_like("mlp", [0, 1, 2, 3, 4], 0, "mlp"), _mnist_like("cnn", [5, 6, 7, 8, 9], 1, "lenet_bn")]
    params = {"iterations": 3, "batch_size": 8}
    with pytest.warns(UserWarning):  # untrained experts: some will not be absorbed in three steps
        first = consolidate(experts, source="pool", arch="mlp", arch_kwargs={"hidden": [8]}, params=params, seed=0,
                            min_agreement=1.01)
    training = first.card.training
    assert training["method"] == "pool" and training["pool"] == "glyphs" and training["iterations"] == 3
    report = {r["expert"]: r for r in training["agreement"]}
    assert set(report) == {"mlp", "cnn"}
    assert sum(r["samples"] for r in report.values()) <= 24  # of the 10 % held out, those owned with p >= 0.9
    assert training["borrowed_statistics"] == {}
    assert training["torch_threads"] == torch.get_num_threads()  # results depend on it: the card says it
    with pytest.warns(UserWarning):
        again = consolidate(experts, source="pool", arch="mlp", arch_kwargs={"hidden": [8]}, params=params, seed=0,
                            min_agreement=1.01)
    for (k, v), w in zip(first.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(v, w), k


def test_pool_budget_options():
    assert budget_params(None, budget=0.5, strategy="pool") == {"iterations": 3000}  # half of 6,000
    assert budget_params({"lr": 0.01}, iterations=7, strategy="pool") == {"lr": 0.01, "iterations": 7}
    with pytest.raises(ExmodelError, match="--generator-steps does not apply to --source pool"):
        budget_params(None, generator_steps=3, strategy="pool")


def test_cli_consolidate_with_the_pool(small_glyphs, tmp_path, capsys):
    from exmodel.cli import main
    from exmodel.experts.bundle import load_bundle, save_bundle

    for name, classes, seed, arch in (("mlp", [0, 1, 2, 3, 4], 0, "mlp"), ("cnn", [5, 6, 7, 8, 9], 1, "lenet_bn")):
        save_bundle(_mnist_like(name, classes, seed, arch), tmp_path / name)
    code = main(["-q", "consolidate", str(tmp_path / "mlp"), str(tmp_path / "cnn"), "--source", "pool", "--arch", "mlp",
                 "--iterations", "2", "--set", "batch_size=8", "--set", "arch_kwargs={hidden: [8]}",
                 "-o", str(tmp_path / "merged")])
    out = capsys.readouterr().out
    assert code == 0 and "held-out pool samples" in out
    card = load_bundle(tmp_path / "merged").card
    assert card.training["method"] == "pool" and card.training["iterations"] == 2 and card.class_ids == list(range(10))
    assert main(["consolidate", str(tmp_path / "mlp"), "--source", "pool", "--generator-steps", "3",
                 "-o", str(tmp_path / "x")]) == 2
    assert "--generator-steps does not apply to --source pool" in capsys.readouterr().err


def test_an_expert_without_samples_to_check_is_warned_about_not_scored():
    from exmodel.consolidation import expert_agreement

    a = _expert("a", [0, 1], [[3.0, 0.0], [0.0, 0.0]])
    model = _expert("m", [0, 1], [[3.0, 0.0], [0.0, 0.0]])
    x = torch.zeros(2, 1, 2, 2)
    report, warned = expert_agreement(model, [a.card, a.card], [(x, torch.tensor([0, 0]), True),
                                                                (x[:0], torch.tensor([], dtype=torch.long), True)],
                                      0.8, "pool")
    assert report[0]["agreement"] == 1.0 and report[0]["kind"] == "pool" and report[1]["agreement"] is None
    assert warned == ["expert 'a' (classes [0, 1]) has no pool samples to check its share of the consolidated model "
                      "against"]


def test_auto_source_follows_what_the_experts_contain():
    from exmodel.consolidation import choose_source

    mlp, cnn = _mnist_like("mlp", [0, 1, 2, 3, 4], 0, "mlp"), _mnist_like("cnn", [5, 6, 7, 8, 9], 1, "lenet_bn")
    assert choose_source([cnn, cnn])[0] == "inversion"
    source, reason = choose_source([mlp, cnn])
    assert source == "pool" and "'mlp'" in reason and "'cnn'" not in reason
    torch.manual_seed(0)
    rgb = build_model("mlp", num_classes=2, in_channels=3, input_size=8, hidden=[4])
    card = ExpertCard(name="rgb", arch="mlp", arch_kwargs=dict(rgb.arch_kwargs), class_ids=[0, 1], class_names=["a", "b"],
                      trained_class_ids=[0, 1], num_global_classes=2, input_shape=(3, 8, 8),
                      normalization={"mean": [0.5] * 3, "std": [0.5] * 3})
    source, reason = choose_source([Expert(card, rgb)])
    assert source == "inversion" and "one-channel experts only" in reason


def test_consolidate_by_default_chooses_and_records_the_source(small_glyphs):
    experts = [_mnist_like("mlp", [0, 1, 2, 3, 4], 0, "mlp"), _mnist_like("cnn", [5, 6, 7, 8, 9], 1, "lenet_bn")]
    with pytest.warns(UserWarning):
        merged = consolidate(experts, arch="mlp", arch_kwargs={"hidden": [8]}, params={"iterations": 2, "batch_size": 8},
                             min_agreement=1.01)
    training = merged.card.training
    assert training["method"] == "pool" and training["source"] == "pool"
    assert "'mlp' have no BatchNorm statistics" in training["source_choice"]
    with pytest.raises(ExmodelError, match="unknown source 'pol'; available: auto, inversion"):
        consolidate(experts, source="pol")
    with pytest.raises(ExmodelError, match=r"unknown param 'buffer_size'.* \(source 'pool' was chosen because "
                                           r"expert\(s\) 'mlp' have no BatchNorm"):
        consolidate(experts, params={"buffer_size": 10})
