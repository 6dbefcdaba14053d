"""exmodel: continual learning from a stream of trained models.

The Python API in a few lines (see the README, "Consolidate your own models")::

    import exmodel
    a = exmodel.Expert.from_module(my_mlp, classes=[0, 1, 2, 3, 4], input_shape=(1, 28, 28),
                                   normalization=([0.5], [0.5]), dataset="mnist")
    b = exmodel.Expert.from_file("cnn.pt2", classes=[5, 6, 7, 8, 9], normalization=([0.1307], [0.3081]))
    model = exmodel.consolidate([a, b], arch="lenet_bn")
    print(exmodel.evaluate(model, "mnist", all_classes=True)["accuracy"])
    exmodel.save_bundle(model, "merged/")          # exmodel.load_bundle("merged/") reads it back

Names are imported on first use, so ``import exmodel`` (and ``exmodel --version``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Expert": "exmodel.experts.expert",
    "ExpertCard": "exmodel.experts.card",
    "load_bundle": "exmodel.experts.bundle",
    "save_bundle": "exmodel.experts.bundle",
    "consolidate": "exmodel.consolidation",
    "ExpertNotAbsorbed": "exmodel.consolidation",
    "evaluate": "exmodel.evaluation.score",
    "import_program": "exmodel.experts.imports",
    "ExmodelError": "exmodel.errors",
    "BundleError": "exmodel.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'exmodel' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
