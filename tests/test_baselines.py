"""The paper's baselines checked against hand computations on experts with known outputs."""

import math

import pytest
import torch
from torch import nn

from exmodel.errors import ExmodelError
from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.strategies import Step, StreamInfo, build_strategy
from exmodel.strategies.ensembles import entropy
from exmodel.strategies.min_entropy import min_entropy_select
from exmodel.strategies.param_avg import running_average_

K = 4  # global classes
INFO = StreamInfo(kind="nc", num_classes=K, input_shape=(1, 1, 1), mean=(0.0,), std=(1.0,),
                  task_classes=((0, 1), (2, 3)), n_experiences=2)


class TableNet(nn.Module):
    """Returns row i of a fixed logit table for an input whose pixel value is i/255."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))

    def forward(self, x, task_id=None):
        return self.table[(x.flatten(1)[:, 0] * 255).round().long()]


def card(class_ids, task):
    return ExpertCard(name=f"e{task}", arch="mlp", arch_kwargs={"num_classes": len(class_ids)}, class_ids=class_ids,
                      class_names=[str(c) for c in class_ids], trained_class_ids=class_ids, num_global_classes=K,
                      task_id=task, input_shape=(1, 1, 1), normalization={"mean": [0.0], "std": [1.0]})


def inputs(n):
    return (torch.arange(n, dtype=torch.float32) / 255).view(n, 1, 1, 1)


# expert 0 knows classes 0, 1; expert 1 knows classes 2, 3 (local heads)
E0 = Expert(card([0, 1], 0), TableNet([[2.0, 0.0], [0.0, 0.0]]))
E1 = Expert(card([2, 3], 1), TableNet([[0.0, 0.0], [0.0, 3.0]]))


def run(name, experts=(E0, E1), info=INFO):
    s = build_strategy(name, {}, info, seed=0)
    for i, e in enumerate(experts):
        s.observe(Step(i, i, tuple(info.task_classes[i])), e, None)
    return s


def softmax2(a, b):
    return math.exp(a) / (math.exp(a) + math.exp(b))


def test_ensemble_avg_by_hand():
    p = run("ensemble_avg").predict(inputs(2), torch.zeros(2, dtype=torch.long))
    # sample 0: expert0 -> (σ(2), 1-σ(2), 0, 0), expert1 -> (0, 0, .5, .5); average of the two
    s = softmax2(2, 0)
    assert torch.allclose(p[0], torch.tensor([s / 2, (1 - s) / 2, 0.25, 0.25]))
    # sample 1: expert0 uniform on {0,1}; expert1 -> (0, 0, 1-σ(3), σ(3))
    t = softmax2(3, 0)
    assert torch.allclose(p[1], torch.tensor([0.25, 0.25, (1 - t) / 2, t / 2]))


def test_min_entropy_by_hand():
    p = run("min_entropy").predict(inputs(2), torch.zeros(2, dtype=torch.long))
    s, t = softmax2(2, 0), softmax2(3, 0)
    # sample 0: expert0 is confident (entropy < log 2), expert1 uniform -> expert0's distribution
    assert torch.allclose(p[0], torch.tensor([s, 1 - s, 0.0, 0.0]))
    assert torch.allclose(p[1], torch.tensor([0.0, 0.0, 1 - t, t]))


def test_entropy_and_selection():
    probs = torch.tensor([[[0.5, 0.5, 0.0]], [[1.0, 0.0, 0.0]]])
    assert torch.allclose(entropy(probs, dim=2), torch.tensor([[math.log(2)], [0.0]]))
    assert torch.equal(min_entropy_select(probs), torch.tensor([[1.0, 0.0, 0.0]]))


def test_oracle_routes_by_task_label_and_restricts_to_task_classes():
    s = run("oracle")
    scores = s.predict(inputs(2), torch.tensor([1, 0]))
    assert scores[0].argmax() in (2, 3) and torch.isinf(scores[0, :2]).all()
    assert scores[1].argmax() in (0, 1) and torch.isinf(scores[1, 2:]).all()
    assert scores[0, 2] == 0.0 and scores[0, 3] == 0.0  # expert1's logits for sample 0


def test_oracle_before_all_experts_seen_falls_back_on_seen_experts():
    s = build_strategy("oracle", {}, INFO, seed=0)
    s.observe(Step(0, 0, (0, 1)), E0, None)
    scores = s.predict(inputs(1), torch.tensor([1]))  # task 1's expert has not arrived
    sig = softmax2(2, 0)
    assert torch.allclose(scores.exp(), torch.tensor([[sig, 1 - sig, 0.0, 0.0]]))


def test_running_average_equals_mean():
    avg = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(1)}
    running_average_(avg, {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(5)}, 2)
    running_average_(avg, {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(7)}, 3)
    assert torch.allclose(avg["w"], torch.tensor([3.0, 3.0])) and avg["n"].item() == 7


def real_expert(seed, class_ids):
    torch.manual_seed(seed)
    net = build_model("mlp", num_classes=len(class_ids), in_channels=1, input_size=4, hidden=[5])
    c = ExpertCard(name=f"m{seed}", arch="mlp", arch_kwargs=dict(net.arch_kwargs), class_ids=class_ids,
                   class_names=[str(i) for i in class_ids], trained_class_ids=class_ids, num_global_classes=K,
                   task_id=seed, input_shape=(1, 4, 4), normalization={"mean": [0.0], "std": [1.0]})
    return Expert(c, net)


def test_param_avg_is_the_model_with_averaged_parameters():
    info = StreamInfo("nc", K, (1, 4, 4), (0.0,), (1.0,), ((0, 1), (2, 3)), 2)
    a, b = real_expert(0, [0, 1, 2, 3]), real_expert(1, [0, 1, 2, 3])
    s = run("param_avg", (a, b), info)
    manual = real_expert(2, [0, 1, 2, 3])
    manual.net.load_state_dict({k: (a.net.state_dict()[k] + b.net.state_dict()[k]) / 2 for k in a.net.state_dict()})
    x = torch.rand(3, 1, 4, 4)
    assert torch.allclose(s.predict(x, torch.zeros(3, dtype=torch.long)), manual(x), atol=1e-6)
    # the strategy keeps one model, not the stream
    assert s.state()["model"] is s.model and len(s.state()["heads"]) == 0


def test_param_avg_multi_task_averages_backbone_keeps_task_heads():
    info = StreamInfo("mt", K, (1, 4, 4), (0.0,), (1.0,), ((0, 1), (2, 3)), 2)
    a, b = real_expert(0, [0, 1]), real_expert(1, [2, 3])
    s = run("param_avg", (a, b), info)
    x = torch.rand(2, 1, 4, 4)
    manual = real_expert(3, [0, 1])
    sd = {k: (a.net.state_dict()[k] + b.net.state_dict()[k]) / 2 for k in a.net.state_dict() if not k.startswith("head.")}
    manual.net.load_state_dict({**sd, "head.weight": b.net.head.weight, "head.bias": b.net.head.bias})
    scores = s.predict(x, torch.tensor([1, 1]))
    assert torch.allclose(scores[:, 2:], manual(x), atol=1e-6) and torch.isinf(scores[:, :2]).all()


def test_param_avg_refuses_different_layouts():
    info = StreamInfo("nc", K, (1, 4, 4), (0.0,), (1.0,), ((0, 1), (2, 3)), 2)
    with pytest.raises(ExmodelError, match="param_avg needs experts with the same architecture"):
        run("param_avg", (real_expert(0, [0, 1]), real_expert(1, [2, 3])), info)


def test_unknown_strategy_and_param():
    from exmodel.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown strategy 'nope'; available: .*oracle"):
        build_strategy("nope", {}, INFO, 0)
    with pytest.raises(ConfigError, match="strategy 'finetune': unknown param 'epoch'; allowed: arch"):
        build_strategy("finetune", {"epoch": 1}, INFO, 0)
