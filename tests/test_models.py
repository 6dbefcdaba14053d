"""Tests for exmodel.models: the registry and the shared ExModelNet interface of every architecture.

Interface tests are parametrized over ``list_models()`` so a newly registered architecture is checked
automatically; it only has to declare below whether it has BatchNorm and how wide its features are.
Parameter counts are checked against hand computations and the published numbers.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from exmodel.errors import ConfigError
from exmodel.models import ExModelNet, build_model, list_models, model_signature, register_model
from exmodel.models import registry

# Options that keep each architecture small enough for a fast CPU test.
SMALL: dict[str, dict] = {
    "mlp": {"hidden": [32, 16]},
    "resnet18": {"width": 8},
    "mobilenetv2": {"width_mult": 0.25},
    "efficientnet_lite0": {"input_size": 32},
}
# Expected num_features under SMALL options.
FEATURES = {
    "lenet": 84, "lenet_bn": 84, "mlp": 16,
    "resnet18": 64,  # 8 * width
    "resnet20": 64, "resnet32": 64,
    "mobilenetv2": 1280,  # 1280 * max(1, 0.25)
    "efficientnet_lite0": 1280, "efficientnet_lite0_top": 1280,
}
HAS_BN = {"lenet": False, "lenet_bn": True, "mlp": False, "resnet18": True, "resnet20": True,
          "resnet32": True, "mobilenetv2": True, "efficientnet_lite0": True,
          "efficientnet_lite0_top": True}
BATCH = 2


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, **overrides: object) -> ExModelNet:
    return build_model(name, **{**SMALL.get(name, {}), **overrides})


def batch_for(model: ExModelNet, n: int = BATCH) -> torch.Tensor:
    c, s = model.arch_kwargs["in_channels"], model.arch_kwargs["input_size"]
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(0))


ALL = list_models()


def test_builtin_architectures_are_registered() -> None:
    builtin = {"lenet", "lenet_bn", "mlp", "mobilenetv2", "resnet18", "resnet20", "resnet32"}
    assert builtin <= set(list_models()) and list_models() == sorted(list_models())


@pytest.mark.parametrize("name", ALL)
def test_architecture_is_declared_in_this_file(name: str) -> None:
    assert name in FEATURES and name in HAS_BN, f"add {name!r} to FEATURES and HAS_BN in tests/test_models.py"


# ------------------------------------------------------------------------------------ interface
@pytest.mark.parametrize("name", ALL)
def test_single_head_shapes(name: str) -> None:
    model = small(name, num_classes=7).eval()
    x = batch_for(model)
    feats = model.forward_features(x)
    assert model.num_features == FEATURES[name]
    assert feats.shape == (BATCH, FEATURES[name])
    assert model(x).shape == (BATCH, 7)
    assert not model.is_multihead and model.num_classes == 7 and model.head_sizes == (7,)
    assert model.head.in_features == model.num_features
    # A single head is shared by all tasks, so task_id does not change the answer.
    assert torch.equal(model(x, task_id=3), model(x))


@pytest.mark.parametrize("name", ALL)
def test_multi_head_shapes_and_task_id(name: str) -> None:
    model = small(name, heads=[2, 3]).eval()
    x = batch_for(model)
    assert model.is_multihead and model.head_sizes == (2, 3) and model.num_classes == 5
    assert isinstance(model.heads, nn.ModuleList) and not hasattr(model, "head")
    assert model(x, task_id=0).shape == (BATCH, 2)
    assert model(x, task_id=1).shape == (BATCH, 3)
    feats = model.forward_features(x)
    assert torch.equal(model.forward_head(feats, 1), model.heads[1](feats))
    with pytest.raises(ValueError, match="2 task heads; pass task_id"):
        model(x)
    with pytest.raises(ValueError, match=r"task_id must be an int in \[0, 2\), got 2"):
        model(x, task_id=2)


@pytest.mark.parametrize("name", ALL)
def test_forward_is_head_of_features(name: str) -> None:
    torch.manual_seed(0)
    model = small(name).eval()
    x = batch_for(model)
    assert torch.equal(model(x), model.forward_head(model.forward_features(x)))


@pytest.mark.parametrize("name", ALL)
def test_rebuild_from_arch_kwargs(name: str) -> None:
    model = small(name, num_classes=5, heads=[2, 3])
    assert model.arch_name == name
    assert model.arch_kwargs.keys() == model_signature(name).keys()
    assert model.arch_kwargs["heads"] == [2, 3] and model.arch_kwargs["num_classes"] == 5
    # arch_kwargs travel as JSON in bundles: a round trip must not change them.
    kwargs = json.loads(json.dumps(model.arch_kwargs))
    assert kwargs == model.arch_kwargs
    rebuilt = build_model(model.arch_name, **kwargs)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())  # strict: same keys and shapes


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_weights(name: str) -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return small(name).state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", ALL)
def test_feature_layer_hooks_fire_in_order(name: str) -> None:
    model = small(name).eval()
    layers = model.feature_layers()
    names = [n for n, _ in layers]
    assert len(names) >= 2 and len(set(names)) == len(names)
    fired: list[tuple[str, torch.Size]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out, n=n: fired.append((n, out.shape))) for n, m in layers]
    model(batch_for(model))
    for h in handles:
        h.remove()
    assert [n for n, _ in fired] == names  # each once, in forward order
    assert all(shape[0] == BATCH for _, shape in fired)
    assert all(model.get_submodule(n) is m for n, m in layers)


@pytest.mark.parametrize("name", ALL)
def test_bn_layers_exactly_for_bn_models(name: str) -> None:
    model = small(name)
    bns = model.bn_layers()
    assert bool(bns) == HAS_BN[name]
    assert all(isinstance(m, _BatchNorm) and model.get_submodule(n) is m for n, m in bns)


# ------------------------------------------------------------------------------------ lenet
def test_lenet_parameter_count_by_hand() -> None:
    # 28x28x1, 10 classes: conv1 6*1*25+6, conv2 16*6*25+16, fc1 400*120+120, fc2 120*84+84, head 84*10+10
    assert n_params(build_model("lenet")) == 156 + 2416 + 48120 + 10164 + 850 == 61706
    # 32x32x3 (no padding): only conv1 changes, 6*3*25+6 = 456.
    assert n_params(build_model("lenet", in_channels=3, input_size=32)) == 456 + 2416 + 48120 + 10164 + 850


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (1, 32), (3, 28), (3, 32)])
def test_lenet_flattens_16x5x5_for_28_and_32(channels: int, size: int) -> None:
    model = build_model("lenet", in_channels=channels, input_size=size)
    out = model.block2(model.block1(torch.zeros(BATCH, channels, size, size)))
    assert out.shape == (BATCH, 16, 5, 5)
    assert model.fc1[0].in_features == 400


def test_lenet_bn_norms_every_conv_and_hidden_fc() -> None:
    model = build_model("lenet_bn")
    kinds = [(type(m).__name__, m.num_features) for _, m in model.bn_layers()]
    assert kinds == [("BatchNorm2d", 6), ("BatchNorm2d", 16), ("BatchNorm1d", 120), ("BatchNorm1d", 84)]
    # Each BN adds 2 affine parameters per channel: 2 * (6 + 16 + 120 + 84) = 452.
    assert n_params(model) == 61706 + 452
    assert build_model("lenet", batchnorm=True).state_dict().keys() == model.state_dict().keys()


def test_lenet_rejects_too_small_input() -> None:
    with pytest.raises(ConfigError, match="lenet: 'input_size' 10 is too small"):
        build_model("lenet", input_size=10)


# ------------------------------------------------------------------------------------ mlp
def test_mlp_parameter_count_and_options() -> None:
    # 28*28 = 784 inputs: 784*32+32, 32*16+16, head 16*10+10.
    assert n_params(small("mlp")) == 25120 + 528 + 170
    # Default [400, 400]: 784*400+400, 400*400+400, 400*10+10.
    assert n_params(build_model("mlp")) == 314000 + 160400 + 4010
    model = small("mlp", batchnorm=True, dropout=0.5)
    assert [m.num_features for _, m in model.bn_layers()] == [32, 16]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    model.eval()  # dropout off: deterministic
    x = batch_for(model)
    assert torch.equal(model(x), model(x))


# ------------------------------------------------------------------------------------ resnets
def resnet18_params(w: int, classes: int = 10, in_ch: int = 3) -> int:
    """Hand count of the CIFAR ResNet-18 (BasicBlocks [2,2,2,2], 1x1-conv shortcuts, no conv bias)."""
    conv = lambda i, o, k=3: i * o * k * k  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(in_ch, w) + bn(w)
    in_c = w
    for out_c in (w, 2 * w, 4 * w, 8 * w):
        for j in range(2):
            total += conv(in_c, out_c) + bn(out_c) + conv(out_c, out_c) + bn(out_c)
            if j == 0 and in_c != out_c:
                total += conv(in_c, out_c, 1) + bn(out_c)
            in_c = out_c
    return total + 8 * w * classes + classes


def test_resnet18_parameter_count() -> None:
    assert resnet18_params(64) == 11_173_962  # the widely reported CIFAR ResNet-18 size (11.17M)
    assert n_params(small("resnet18")) == resnet18_params(8)


def test_resnet20_and_32_parameter_counts() -> None:
    # ResNet-20, option A: stem 3*16*9 + 32; stage 1: 3 blocks * 2 * (16*16*9 + 32) = 14016;
    # stage 2: (16*32*9 + 64 + 32*32*9 + 64) + 2 * 2 * (32*32*9 + 64) = 51072;
    # stage 3: (32*64*9 + 128 + 64*64*9 + 128) + 2 * 2 * (64*64*9 + 128) = 203520; head 64*10 + 10.
    assert n_params(build_model("resnet20")) == 464 + 14016 + 51072 + 203520 + 650 == 269_722  # "0.27M"
    # ResNet-32 adds 2 blocks per stage: 2 * 2 * (2304+32 + 9216+64 + 36864+128) = 194432.
    assert n_params(build_model("resnet32")) == 269_722 + 194_432 == 464_154  # "0.46M"
    # Option B adds a 1x1 conv + BN projection at the two downsampling blocks: 16*32+64 + 32*64+128.
    assert n_params(build_model("resnet20", shortcut="B")) == 269_722 + 576 + 2176


@pytest.mark.parametrize(("name", "side"), [("resnet18", 4), ("resnet20", 8)])
def test_resnet_final_map_size_on_32x32(name: str, side: int) -> None:
    model = small(name)
    last_name, last = model.feature_layers()[-1]
    shapes: list[torch.Size] = []
    last.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    model(batch_for(model))
    assert shapes == [torch.Size([BATCH, model.num_features, side, side])]


def test_resnet_option_a_shortcut_zero_pads_channels() -> None:
    block = build_model("resnet20").layer2[0]
    x = torch.rand(1, 16, 8, 8)
    out = block.shortcut(x)
    assert out.shape == (1, 32, 4, 4)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert out[:, :8].abs().sum() == 0 and out[:, 24:].abs().sum() == 0


# ------------------------------------------------------------------------------------ mobilenet
def test_mobilenetv2_matches_published_size() -> None:
    # The ImageNet MobileNetV2 (1000 classes) has 3,504,872 parameters; strides do not change it.
    assert n_params(build_model("mobilenetv2", num_classes=1000, input_size=224)) == 3_504_872


@pytest.mark.parametrize(("size", "last_side"), [(32, 4), (128, 4)])
def test_mobilenetv2_downsampling(size: int, last_side: int) -> None:
    # <= 64 px: stride 1 in stem and first stage, then three stride-2 stages: 32 / 8 = 4.
    # Larger: all five stride-2 layers: 128 / 32 = 4.
    model = small("mobilenetv2", input_size=size).eval()
    shapes: list[torch.Size] = []
    model.last.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    logits = model(torch.rand(1, 3, size, size))
    assert logits.shape == (1, 10)
    assert shapes == [torch.Size([1, 1280, last_side, last_side])]


def test_mobilenetv2_width_mult_scales_channels() -> None:
    model = small("mobilenetv2")
    # 32 * 0.25 = 8 stem channels; last stage 320 * 0.25 = 80; features stay 1280 below width 1.
    assert model.stem[0].out_channels == 8
    assert model.stages[-1][-1].block[-1].num_features == 80
    assert build_model("mobilenetv2", width_mult=1.5).num_features == 1920  # 1280 * 1.5


# ------------------------------------------------------------------------------------ registry
def test_unknown_architecture_lists_available() -> None:
    with pytest.raises(ConfigError, match="unknown architecture 'lenet6'; available: efficientnet_lite0, efficientnet_lite0_top, lenet, lenet_bn, mlp, "):
        build_model("lenet6")
    with pytest.raises(ConfigError, match="unknown architecture 'x'"):
        model_signature("x")


def test_unknown_option_names_key_and_allowed() -> None:
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'widht' for architecture 'resnet18'; "
                                          r"allowed: num_classes, in_channels, input_size, heads, width, norm$"):
        build_model("resnet18", widht=8)


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("lenet", {"num_classes": 0}, "lenet: 'num_classes' must be a positive integer, got 0"),
    ("lenet", {"in_channels": 1.5}, "'in_channels' must be a positive integer"),
    ("resnet20", {"heads": []}, "resnet20: 'heads' must be a non-empty list"),
    ("resnet20", {"heads": [2, 0]}, "resnet20: 'heads' must be a positive integer, got 0"),
    ("resnet20", {"shortcut": "C"}, "'shortcut' must be 'A' .* got 'C'"),
    ("resnet18", {"width": 0}, "resnet18: 'width' must be a positive integer"),
    ("mlp", {"hidden": []}, "mlp: 'hidden' must be a non-empty list"),
    ("mlp", {"dropout": 1.0}, r"mlp: 'dropout' must be a number in \[0, 1\), got 1.0"),
    ("mobilenetv2", {"width_mult": 0}, "mobilenetv2: 'width_mult' must be a positive number, got 0"),
])
def test_bad_option_values(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(name, **kwargs)


def test_model_signature_lists_defaults() -> None:
    sig = model_signature("mlp")
    assert sig == {"num_classes": 10, "in_channels": 1, "input_size": 28, "heads": None,
                   "hidden": [400, 400], "batchnorm": False, "dropout": 0.0, "norm": "batch"}
    sig["hidden"].append(1)  # a copy: the factory default is untouched
    assert model_signature("mlp")["hidden"] == [400, 400]
    assert model_signature("mobilenetv2")["in_channels"] == 3


def test_registering_a_new_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    copy = registry.Registry("architecture")
    for name in registry._REGISTRY:
        copy.add(name, registry._REGISTRY.get(name))
    monkeypatch.setattr(registry, "_REGISTRY", copy)

    class Tiny(ExModelNet):
        _feature_layer_names = ("body",)

        def __init__(self, num_classes: int, in_channels: int, input_size: int, heads: list[int] | None) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, 4))
            self._init_heads(4, num_classes, heads)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    @register_model("tiny")
    def tiny(num_classes: int = 10, in_channels: int = 1, input_size: int = 4,
             heads: list[int] | None = None) -> Tiny:
        return Tiny(num_classes, in_channels, input_size, heads)

    assert "tiny" in list_models()
    model = build_model("tiny", num_classes=3)
    assert model.arch_name == "tiny" and model.arch_kwargs == {
        "num_classes": 3, "in_channels": 1, "input_size": 4, "heads": None, "norm": "batch"}
    assert tiny(heads=(2, 2)).arch_kwargs["heads"] == [2, 2]  # direct calls record too, tuples -> lists
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)

    with pytest.raises(ValueError, match="'tiny' is already registered"):
        register_model("tiny")(tiny)
    with pytest.raises(TypeError, match=r"must take num_classes, in_channels, input_size, heads"):
        register_model("broken")(lambda num_classes=10: Tiny(num_classes, 1, 4, None))
    with pytest.raises(TypeError, match=r"without default: \['depth'\]"):
        register_model("broken")(lambda depth, num_classes=10, in_channels=1, input_size=4, heads=None: None)


@pytest.mark.parametrize("name", ["lenet_bn", "resnet20"])
def test_replace_batchnorm_swaps_every_bn_for_per_sample_or_no_normalization(name: str) -> None:
    from exmodel.models.base import replace_batchnorm

    side = 28 if name == "lenet_bn" else 32
    channels = 1 if name == "lenet_bn" else 3
    torch.manual_seed(0)
    x = torch.rand(6, channels, side, side)
    for kind, layer in (("layer", nn.GroupNorm), ("none", nn.Identity)):
        net = build_model(name, in_channels=channels, input_size=side)
        n_bn = len(net.bn_layers())
        assert replace_batchnorm(net, kind) == n_bn and not net.bn_layers()
        assert sum(isinstance(m, layer) for m in net.modules()) >= n_bn
        net.train()  # no batch statistics: a sample's output does not depend on the rest of its batch
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    net = build_model(name, in_channels=channels, input_size=side)
    assert replace_batchnorm(net, "batch") == 0 and len(net.bn_layers()) > 0
    with pytest.raises(ValueError, match="norm must be one of batch, layer, none"):
        replace_batchnorm(net, "group")


@pytest.mark.parametrize("name", ALL)
def test_every_architecture_takes_norm_and_rebuilds_with_it(name: str) -> None:
    model = small(name, norm="layer")
    assert model.arch_kwargs["norm"] == "layer" and not model.bn_layers()
    again = build_model(name, **json.loads(json.dumps(model.arch_kwargs)))
    assert again.state_dict().keys() == model.state_dict().keys()  # a bundle's weights load into it
    with pytest.raises(ConfigError, match=f"{name}: 'norm' must be one of batch, layer, none, got 'group'"):
        build_model(name, norm="group")


def test_layer_swap_normalizes_each_sample_by_hand() -> None:
    from exmodel.models.base import replace_batchnorm

    seq = nn.Sequential(nn.BatchNorm2d(2))
    replace_batchnorm(seq, "layer")
    x = torch.tensor([[[[1.0, 3.0]], [[5.0, 7.0]]]])  # one sample, 2 channels, 1 × 2 positions
    want = (x - 4.0) / (5.0 + 1e-5) ** 0.5  # mean 4 and variance 5 over all of the sample's values
    assert torch.allclose(seq(x), want, atol=1e-5)


def test_lenet_pooling_without_gradients_is_max_pool2d_exactly() -> None:
    from exmodel.models.lenet import MaxPool2

    pool = MaxPool2()
    x = torch.relu(torch.randn(3, 4, 10, 12, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert torch.equal(pool(x), torch.nn.functional.max_pool2d(x, 2))
        odd = x[..., :9, :11]  # odd sides: the last row and column are dropped, as max_pool2d does
        assert torch.equal(pool(odd), torch.nn.functional.max_pool2d(odd, 2)) and pool(odd).shape[-2:] == (4, 5)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pool(xg).pow(2).sum(), xg)
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torch.nn.functional.max_pool2d(xr, 2).pow(2).sum(), xr)
    assert torch.equal(g, ref)
    net = build_model("lenet_bn", num_classes=3, in_channels=1, input_size=28).eval()
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fast = net(images)
    assert torch.equal(fast, net(images.requires_grad_(True)).detach())  # both paths, the same logits
