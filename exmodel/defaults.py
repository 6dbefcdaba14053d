"""The main job: embedded Split-MNIST (5 experiences × 2 classes, LeNet experts) with every strategy."""

from __future__ import annotations


def default_config() -> dict:
    from exmodel.strategies import list_strategies

    order = ["oracle", "ensemble_avg", "min_entropy", "param_avg", "joint", "finetune"]
    names = [n for n in order if n in list_strategies()] + [n for n in list_strategies() if n not in order]
    return {
        "name": "split_mnist_demo",
        "scenario": {"dataset": "mnist", "kind": "nc", "n_experiences": 5},
        "expert": {"arch": "lenet", "epochs": 4},
        "strategies": [{"name": n} for n in names],
        "seeds": [0],
    }
