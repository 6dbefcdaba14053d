"""Expert training and the cached expert stream, on a small real subset of the embedded MNIST."""

import pytest
import torch

from exmodel.config import ExpertConfig, ScenarioConfig
from exmodel.data import load_dataset
from exmodel.experts import zoo
from exmodel.experts.train import expert_output_classes, train_expert
from exmodel.scenarios import build_stream, subsample_per_class

SC = ScenarioConfig(dataset="mnist", kind="nc", n_experiences=5, train_per_class=80, test_per_class=30)
EC = ExpertConfig(arch="lenet", epochs=2, batch_size=32)


@pytest.fixture(scope="module")
def stream():
    data = subsample_per_class(load_dataset("mnist"), 80, 30, seed=0)
    return build_stream(data, "nc", 5, seed=0)


def test_trained_expert_card_and_accuracy(stream):
    e = train_expert(stream, stream[0], EC, seed=3)
    c = e.card
    assert c.class_ids == list(range(10)) and c.trained_class_ids == sorted(stream[0].classes)
    assert c.input_shape == (1, 28, 28) and c.normalization.mean == [pytest.approx(0.1307)]
    assert c.training["seed"] == 3 and c.training["epochs"] == 2 and c.experience == 0
    assert c.test_accuracy > 0.9  # two digits, 160 training images: far above chance (0.5)
    # same seed, same expert (CPU determinism)
    again = train_expert(stream, stream[0], EC, seed=3)
    for (k, a), b in zip(e.net.state_dict().items(), again.net.state_dict().values()):
        assert torch.equal(a, b), k


def test_local_and_multitask_heads(stream):
    assert expert_output_classes(stream, stream[1], "local") == sorted(stream[1].classes)
    assert expert_output_classes(stream, stream[1], "full") == list(range(10))


def test_stream_is_cached_and_resumes(stream, tmp_path, monkeypatch):
    calls = []
    real = zoo.train_expert

    def counting(*a, **k):
        calls.append(a[1].index)
        return real(*a, **k)

    monkeypatch.setattr(zoo, "train_expert", counting)
    first, root = zoo.expert_stream(stream, SC, EC, 0, "fp", tmp_path)
    assert calls == [0, 1, 2, 3, 4] and len(first) == 5
    # lose the last two experts (an interrupted training): only those are trained again
    import shutil

    shutil.rmtree(root / "expert-003")
    shutil.rmtree(root / "expert-004")
    second, _ = zoo.expert_stream(stream, SC, EC, 0, "fp", tmp_path)
    assert calls == [0, 1, 2, 3, 4, 3, 4]
    assert [e.card.weights_sha256 for e in second] == [e.card.weights_sha256 for e in first]
    # a different training config is a different stream
    other = zoo.stream_key(SC, EC.model_copy(update={"epochs": 3}), 0, "fp")
    assert other != zoo.stream_key(SC, EC, 0, "fp")


def test_shared_init_uses_one_initialization(stream, tmp_path):
    cfg = EC.model_copy(update={"shared_init": True, "epochs": 1})
    experts, _ = zoo.expert_stream(stream, SC, cfg, 0, "fp", tmp_path)
    assert len({e.card.training["init_seed"] for e in experts}) == 1
    assert len({e.card.training["seed"] for e in experts}) == 5


def test_stream_key_ignores_settings_left_at_their_default():
    explicit = SC.model_copy(update={"ni_split": "stratified", "validation_fraction": None})
    assert zoo.stream_key(explicit, EC, 0, "fp") == zoo.stream_key(SC, EC, 0, "fp")
    assert zoo.stream_key(SC.model_copy(update={"ni_split": "groups"}), EC, 0, "fp") != zoo.stream_key(SC, EC, 0, "fp")
