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
        "expert": {"arch": "lenet_bn", "epochs": 4},  # BatchNorm: mi_ed matches its statistics
        # mi_ed with a smaller budget than its preset so that the demo stays within ~3 minutes on 2 cores
        "strategies": [{"name": n} if n != "mi_ed" else
                       {"name": n, "params": {"buffer_size": 500, "iterations": 300, "source_params": {"steps": 100}}}
                       for n in names],
        "seeds": [0],
    }
