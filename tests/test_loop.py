"""The one training loop (exmodel.loop): mixup, weight EMA, optimisers, schedule, loss log; checked by hand."""

import math

import pytest
import torch
from torch import nn

from exmodel.errors import ExmodelError
from exmodel.loop import Batch, LoopSettings, LossLog, WeightEMA, make_optimizer, mixup_inputs, train_loop
from exmodel.strategies.ed.losses import ed_loss, mix_targets, soft_labels

NAN = float("nan")


def test_mixup_inputs_are_convex_combinations_with_a_partner():
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1)
    xm, mix = mixup_inputs(x, 0.4, torch.Generator().manual_seed(0))
    perm, lam = mix.perm, mix.lam
    assert sorted(perm.tolist()) == list(range(6)) and lam.shape == (6,)
    assert bool(((lam >= 0) & (lam <= 1)).all())
    assert torch.allclose(xm.view(-1), lam * x.view(-1) + (1 - lam) * x.view(-1)[perm])
    again = mixup_inputs(x, 0.4, torch.Generator().manual_seed(0))  # same generator state, same draw
    assert torch.equal(again[0], xm) and torch.equal(again[1].perm, perm)
    with pytest.raises(ValueError, match="mixup alpha must be > 0"):
        mixup_inputs(x, 0.0, torch.Generator())


def test_mixup_lambda_follows_beta_alpha_alpha():
    lam = mixup_inputs(torch.zeros(20000, 1), 0.4, torch.Generator().manual_seed(1))[1].lam
    # Beta(α, α): mean 1/2, variance 1 / (4 (2α + 1)) = 1/7.2 for α = 0.4
    assert abs(lam.mean().item() - 0.5) < 0.01
    assert abs(lam.var().item() - 1 / 7.2) < 0.005


def test_soft_labels_and_mixed_ce_by_hand():
    y = torch.tensor([0, 2])
    perm = torch.tensor([1, 0])
    lam = torch.tensor([0.75, 0.5])
    q = soft_labels(y, perm, lam, 3)
    assert torch.allclose(q, torch.tensor([[0.75, 0.0, 0.25], [0.5, 0.0, 0.5]]))
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    logp = torch.log_softmax(logits, 1)
    ce = -(0.75 * logp[0, 0] + 0.25 * logp[0, 2] + 0.5 * logp[1, 0] + 0.5 * logp[1, 2]) / 2
    _, _, got = ed_loss(logits, torch.zeros(2, 3), q, 1.0)
    assert math.isclose(got.item(), ce.item(), rel_tol=1e-5)


def test_mix_targets_by_hand_and_units_with_one_target():
    a = torch.tensor([[1.0, 2.0, NAN, NAN]])
    b = torch.tensor([[3.0, NAN, 5.0, NAN]])
    out = mix_targets(a, b, torch.tensor([0.25]))
    assert torch.allclose(out[0, :3], torch.tensor([0.25 * 1 + 0.75 * 3, 2.0, 5.0]))
    assert math.isnan(out[0, 3])


