"""hf_scdd's ResNet: torchvision compatibility, round trip with BN buffers, errors, card, load_backbone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_scdd.models import ARCHITECTURES, BackboneError, ResNet, build_backbone, load_backbone
from hf_scdd.models.importers import import_torchvision_state_dict

# The first and last keys of torchvision.models.resnet18().state_dict(), copied from torchvision.
TORCHVISION_RESNET18_FIRST = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "bn1.running_mean",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.0.bn1.weight",
    "layer1.0.bn1.bias",
    "layer1.0.bn1.running_mean",
]
TORCHVISION_RESNET18_LAST = [
    "layer4.1.bn1.running_var",
    "layer4.1.bn1.num_batches_tracked",
    "layer4.1.conv2.weight",
    "layer4.1.bn2.weight",
    "layer4.1.bn2.bias",
    "layer4.1.bn2.running_mean",
    "layer4.1.bn2.running_var",
    "layer4.1.bn2.num_batches_tracked",
    "fc.weight",
    "fc.bias",
]
TORCHVISION_RESNET18_TENSORS = 122  # incl. BN buffers
TORCHVISION_RESNET18_PARAMS = 11_689_512
TORCHVISION_RESNET50_PARAMS = 25_557_032


def torchvision_resnet_shapes(blocks, bottleneck: bool, num_classes: int = 1000, width: int = 64) -> dict:
    """Key -> shape of a torchvision ResNet state dict, written from torchvision's naming rules."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name, c):
        shapes.update(
            {
                f"{name}.weight": (c,),
                f"{name}.bias": (c,),
                f"{name}.running_mean": (c,),
                f"{name}.running_var": (c,),
                f"{name}.num_batches_tracked": (),
            }
        )

    shapes["conv1.weight"] = (width, 3, 7, 7)
    bn("bn1", width)
    expansion = 4 if bottleneck else 1
    inplanes = width
    for stage, n in enumerate(blocks):
        planes = width * 2**stage
        for b in range(n):
            p = f"layer{stage + 1}.{b}"
            stride = 2 if (stage > 0 and b == 0) else 1
            if bottleneck:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
                shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                bn(f"{p}.bn1", planes)
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def test_resnet18_keys_match_torchvision():
    model = ResNet("resnet18", num_classes=1000, stem="imagenet", width=64)
    keys = list(model.state_dict())
    assert len(keys) == TORCHVISION_RESNET18_TENSORS
    assert keys[:10] == TORCHVISION_RESNET18_FIRST
    assert keys[-10:] == TORCHVISION_RESNET18_LAST
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET18_PARAMS
    expected = torchvision_resnet_shapes((2, 2, 2, 2), bottleneck=False)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_torchvision_named_state_dict_loads_strictly():
    torch.manual_seed(0)
    shapes = torchvision_resnet_shapes((2, 2, 2, 2), bottleneck=False)
    state = {k: (torch.tensor(7) if not s else torch.randn(s)) for k, s in shapes.items()}
    model = ResNet("resnet18", num_classes=1000, stem="imagenet")
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(
        model.layer3[0].downsample[1].running_mean, state["layer3.0.downsample.1.running_mean"]
    )
    assert model.layer3[0].downsample[1].num_batches_tracked.item() == 7
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_resnet50_matches_torchvision():
    model = ResNet("resnet50", num_classes=1000, stem="imagenet", width=64)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_RESNET50_PARAMS
    expected = torchvision_resnet_shapes((3, 4, 6, 3), bottleneck=True)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert model.num_features == 2048


@pytest.mark.parametrize(
    "arch,count", [("resnet10", 12), ("resnet18", 20), ("resnet34", 36), ("resnet50", 53), ("resnet101", 104)]
)
def test_bn_layer_counts(arch, count):
    assert build_backbone(arch, width=4, num_classes=2).bn_layer_count() == count


def test_cifar_stem_keeps_resolution_and_imagenet_stem_downsamples():
    cifar = ResNet("resnet10", width=8, stem="cifar", num_classes=3, in_channels=1).eval()
    imagenet = ResNet("resnet10", width=8, stem="imagenet", num_classes=3, in_channels=1).eval()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    x = torch.randn(2, 1, 28, 28)
    assert cifar(x).shape == imagenet(x).shape == (2, 3)
    assert cifar.forward_features(x).shape == (2, 64)


# ---------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ---------------------------------------------------------------------------------------------------------


