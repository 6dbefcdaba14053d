"""Borrowed statistics: a BN-free expert's generator is judged by a BN peer's statistics, nothing else changes."""

from __future__ import annotations

import torch

from exmodel.experts.card import ExpertCard
from exmodel.experts.expert import Expert
from exmodel.models import build_model
from exmodel.synthesis.borrowed import BorrowedStatistics, borrow_statistics
from exmodel.synthesis.priors import BNStatsRecorder, batch_moments


def _expert(name, arch, classes, mean, std, **kw):
    torch.manual_seed(len(name))
    net = build_model(arch, num_classes=len(classes), in_channels=1, input_size=12, **kw).eval()
    for m in net.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    card = ExpertCard(name=name, arch=arch, arch_kwargs=net.arch_kwargs, class_ids=classes,
                      class_names=[str(c) for c in classes], trained_class_ids=classes, num_global_classes=4,
                      input_shape=(1, 12, 12), normalization={"mean": [mean], "std": [std]})
    return Expert(card, net).eval()


def test_only_bn_free_experts_borrow_and_their_outputs_are_unchanged():
    plain = _expert("plain", "mlp", [0, 1], 0.5, 0.5, hidden=[8])
    bn = _expert("bn", "lenet_bn", [2, 3], 0.1, 0.3)
    out, borrowed = borrow_statistics([plain, bn])
    assert borrowed == {"plain": ["bn"]} and out[1] is bn
    wrapped = out[0]
    assert isinstance(wrapped.net, BorrowedStatistics)
    assert [m for _, m in wrapped.net.bn_layers()] == [m for _, m in bn.net.bn_layers()]
    x = torch.rand(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(wrapped(x), plain(x))


def test_generator_pass_records_the_references_statistics_of_the_same_images():
    plain = _expert("plain", "mlp", [0, 1], 0.5, 0.5, hidden=[8])
    bn = _expert("bn", "lenet_bn", [2, 3], 0.1, 0.3)
    wrapped = borrow_statistics([plain, bn])[0][0]
    x01 = torch.rand(6, 1, 12, 12)
    first_bn = bn.net.bn_layers()[0][1]
    seen = []
    handle = first_bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with BNStatsRecorder(wrapped.net) as rec:
        with torch.no_grad():  # labelling and distillation passes: the reference does not run
            wrapped(x01)
        assert seen == [] and rec.stats == []
        wrapped(x01)  # a generator-training pass (gradients on)
        mean, var = batch_moments(seen[0])
        torch.testing.assert_close(rec.stats[0][0], mean)
        torch.testing.assert_close(rec.stats[0][1], var)
        assert rec.stats[0][2] is first_bn.running_mean
        # the reference saw the same images in its own normalization
        direct = []
        h2 = first_bn.register_forward_hook(lambda m, inp, out: direct.append(inp[0].detach()))
        with torch.no_grad():
            bn(x01)
        h2.remove()
        torch.testing.assert_close(seen[0], direct[0])
    handle.remove()


def test_borrowed_statistics_are_matched_class_by_class(monkeypatch):
    """``bn_groups: auto`` groups the BN term by class for a borrower, by batch for an expert's own
    statistics; ``batch`` and ``class`` force either."""
    from exmodel.synthesis import build_source
    from exmodel.synthesis.priors import BNStatsRecorder as Recorder

    plain = _expert("plain", "mlp", [0, 1], 0.5, 0.5, hidden=[8])
    bn = _expert("bn", "lenet_bn", [2, 3], 0.1, 0.3)
    wrapped = borrow_statistics([plain, bn])[0][0]
    seen = []
    original = Recorder.loss

    def spy(self, first_weight=1.0):
        seen.append(None if self.groups is None else self.groups.clone())
        return original(self, first_weight)

    monkeypatch.setattr(Recorder, "loss", spy)

    def groups_used(expert, **params):
        seen.clear()
        src = build_source("generative", {"steps": 2, "batch_size": 8, "relabel": False, "w_bn": 1.0, **params})
        src.generate(expert, 4, torch.Generator().manual_seed(0))
        return seen

    by_class = groups_used(wrapped)
    assert len(by_class) == 2 and all(g is not None and set(g.tolist()) == {0, 1} for g in by_class)
    assert groups_used(bn) == [None, None]
    assert groups_used(wrapped, bn_groups="batch") == [None, None]
    assert all(g is not None for g in groups_used(bn, bn_groups="class"))
