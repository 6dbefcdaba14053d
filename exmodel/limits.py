"""Resource limits for untrusted inputs.

A bundle, a card or a config is data from somebody else. Its fields decide how much memory and time
exmodel spends (a class count sizes every logit, an input shape sizes every activation, a file's
length what is read), so each has a ceiling, checked before anything is allocated. The defaults fit
every model exmodel is for (ImageNet-21k's 21,841 classes, 3×1024×1024 inputs, multi-GiB weights)
and stop a card that asks for terabytes. Each can be raised with an environment variable:

==========================  ===============================  =======================================
limit                       environment variable             default
==========================  ===============================  =======================================
weights file                ``EXMODEL_MAX_WEIGHTS_BYTES``    4 GiB
classes in a label space    ``EXMODEL_MAX_CLASSES``          100,000
values in one input         ``EXMODEL_MAX_INPUT_VALUES``     3 × 1024 × 1024 (C·H·W)
card, config, result file   ``EXMODEL_MAX_TEXT_BYTES``       16 MiB
==========================  ===============================  =======================================

A network's size is not a limit of its own: a card cannot ask for a network bigger than the tensors
its weights file holds (:func:`exmodel.experts.bundle.assemble_expert` compares them before
building it), so the weights file's limit bounds it.
"""

from __future__ import annotations

import os

from exmodel.errors import ConfigError

DEFAULTS: dict[str, int] = {
    "EXMODEL_MAX_WEIGHTS_BYTES": 4 << 30,
    "EXMODEL_MAX_CLASSES": 100_000,
    "EXMODEL_MAX_INPUT_VALUES": 3 * 1024 * 1024,
    "EXMODEL_MAX_TEXT_BYTES": 16 << 20,
}


def limit(variable: str) -> int:
    """The limit named by ``variable``: the environment's value if set, else its default."""
    raw = os.environ.get(variable)
    if raw is None or raw.strip() == "":
        return DEFAULTS[variable]
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{variable}={raw!r} is not a whole number") from None
    if value < 1:
        raise ConfigError(f"{variable}={raw!r} must be at least 1")
    return value


def max_weights_bytes() -> int:
    return limit("EXMODEL_MAX_WEIGHTS_BYTES")


def max_classes() -> int:
    return limit("EXMODEL_MAX_CLASSES")


def max_input_values() -> int:
    return limit("EXMODEL_MAX_INPUT_VALUES")


def max_text_bytes() -> int:
    return limit("EXMODEL_MAX_TEXT_BYTES")