def test_weight_ema_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = WeightEMA(model, 0.9)
    for w in (2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
    # 1 → 0.9·1 + 0.1·2 = 1.1 → 0.9·1.1 + 0.1·4 = 1.39
    ema.copy_to(model)
    assert math.isclose(model.weight.item(), 1.39, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"ema decay must be in \(0, 1\)"):
        WeightEMA(model, 1.0)


def test_ed_params_for_the_training_aids_are_checked():
    from exmodel.strategies import StreamInfo, build_strategy

    nc = StreamInfo("nc", 4, (1, 8, 8), (0.1,), (0.3,), ((0, 1), (2, 3)), 2)
    mt = StreamInfo("mt", 4, (1, 8, 8), (0.1,), (0.3,), ((0, 1), (2, 3)), 2)
    with pytest.raises(ExmodelError, match="param lr_schedule: Input should be 'constant', 'cosine', 'step' or 'half5'"):
        build_strategy("noise_ed", {"lr_schedule": "linear"}, nc, 0)
    with pytest.raises(ExmodelError, match="param optimizer: Input should be 'sgd', 'adam' or 'adamw'"):
        build_strategy("noise_ed", {"optimizer": "adamx"}, nc, 0)  # once silently trained with SGD
    with pytest.raises(ExmodelError, match="mixup mixes tasks; it is not available on multi-task streams"):
        build_strategy("noise_ed", {"mixup": 0.4}, mt, 0)
    assert build_strategy("noise_ed", {"mixup": 0.4, "ema": 0.99, "lr_schedule": "cosine"}, nc, 0).params.mixup == 0.4


def test_make_optimizer_names_its_choices_and_never_falls_back():
    params = [nn.Parameter(torch.zeros(1))]
    assert type(make_optimizer(params, "adamw", 0.1, weight_decay=0.5)) is torch.optim.AdamW
    assert type(make_optimizer(params, "adam", 0.1)) is torch.optim.Adam
    sgd = make_optimizer(params, "sgd", 0.1, momentum=0.5)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.5
    with pytest.raises(ValueError, match="optimizer must be one of sgd, adam, adamw, got 'adamx'"):
        make_optimizer(params, "adamx", 0.1)
    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine, step"):
        LoopSettings(iterations=1, lr_schedule="linear")


def _quadratic(target: float):
    """A one-weight model and the loss (w − target)² split into two named terms (halves)."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()

    def loss(m, batch):
        err = (m.weight.sum() - target) ** 2
        return {"a": 0.5 * err, "b": 0.5 * err}

    return model, loss


def test_plain_sgd_steps_by_hand_and_every_term_is_logged():
    model, loss = _quadratic(1.0)
    draws = []

    def draw():
        draws.append(len(draws))
        return Batch(torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long))

    log = train_loop(model, draw, loss, LoopSettings(iterations=2, optimizer="sgd", lr=0.25, momentum=0.0),
                     torch.Generator())
    # gradient of (w − 1)² is 2 (w − 1): w 0 → 0.5 → 0.75; the terms are half the loss each
    assert model.weight.item() == pytest.approx(0.75) and draws == [0, 1] and not model.training
    assert log.terms == {"a": [0.5, 0.125], "b": [0.5, 0.125]}
    assert log.means() == {"a": 0.3125, "b": 0.3125} and log.means(last=1) == {"a": 0.125, "b": 0.125}


def test_cosine_schedule_reaches_zero_and_ema_replaces_the_weights():
    model, loss = _quadratic(1.0)
    batch = lambda: Batch(torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long))  # noqa: E731
    train_loop(model, batch, loss, LoopSettings(iterations=2, lr=0.25, momentum=0.0, lr_schedule="cosine"),
               torch.Generator())
    # lr 0.25 then 0.25·(1 + cos(π/2))/2 = 0.125: w 0 → 0.5 → 0.5 + 0.125·1 = 0.625
    assert model.weight.item() == pytest.approx(0.625)
    model, loss = _quadratic(1.0)
    train_loop(model, batch, loss, LoopSettings(iterations=2, lr=0.25, momentum=0.0, ema=0.5), torch.Generator())
    # weights 0.5, 0.75; average 0 → 0.25 → 0.5
    assert model.weight.item() == pytest.approx(0.5)


def test_the_loop_augments_then_mixes_before_the_loss_sees_the_batch():
    seen = []

    def loss(m, batch):
        seen.append((batch.x.clone(), batch.mix))
        return {"zero": m.weight.sum() * 0}

    model = nn.Linear(1, 1, bias=False)
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    plus_ten = lambda t: t + 10  # noqa: E731
    train_loop(model, lambda: Batch(x.clone(), torch.arange(4)), loss, LoopSettings(iterations=1, mixup=0.4),
               torch.Generator().manual_seed(3), augment=plus_ten)
    got, mix = seen[0]
    _, want = mixup_inputs(x + 10, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(mix.perm, want.perm) and torch.equal(mix.lam, want.lam)
    torch.testing.assert_close(got.view(-1), mix.lam * (x.view(-1) + 10) + (1 - mix.lam) * (x.view(-1) + 10)[mix.perm])
    assert LossLog().means() == {}


def test_ed_logs_each_term_of_its_loss_per_step(monkeypatch):
    from exmodel.experts.card import ExpertCard
    from exmodel.experts.expert import Expert
    from exmodel.models import build_model
    from exmodel.strategies import Step, StreamInfo, build_strategy

    info = StreamInfo("nc", 4, (1, 8, 8), (0.5,), (0.5,), ((0, 1), (2, 3)), 2)
    net = build_model("mlp", num_classes=4, in_channels=1, input_size=8, hidden=[4])
    card = ExpertCard(name="e", arch="mlp", arch_kwargs=dict(net.arch_kwargs), class_ids=[0, 1, 2, 3],
                      class_names=list("0123"), trained_class_ids=[0, 1], num_global_classes=4, input_shape=(1, 8, 8),
                      normalization={"mean": [0.5], "std": [0.5]})
    logs = []
    real = train_loop

    def spy(*args, **kwargs):
        logs.append(real(*args, **kwargs))
        return logs[-1]

    monkeypatch.setattr("exmodel.strategies.ed.strategy.train_loop", spy)
    s = build_strategy("noise_ed", {"iterations": 3, "buffer_size": 8, "batch_size": 4, "arch": "mlp",
                                    "arch_kwargs": {"hidden": [4]}, "lambda_ce": 2.0}, info, 0)
    s.observe(Step(0, 0, (0, 1)), Expert(card, net).eval(), None)
    assert set(s.loss_log) == {0} and set(s.loss_log[0]) == {"mse", "ce"}
    assert len(logs[0].terms["ce"]) == 3 and s.loss_log[0] == logs[0].means()
    assert all(v > 0 for v in s.loss_log[0].values())


def test_the_step_schedule_divides_the_rate_by_ten_at_half_and_three_quarters():
    from exmodel.loop import make_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = make_schedule(opt, "step", 8)
    rates = []
    for _ in range(8):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert make_schedule(opt, "constant", 8) is None


def test_the_half5_schedule_divides_the_rate_by_five_at_half():
    from exmodel.loop import make_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = make_schedule(opt, "half5", 6)
    rates = []
    for _ in range(6):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates == pytest.approx([2.0] * 3 + [0.4] * 3)
