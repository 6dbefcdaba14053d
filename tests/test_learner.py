"""The learner interface the next families need: features and heads, task heads by id, the learner as a teacher."""

import pytest
import torch

from exmodel.strategies import StreamInfo
from exmodel.strategies.learner import Learner

INFO = StreamInfo("nc", 6, (1, 28, 28), (0.5,), (0.25,), ((0, 1, 2), (3, 4, 5)), 2)


@pytest.mark.parametrize("arch,kwargs", [("mlp", {"hidden": [16]}), ("lenet_bn", {}), ("lenet", {})])
def test_features_then_head_is_the_forward_pass(arch, kwargs):
    torch.manual_seed(0)
    learner = Learner(INFO, arch, kwargs).eval()
    x = torch.rand(5, 1, 28, 28)
    features = learner.forward_features(x)
    assert features.shape == (5, learner.net.num_features)
    torch.testing.assert_close(learner.forward_head(features), learner(x))
    # the learner normalizes: the net sees (x - 0.5) / 0.25
    torch.testing.assert_close(learner(x), learner.net((x - 0.5) / 0.25))


def test_task_heads_are_keyed_by_task_id_and_share_the_trunk():
    torch.manual_seed(0)
    learner = Learner(INFO, "mlp", {"hidden": [8]}).eval()
    head = learner.add_head("cats-vs-dogs", 2)
    learner.add_head(7, 3)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        head.weight.fill_(1.0)
        head.bias.fill_(0.5)
    by_hand = learner.forward_features(x).sum(1, keepdim=True) + 0.5
    torch.testing.assert_close(learner(x, task_id="cats-vs-dogs"), by_hand.expand(4, 2))
    assert learner(x, task_id=7).shape == (4, 3) and learner(x).shape == (4, 6)
    assert sorted(learner.state_dict()).count("task_heads.7.weight") == 1  # saved with the learner
    with pytest.raises(ValueError, match="task 7 already has a head"):
        learner.add_head(7, 3)
    with pytest.raises(KeyError, match=r"no head for task 8; the learner has heads for \['7', 'cats-vs-dogs'\]"):
        learner(x, task_id=8)
    with pytest.raises(ValueError, match="a head needs at least one output"):
        learner.add_head(9, 0)


def test_the_learner_as_a_teacher_gives_its_own_logits_and_feeds_a_knowledge_source():
    from exmodel.synthesis import build_source

    torch.manual_seed(0)
    learner = Learner(INFO, "lenet_bn", {}).eval()
    teacher = learner.as_expert([0, 1, 2], name="previous learner")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(teacher(x), learner(x))
    assert teacher.card.trained_class_ids == [0, 1, 2] and teacher.card.class_ids == list(range(6))
    assert teacher.net is learner.net  # shares the weights, copies nothing
    source = build_source("model_inversion", {"steps": 2, "batch_size": 8})
    images, labels = source.generate(teacher, 6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 1, 28, 28) and set(labels.tolist()) <= {0, 1, 2}