def trained_tiny(seed: int = 0) -> ResNet:
    torch.manual_seed(seed)
    model = ResNet(
        "resnet10",
        num_classes=4,
        stem="cifar",
        in_channels=1,
        width=8,
        image_size=28,
        mean=[0.286],
        std=[0.353],
        class_names=["a", "b", "c", "d"],
        training={"method": "supervised", "dataset": "fashion_mnist"},
    )
    model.train()
    for _ in range(3):  # train-mode forwards move the running statistics away from their init
        model(torch.rand(8, 1, 28, 28) * 3 + 1)
    return model


def test_round_trip_is_bit_identical_with_bn_buffers(tmp_path):
    model = trained_tiny()
    assert model.bn1.num_batches_tracked.item() == 3
    assert model.bn1.running_mean.abs().sum() > 0 and not torch.allclose(model.bn1.running_var, torch.ones(8))
    model.update_training_info(probe_top1=0.5)
    model.save_pretrained(tmp_path)

    loaded = ResNet.from_pretrained(tmp_path)
    assert not loaded.training  # from_pretrained returns eval mode
    original = model.state_dict()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key
    assert loaded.bn1.num_batches_tracked.item() == 3
    assert loaded.config == model.config
    assert loaded.training_info["probe_top1"] == 0.5
    x = torch.rand(5, 1, 28, 28)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    on_disk = load_file(str(tmp_path / "model.safetensors"))
    assert {"layer4.0.bn2.running_var", "layer4.0.bn2.num_batches_tracked"} <= set(on_disk)


def test_from_pretrained_is_strict(tmp_path):
    trained_tiny().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["layer2.0.bn1.running_var"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match="layer2.0.bn1.running_var"):
        ResNet.from_pretrained(tmp_path)


def test_reset_classifier_changes_config(tmp_path):
    model = trained_tiny()
    model.reset_classifier(6, [str(i) for i in range(6)])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_classes"] == 6 and config["class_names"] == [str(i) for i in range(6)]
    assert ResNet.from_pretrained(tmp_path).fc.weight.shape == (6, 64)


# ---------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------


def test_unknown_arch_and_stem():
    with pytest.raises(BackboneError, match=r"unknown architecture 'resnet12'.*resnet18"):
        ResNet("resnet12")
    with pytest.raises(BackboneError, match="unknown stem 'tiny'"):
        ResNet("resnet18", stem="tiny")
    with pytest.raises(BackboneError, match="mean/std need 3 values"):
        ResNet("resnet10", mean=[0.5], std=[0.5])
    with pytest.raises(BackboneError, match="2 class names for 3 classes"):
        ResNet("resnet10", num_classes=3, class_names=["a", "b"])
    assert set(ARCHITECTURES) == {"resnet10", "resnet18", "resnet34", "resnet50", "resnet101"}


def test_wrong_shapes_checkpoint_names_keys():
    wide = ResNet("resnet10", width=16, num_classes=10).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch for conv1.weight"):
        ResNet("resnet10", width=8, num_classes=10).load_state_dict(wide)
    with pytest.raises(
        BackboneError, match=r"conv1\.weight \(checkpoint \[16, 3, 3, 3\], model \[8, 3, 3, 3\]\)"
    ):
        import_torchvision_state_dict(wide, arch="resnet10", stem="cifar", width=8)


# ---------------------------------------------------------------------------------------------------------
# Card and load_backbone
# ---------------------------------------------------------------------------------------------------------


def test_card_renders_method_and_probe_accuracy(tmp_path):
    model = trained_tiny()
    model.update_training_info(
        method="mocov2", epochs=5, probe_top1=0.81234, probe_epochs=3, base_model="tester/base"
    )
    card = str(model.generate_model_card())
    assert "library_name: hf_scdd" in card
    assert "| method | mocov2 |" in card
    assert "| linear-probe top-1 (test) | 81.23 % |" in card
    assert "value: 0.8123" in card  # model-index entry
    assert "base_model: tester/base" in card
    assert "eval mode" in card  # the MoCo-specific paragraph
    model.save_pretrained(tmp_path)
    assert "81.23 %" in (tmp_path / "README.md").read_text()


def test_card_without_probe_says_na():
    card = str(ResNet("resnet10", width=8).generate_model_card())
    assert "| linear-probe top-1 (test) | n/a |" in card
    assert "model-index" not in card


def test_load_backbone_folder(tmp_path):
    model = trained_tiny()
    model.save_pretrained(tmp_path / "m")
    loaded = load_backbone(str(tmp_path / "m"))
    assert isinstance(loaded, ResNet) and not loaded.training
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.eval()(x))


def test_load_backbone_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(str(tmp_path / "empty"))
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"hidden": 3}')
    with pytest.raises(BackboneError, match="neither an hf_scdd backbone"):
        load_backbone(str(tmp_path / "odd"))
