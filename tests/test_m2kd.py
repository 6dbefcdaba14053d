"""M²KD: the teachers of each class group, the masks, and the bit-exact reconstruction of every step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exmodel.data.types import ImageDataset
from exmodel.errors import ConfigError, ExmodelError
from exmodel.evaluation import state_bytes
from exmodel.strategies import Step, StreamInfo, build_strategy, strategy_class
from exmodel.strategies.cil.auxiliary import forward_with_aux
from exmodel.strategies.cil.losses import auxiliary_distillation_loss, lwf_mc_loss, multi_model_distillation_loss
from exmodel.strategies.cil.masks import (StepMasks, check_capacity, free_weights_after, keep_count, pack_owners,
                                          prunable_names, unpack_owners)
from exmodel.strategies.m2kd import steps_still_needed, teacher_steps


def test_teacher_of_each_group_by_hand():
    assert teacher_steps(4, True, 0) == [1, 2, 3, 4]  # Eq. 2: each group from its own step
    assert teacher_steps(4, True, 1) == [2, 2, 3, 4]  # skip1: the first model replaced by the next
    assert teacher_steps(4, True, 2) == [3, 3, 3, 4]
    assert teacher_steps(4, False, 0) == [4, 4, 4, 4]  # LwF-MC: the last model teaches everything
    assert teacher_steps(2, True, 5) == [2, 2] and teacher_steps(0, True, 0) == []
    assert steps_still_needed(4, True, 0) == {1, 2, 3, 4}
    assert steps_still_needed(4, True, 2) == {3, 4} and steps_still_needed(1, True, 2) == {1}
    assert steps_still_needed(4, False, 0) == {4} and steps_still_needed(0, True, 0) == set()


def _bce(z, t):
    return -(t * torch.log(torch.sigmoid(z)) + (1 - t) * torch.log(1 - torch.sigmoid(z)))


def test_multi_model_loss_takes_each_group_from_its_teacher_by_hand():
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 3.0, 9.0]])
    t1 = torch.tensor([[1.0, 2.0, 7.0, 7.0, 7.0, 7.0]])  # teaches classes 0, 1
    t2 = torch.tensor([[7.0, 7.0, -1.0, 0.5, 7.0, 7.0]])  # teaches classes 2, 3
    seen, label = [0, 1, 2, 3, 4], torch.tensor([4])
    got = multi_model_distillation_loss(logits, label, [((0, 1), t1), ((2, 3), t2)], seen)
    targets = torch.tensor([torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(2.0)),
                            torch.sigmoid(torch.tensor(-1.0)), torch.sigmoid(torch.tensor(0.5)), 1.0])
    expected = _bce(logits[0, :5], targets).sum()  # unit 5 is not seen: no part
    assert torch.allclose(got, expected)
    # one teacher for every old class is LwF-MC's loss
    assert torch.allclose(multi_model_distillation_loss(logits, label, [((0, 1, 2, 3), t1)], seen),
                          lwf_mc_loss(logits, label, t1, [0, 1, 2, 3], seen))
    with pytest.raises(ValueError, match="overlap"):
        multi_model_distillation_loss(logits, label, [((0, 1), t1), ((1, 2), t2)], seen)


def test_auxiliary_loss_by_hand():
    aux = torch.tensor([[0.2, -0.3, 1.0, 0.0]])
    teacher = torch.tensor([[-2.0, 1.5, 0.0, 0.0]])
    label, seen, alpha = torch.tensor([2]), [0, 1, 2], 0.5
    got = auxiliary_distillation_loss(aux, label, [((0, 1), teacher)], seen, alpha)
    soft = _bce(aux[0, :2], torch.sigmoid(teacher[0, :2])).sum()
    hard = _bce(aux[0, :3], torch.tensor([0.0, 0.0, 1.0])).sum()  # the labels on every seen unit
    assert torch.allclose(got, soft + alpha * hard)
    assert torch.allclose(auxiliary_distillation_loss(aux, label, [], seen, alpha), alpha * hard)
    new_only = _bce(aux[0, 2:3], torch.tensor([1.0])).sum()  # units 0, 1 are taught: no labels there
    assert torch.allclose(auxiliary_distillation_loss(aux, label, [((0, 1), teacher)], seen, alpha, False),
                          soft + alpha * new_only)


# ---------------------------------------------------------------------------------------------- masks

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


def test_prune_keeps_the_largest_free_weights_and_zeroes_the_rest():
    net = Tiny()
    assert prunable_names(net, skip=[net.head]) == ["fc.weight"]
    with torch.no_grad():
        net.fc.weight.copy_(torch.arange(1, 13, dtype=torch.float).view(3, 4) * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    masks = StepMasks(net, ["fc.weight"])
    masks.prune(net, 1, 0.75)  # keep round(0.25 · 12) = 3: |12|, |11|, |10|
    owner = masks.owner["fc.weight"].flatten()
    assert owner.tolist() == [0] * 9 + [1, 1, 1]
    assert net.fc.weight.flatten()[:9].eq(0).all() and net.fc.weight.flatten()[9:].tolist() == [-10.0, 11.0, -12.0]
    masks.save_step(net)
    with torch.no_grad():
        net.fc.weight.view(-1)[:9] = torch.tensor([0.5, -4.0, 3.0, 0.1, 0.2, -0.3, 2.0, 0.0, 0.0])
    masks.prune(net, 2, 0.5)  # 9 free: keep round(4.5) = 4 (Python rounds half to even): 4, 3, 2, 0.5
    assert masks.owner["fc.weight"].flatten().tolist() == [2, 2, 2, 0, 0, 0, 2, 0, 0, 1, 1, 1]
    masks.save_step(net)
    assert masks.owned_counts() == {"fc.weight": [3, 4]} and masks.free_counts() == {"fc.weight": 5}
    with pytest.raises(ExmodelError, match="step 4 cannot be pruned after 2 steps"):
        masks.prune(net, 4, 0.5)


def test_hold_keeps_frozen_weights_exactly_whatever_the_optimiser():
    torch.manual_seed(0)
    net = Tiny()
    masks = StepMasks(net, ["fc.weight"])
    masks.prune(net, 1, 0.5)
    masks.save_step(net)
    frozen = masks.owner["fc.weight"] == 1
    before = net.fc.weight.detach().clone()
    masks.train_free(net)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1, weight_decay=0.5)  # decoupled decay moves every weight
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        masks.hold(net)
    assert torch.equal(net.fc.weight[frozen], before[frozen])
    assert not torch.equal(net.fc.weight[~frozen], before[~frozen])  # the free ones did learn


def test_capacity_is_checked_before_training():
    assert keep_count(0, 0.5) == 0 and keep_count(3, 0.9) == 1 and keep_count(10, 0.75) == 2
    assert free_weights_after({"w": 10}, 0.75, 3) == {"w": [10, 8, 6]}
    check_capacity({"w": 10}, 0.75, 5)
    with pytest.raises(ConfigError, match=r"pruning ratio 0.5: conv.weight \(4 weights\) has no free weight left "
                                          r"for step 4 of 5; use a higher ratio"):
        check_capacity({"conv.weight": 4}, 0.5, 5)  # 4 -> 2 -> 1 -> 0


@pytest.mark.parametrize("steps", [1, 3, 5, 10])
def test_owners_pack_into_few_bits_and_back(steps):
    g = torch.Generator().manual_seed(steps)
    owners = [torch.randint(0, steps + 1, (3, 5), generator=g, dtype=torch.uint8),
              torch.randint(0, steps + 1, (7,), generator=g, dtype=torch.uint8)]
    packed = pack_owners(owners, steps)
    assert packed.numel() == -(-22 * steps.bit_length() // 8)
    back = unpack_owners(packed, [(3, 5), (7,)], steps)
    assert all(torch.equal(a, b) for a, b in zip(owners, back))
    with pytest.raises(ExmodelError, match="packed masks hold"):
        unpack_owners(packed[:-1], [(3, 5), (7,)], steps)


# ---------------------------------------------------------------------------------------------- the strategy

def _stream(shape, groups):
    k = sum(len(g) for g in groups)
    return StreamInfo(kind="cil", num_classes=k, input_shape=shape, mean=(0.5,) * shape[0], std=(0.25,) * shape[0],
                      task_classes=tuple(tuple(g) for g in groups), n_experiences=len(groups))


def _data(shape, classes, seed, per_class=6, num_classes=10):
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    base = torch.rand(len(classes), *shape, generator=g)[labels - min(classes)]
    images = ((base + 0.2 * torch.rand(len(labels), *shape, generator=g)).clamp(0, 1) * 255).to(torch.uint8)
    names = [f"class {c}" for c in range(num_classes)]
    return ImageDataset(images, labels, names, "tiny", (0.5,) * shape[0], (0.25,) * shape[0])


def _run_steps(name, info, params, seed=0, per_class=6):
    strategy = build_strategy(name, params, info, seed)
    x = torch.rand(5, *info.input_shape, generator=torch.Generator().manual_seed(7))
    at_end = []
    for i, classes in enumerate(info.task_classes):
        strategy.observe(Step(i, i, classes), None, _data(info.input_shape, classes, i, per_class))
        with torch.no_grad():
            model = strategy.model.eval()
            at_end.append(forward_with_aux(model, x) if getattr(strategy.params, "aux", False) else (model(x),))
    return strategy, x, at_end


@pytest.mark.parametrize("arch,shape", [("lenet_bn", (1, 28, 28)), ("resnet32", (3, 32, 32))])
def test_rebuilt_snapshots_give_bit_identical_logits(arch, shape):
    groups = [(0, 1), (2, 3), (4, 5)]
    params = {"arch": arch, "iterations": 3, "batch_size": 6, "optimizer": "sgd", "lr": 0.05,
              "weight_decay": 1e-3, "prune_ratio": 0.75}
    strategy, x, at_end = _run_steps("m2kd_paper", _stream(shape, groups), params)

    assert strategy.masks.steps == 3
    for k in (1, 2, 3):
        logits, aux = forward_with_aux(strategy.snapshot(k), x)
        assert torch.equal(logits, at_end[k - 1][0]), f"{arch}: step {k}'s logits differ once rebuilt"
        assert torch.equal(aux, at_end[k - 1][1])
    assert not torch.equal(at_end[0][0], at_end[2][0])  # the steps did change the network
    strategy.masks.check_against(strategy.model)
    with torch.no_grad():
        name = strategy.masks.names[0]
        free = (strategy.masks.owner[name] == 0).nonzero()[0]
        dict(strategy.model.named_parameters())[name][tuple(free)] = 1.0
    with pytest.raises(ExmodelError, match=f"masks do not match the weights: {name} has 1 nonzero weights"):
        strategy.masks.check_against(strategy.model)


def test_masks_keep_a_fraction_of_what_snapshots_keep():
    info = _stream((1, 28, 28), [(0, 1), (2, 3), (4, 5), (6, 7)])
    params = {"arch": "lenet_bn", "iterations": 2, "batch_size": 6}
    pruned = _run_steps("m2kd_paper", info, params)[0]
    kept_all = _run_steps("m2kd_noprune", info, params)[0]
    assert len(kept_all.snapshots) == 4 and not pruned.snapshots
    masks_bytes, snapshot_bytes = state_bytes(pruned.kept()), state_bytes(kept_all.kept())
    assert masks_bytes < 0.15 * snapshot_bytes, (masks_bytes, snapshot_bytes)
    # 3 bits per prunable weight for 4 steps, packed
    n = sum(pruned.masks.sizes().values())
    assert pruned.masks.state()["owners"].numel() == -(-n * 3 // 8)


def test_lwf_mc_aux_keeps_only_the_last_model_and_skip_drops_early_ones():
    info = _stream((1, 28, 28), [(0, 1), (2, 3), (4, 5)])
    params = {"arch": "lenet_bn", "iterations": 2, "batch_size": 6}
    assert list(_run_steps("lwf_mc_aux", info, params)[0].snapshots) == [3]
    assert sorted(_run_steps("lwf_mc_mmd", info, {**params, "skip": 1})[0].snapshots) == [2, 3]


def test_bad_settings_get_one_clear_error():
    info = _stream((1, 28, 28), [(0, 1), (2, 3)])
    with pytest.raises(Exception, match="prune_ratio"):
        strategy_class("m2kd").Params(prune_ratio=1.0)
    ten = _stream((1, 28, 28), [(c,) for c in range(10)])
    with pytest.raises(ConfigError, match=r"pruning ratio 0.1: net.block1.0.weight \(150 weights\) has no free weight"):
        build_strategy("m2kd", {"arch": "lenet_bn", "prune_ratio": 0.1}, ten, 0)
    with pytest.raises(ConfigError, match="aux_layer 'nope' is not a layer of lenet_bn"):
        build_strategy("m2kd", {"arch": "lenet_bn", "aux_layer": "nope"}, info, 0)


def test_icarl_m2kd_trains_on_exemplars_with_the_multi_model_loss():
    info = _stream((1, 28, 28), [(0, 1), (2, 3)])
    strategy, x, _ = _run_steps("icarl_m2kd", info, {"arch": "lenet_bn", "iterations": 2, "batch_size": 6,
                                                     "memory_size": 4})
    assert sum(len(v) for v in strategy.memory.images.values()) == 4
    assert strategy.masks.steps == 2 and [g for g, _ in strategy.teachers] == []
    scores = strategy.predict(x, torch.zeros(5, dtype=torch.long))
    assert torch.isfinite(scores).all() and scores.shape == (5, 4)


def test_without_its_additions_m2kd_is_lwf_mc():
    """One teacher (the last model), no auxiliary classifier, no masks: the same predictions as ``lwf_mc``."""
    info = _stream((1, 28, 28), [(0, 1), (2, 3), (4, 5)])
    params = {"arch": "lenet_bn", "iterations": 3, "batch_size": 6}
    plain = _run_steps("lwf_mc", info, params)
    bare = _run_steps("m2kd", info, {**params, "multi_model": False, "aux": False, "prune_ratio": None,
                                     "delegator": False, "cache_teachers": False})
    for a, b in zip(plain[2], bare[2]):
        assert torch.equal(a[0], b[0])
    full = _run_steps("m2kd_noprune", info, params)
    assert not torch.equal(full[2][-1][0], plain[2][-1][0])


@pytest.mark.parametrize("batch", [5, 10, 20])
def test_cifar100_configs_leave_free_weights_for_every_step(batch):
    from pathlib import Path

    from exmodel.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"m2kd_cifar100_{batch}.yaml")
    tasks = 100 // batch
    assert cfg.scenario.n_tasks == tasks and cfg.scenario.class_order_seed == 1993
    groups = [tuple(range(i * batch, (i + 1) * batch)) for i in range(tasks)]
    info = StreamInfo(kind="cil", num_classes=100, input_shape=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3,
                      task_classes=tuple(groups), n_experiences=tasks)
    strategy = build_strategy("m2kd_paper", next(s.params for s in cfg.strategies if s.name == "m2kd_paper"), info, 0)
    assert strategy.params.prune_ratio == (0.8 if batch == 20 else 0.75)
    assert strategy.model.aux_layer == "layer2" and strategy.model.aux.fc.in_features == 32
    assert "net.stem.0.weight" in strategy.masks.names
    assert "net.head.weight" not in strategy.masks.names and "aux.fc.weight" not in strategy.masks.names


def test_the_auxiliary_classifier_pools_as_asked():
    from exmodel.strategies.cil.auxiliary import AuxiliaryClassifier

    assert AuxiliaryClassifier((16, 5, 5), 10).fc.in_features == 16
    assert AuxiliaryClassifier((16, 5, 5), 10, pool=2).fc.in_features == 64
    assert AuxiliaryClassifier((16, 5, 5), 10, pool=None).fc.in_features == 400
    assert AuxiliaryClassifier((8,), 10, pool=None).fc.in_features == 8
    m = AuxiliaryClassifier((2, 2, 2), 1, pool=1)
    with torch.no_grad():
        m.fc.weight.copy_(torch.tensor([[1.0, 10.0]]))
        m.fc.bias.zero_()
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 4.0]]]])
    assert torch.allclose(m(x), torch.tensor([[3.0 + 10.0 * 1.0]]))  # the means of each channel


def test_weight_aligning_leaves_the_new_rows_at_the_old_rows_mean_norm_and_keeps_snapshots_exact():
    info = _stream((1, 28, 28), [(0, 1), (2, 3), (4, 5)])
    strategy, x, at_end = _run_steps("m2kd_paper", info, {"arch": "lenet_bn", "iterations": 3, "batch_size": 6,
                                                          "weight_aligning": True})
    norms = strategy.model.net.head.weight.norm(dim=1)
    assert torch.allclose(norms[[4, 5]].mean(), norms[[0, 1, 2, 3]].mean())
    for k in (1, 2, 3):
        assert torch.equal(forward_with_aux(strategy.snapshot(k), x)[0], at_end[k - 1][0])


def test_a_run_with_too_many_steps_for_the_ratio_stops_before_any_training(tmp_path, capsys):
    import yaml

    from exmodel.cli import main

    config = tmp_path / "m2kd.yaml"
    config.write_text(yaml.safe_dump({
        "name": "tiny", "scenario": {"dataset": "mnist", "kind": "cil", "protocol": "from_scratch", "n_tasks": 10,
                                     "train_per_class": 5, "test_per_class": 2},
        "strategies": [{"name": "ft"}, {"name": "m2kd", "params": {"arch": "lenet_bn", "prune_ratio": 0.05}}]}))
    out = tmp_path / "run"
    assert main(["--quiet", "run", str(config), "--out", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: pruning ratio 0.05: net.block1.0.weight (150 weights) has no free weight left")
    assert not out.exists()


def test_the_delegator_adds_old_class_images_labelled_by_the_previous_model(tmp_path):
    from exmodel.strategies.cil.learner_file import load_learner

    info = _stream((1, 28, 28), [(0, 1), (2, 3), (4, 5)])
    tiny = {"delegator_epochs": 1, "finetune_epochs": 1, "width": 4, "z_dim": 8, "delegator_batch": 4}
    strategy = build_strategy("m2kd", {"arch": "lenet_bn", "iterations": 2, "batch_size": 6,
                                       "delegator_params": tiny}, info, 0)
    assert strategy.params.delegator and strategy_class("m2kd_paper").Params().delegator is False
    strategy.observe(Step(0, 0, (0, 1)), None, _data((1, 28, 28), (0, 1), 0, num_classes=6))
    assert strategy.replay(5) is None  # no step before: nothing to replay yet
    assert set(strategy.delegator_terms) == {1}
    strategy.before_task(Step(1, 1, (2, 3)), _data((1, 28, 28), (2, 3), 1, num_classes=6))
    x, y = strategy.replay(5)
    assert x.shape == (5, 1, 28, 28) and set(y.tolist()) <= {0, 1}
    with torch.no_grad():
        assert torch.equal(y, torch.tensor([0, 1])[strategy.previous(x)[:, [0, 1]].argmax(1)])
    for i, classes in enumerate(info.task_classes[1:], start=1):
        strategy.observe(Step(i, i, classes), None, _data((1, 28, 28), classes, i, num_classes=6))
    assert set(strategy.delegator_terms) == {1, 2}  # none after the last step
    assert "delegator" in strategy.kept()
    back = load_learner(strategy.save_learner(tmp_path / "d.safetensors"))
    for a, b in zip(back.delegator.state_dict().values(), strategy.delegator.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="delegator_params: width: Input should be greater than or equal to 1"):
        build_strategy("m2kd", {"arch": "lenet_bn", "delegator_params": {"width": 0}}, info, 0)


@pytest.mark.parametrize("arch,shape,groups,batch", [("lenet_bn", (1, 28, 28), [(0, 1), (2, 3), (4, 5)], 16),
                                                     ("resnet32", (3, 32, 32), [(0, 1), (2, 3)], 4)])
def test_teachers_outputs_cached_on_the_training_images_change_no_bit(arch, shape, groups, batch):
    """Each teacher's outputs on the step's training images are computed once, and only the delegator's
    rows of a batch go through it again: the same model, bit for bit, as recomputing every batch."""
    info = _stream(shape, groups)
    tiny = {"delegator_epochs": 1, "finetune_epochs": 1, "width": 4, "z_dim": 8, "delegator_batch": 4}
    # a LeNet-BN's convolutions round a batch of fewer than 12 images differently: batches of 16 for it
    params = {"arch": arch, "iterations": 2, "batch_size": batch, "delegator_params": tiny}
    per_class = max(4, batch)
    cached, _, at_end = _run_steps("m2kd", info, params, per_class=per_class)
    nxt = (10, 11)
    cached.before_task(Step(len(groups), len(groups), nxt), _data(shape, nxt, 9, per_class=per_class))
    cached.before_training(_data(shape, nxt, 9, per_class=per_class))
    logits, aux = next(iter(cached.teacher_cache.values()))
    assert len(cached.teacher_cache) == len(groups) and logits.shape == (2 * per_class, 2 * len(groups))
    assert aux is not None and len(aux) == 2 * per_class
    _, _, again = _run_steps("m2kd", info, {**params, "cache_teachers": False}, per_class=per_class)
    for a, b in zip(at_end, again):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
