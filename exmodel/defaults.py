"""The main job: embedded Split-MNIST (5 experiences × 2 classes, LeNet experts): every baseline and
the default Ex-Model Distillation (``mi_ed``). The other ED presets (``*_ed_paper``, ``di_ed``,
``aux_ed``, ``replay_ed``, ``noise_ed``) run from ``configs/``."""

from __future__ import annotations


def default_config() -> dict:
    from exmodel.strategies import list_strategies

    order = ["oracle", "ensemble_avg", "min_entropy", "param_avg", "joint", "finetune", "mi_ed"]
    names = [n for n in order if n in list_strategies()]
    return {
        "name": "split_mnist_demo",
        "scenario": {"dataset": "mnist", "kind": "nc", "n_experiences": 5},
        "expert": {"arch": "lenet", "epochs": 4},
        "strategies": [{"name": n} for n in names],
        "seeds": [0],
    }
