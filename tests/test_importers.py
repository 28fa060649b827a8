"""Foreign checkpoints (torchvision, MoCo v2/v3 + lincls, DINO, SwAV) import into hf_scdd's ResNet.

Each checkpoint is built here in the exact layout its codebase writes (prefixes, heads, momentum encoders,
queues, optimiser state, ``args`` namespaces), from a tiny ResNet whose BN buffers are randomised so that a
tensor loaded from the wrong place cannot compare equal by accident.
"""

from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file

from hf_scdd.models import BackboneError, ResNet
from hf_scdd.models.importers import (
    LAYOUTS,
    detect_layout,
    import_checkpoint,
    import_state_dict,
    import_torchvision_state_dict,
)

ARCH = dict(arch="resnet10", stem="cifar", width=8)


def random_backbone(seed: int) -> dict[str, torch.Tensor]:
    """Backbone tensors (no fc) of a tiny ResNet with random weights *and* random BN buffers."""
    torch.manual_seed(seed)
    sd = ResNet(num_classes=0, **ARCH).state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(seed + 17)
        elif k.endswith("running_var"):
            out[k] = torch.rand_like(v) + 0.5
        else:
            out[k] = torch.randn_like(v)
    return out


def prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()}


NF = 64  # num_features of resnet10 at width 8


def mocov2_checkpoint(q, k):
    state = {
        **prefixed(q, "module.encoder_q."),
        "module.encoder_q.fc.0.weight": torch.randn(NF, NF),
        "module.encoder_q.fc.0.bias": torch.randn(NF),
        "module.encoder_q.fc.2.weight": torch.randn(16, NF),
        "module.encoder_q.fc.2.bias": torch.randn(16),
        **prefixed(k, "module.encoder_k."),
        "module.encoder_k.fc.0.weight": torch.randn(NF, NF),
        "module.encoder_k.fc.0.bias": torch.randn(NF),
        "module.encoder_k.fc.2.weight": torch.randn(16, NF),
        "module.encoder_k.fc.2.bias": torch.randn(16),
        "module.queue": torch.randn(16, 4096),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {
        "epoch": 200,
        "arch": "resnet10",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]},
    }


def mocov3_checkpoint(q, k):
    head = {
        "fc.0.weight": torch.randn(32, NF),
        "fc.1.weight": torch.randn(32),
        "fc.1.bias": torch.randn(32),
        "fc.1.running_mean": torch.randn(32),
        "fc.1.running_var": torch.rand(32),
        "fc.1.num_batches_tracked": torch.tensor(5),
        "fc.3.weight": torch.randn(16, 32),
    }
    state = {
        **prefixed(q, "module.base_encoder."),
        **prefixed(head, "module.base_encoder."),
        **prefixed(k, "module.momentum_encoder."),
        **prefixed(head, "module.momentum_encoder."),
        "module.predictor.0.weight": torch.randn(32, 16),
        "module.predictor.3.weight": torch.randn(16, 32),
    }
    return {
        "epoch": 100,
        "arch": "resnet10",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
    }


def dino_checkpoint(teacher, student):
    head = {
        "head.mlp.0.weight": torch.randn(32, NF),
        "head.mlp.0.bias": torch.randn(32),
        "head.last_layer.weight_g": torch.randn(100, 1),
        "head.last_layer.weight_v": torch.randn(100, 32),
    }
    return {
        "student": {**prefixed(student, "module.backbone."), **prefixed(head, "module.")},
        "teacher": {**prefixed(teacher, "backbone."), **head},
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 100,
        "args": argparse.Namespace(arch="resnet10", out_dim=100, momentum_teacher=0.996),
        "dino_loss": {"center": torch.zeros(1, 100)},
    }


def swav_checkpoint(q, _):
    return {
        **prefixed(q, "module."),
        "module.projection_head.0.weight": torch.randn(32, NF),
        "module.projection_head.0.bias": torch.randn(32),
        "module.projection_head.3.weight": torch.randn(16, 32),
        "module.prototypes.weight": torch.randn(30, 16),
    }


def torchvision_checkpoint(q, _):
    return {**q, "fc.weight": torch.randn(5, NF), "fc.bias": torch.randn(5)}


def lincls_checkpoint(q, _):
    state = {
        **prefixed(q, "module."),
        "module.fc.weight": torch.randn(10, NF),
        "module.fc.bias": torch.randn(10),
    }
    return {
        "epoch": 100,
        "arch": "resnet10",
        "state_dict": state,
        "best_acc1": torch.tensor(71.1),
        "optimizer": {"state": {}, "param_groups": []},
    }


BUILDERS = {
    "mocov2": mocov2_checkpoint,
    "mocov3": mocov3_checkpoint,
    "dino": dino_checkpoint,
    "swav": swav_checkpoint,
    "torchvision": torchvision_checkpoint,
    "lincls": lincls_checkpoint,
}
# classifier stored in the checkpoint (under its own prefix) that must load, per layout
STORED_FC = {"torchvision": "fc.", "lincls": "module.fc."}


def assert_backbone_equal(model: ResNet, expected: dict[str, torch.Tensor]) -> None:
    got = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_layouts_cover_every_builder():
    assert set(BUILDERS) == set(LAYOUTS) - {"auto"}


@pytest.mark.parametrize("layout", sorted(BUILDERS))
@pytest.mark.parametrize("given", ["auto", "explicit"])
def test_import_each_layout_from_file(tmp_path, layout, given):
    wanted, other = random_backbone(1), random_backbone(2)
    checkpoint = BUILDERS[layout](wanted, other)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint, path)

    model = import_checkpoint(path, **ARCH, layout=layout if given == "explicit" else "auto")

    assert isinstance(model, ResNet) and not model.training
    assert_backbone_equal(model, wanted)
    assert model.training_info["import_layout"] == layout
    assert model.training_info["imported_from"] == str(path)
    if layout in STORED_FC:  # the checkpoint's classifier loads, with its class count
        state = checkpoint.get("state_dict", checkpoint)
        prefix = STORED_FC[layout]
        assert model.num_classes == state[prefix + "weight"].shape[0]
        assert torch.equal(model.fc.weight, state[prefix + "weight"])
        assert torch.equal(model.fc.bias, state[prefix + "bias"])
    else:  # projection heads are not classifiers: a feature extractor unless num_classes is given
        assert model.num_classes == 0 and isinstance(model.fc, torch.nn.Identity)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, NF)


def test_ssl_import_gets_fresh_probe_head():
    wanted = random_backbone(3)
    torch.manual_seed(0)
    model = import_state_dict(
        mocov2_checkpoint(wanted, random_backbone(4)),
        **ARCH,
        num_classes=7,
        class_names=[f"c{i}" for i in range(7)],
    )
    assert model.fc.weight.shape == (7, NF)
    assert torch.all(model.fc.bias == 0)
    assert 0.005 < model.fc.weight.std().item() < 0.02  # MoCo probe init N(0, 0.01)
    assert model.class_names == [f"c{i}" for i in range(7)]
    assert model.training_info["method"] == "mocov2"
    assert_backbone_equal(model, wanted)


def test_dino_prefers_teacher_over_student():
    teacher, student = random_backbone(5), random_backbone(6)
    model = import_state_dict(dino_checkpoint(teacher, student), **ARCH)
    assert_backbone_equal(model, teacher)
    only_student = dino_checkpoint(teacher, student)
    del only_student["teacher"]
    assert_backbone_equal(import_state_dict(only_student, **ARCH), student)


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detect_layout_from_key_names(layout):
    checkpoint = BUILDERS[layout](random_backbone(1), random_backbone(2))
    state = checkpoint.get("state_dict", checkpoint.get("teacher", checkpoint))
    assert detect_layout(state) == layout


def test_safetensors_file_and_folder(tmp_path):
    wanted = random_backbone(7)
    save_file(wanted, str(tmp_path / "model.safetensors"))
    assert_backbone_equal(import_checkpoint(tmp_path / "model.safetensors", **ARCH), wanted)
    assert_backbone_equal(import_checkpoint(tmp_path, **ARCH), wanted)  # folder with model.safetensors


def test_import_torchvision_state_dict_and_round_trip(tmp_path):
    wanted = random_backbone(8)
    state = {**wanted, "fc.weight": torch.randn(3, NF), "fc.bias": torch.randn(3)}
    model = import_torchvision_state_dict(state, **ARCH, in_channels=3, image_size=16)
    assert model.num_classes == 3
    model.save_pretrained(tmp_path / "saved")
    again = ResNet.from_pretrained(tmp_path / "saved")
    for key, value in state.items():
        assert torch.equal(again.state_dict()[key], value), key
    assert again.training_info["import_layout"] == "torchvision"


def test_missing_num_batches_tracked_is_tolerated():
    wanted = {k: v for k, v in random_backbone(9).items() if not k.endswith("num_batches_tracked")}
    model = import_torchvision_state_dict(wanted, **ARCH)
    assert all(v.item() == 0 for k, v in model.state_dict().items() if k.endswith("num_batches_tracked"))
    assert torch.equal(model.bn1.running_var, wanted["bn1.running_var"])


# ---------------------------------------------------------------------------------------------------------
# Strictness: every problem is an error naming the keys and the layout assumed
# ---------------------------------------------------------------------------------------------------------


def test_wrong_width_lists_mismatched_shapes():
    checkpoint = mocov2_checkpoint(random_backbone(1), random_backbone(2))
    with pytest.raises(BackboneError) as err:
        import_state_dict(checkpoint, arch="resnet10", stem="cifar", width=16)
    message = str(err.value)
    assert "conv1.weight (checkpoint [8, 3, 3, 3], model [16, 3, 3, 3])" in message
    assert "layout 'mocov2' (auto-detected" in message
    assert "width=8" in message  # the hint read from the checkpoint's conv1
    assert "..." in message  # more than 10 mismatches: the listing is cut


def test_width16_model_into_width8_via_torchvision_importer():
    torch.manual_seed(0)
    big = ResNet(num_classes=4, arch="resnet10", stem="cifar", width=16).state_dict()
    with pytest.raises(
        BackboneError, match=r"shape mismatches \(\d+: conv1\.weight \(checkpoint \[16, 3, 3, 3\]"
    ):
        import_torchvision_state_dict(big, arch="resnet10", stem="cifar", width=8, num_classes=4)


def test_missing_and_unexpected_keys_are_named():
    backbone = random_backbone(1)
    state = prefixed(backbone, "module.encoder_q.")
    del state["module.encoder_q.layer4.0.bn2.running_var"]
    state["module.encoder_q.layer5.0.conv1.weight"] = torch.randn(8, 8, 3, 3)
    with pytest.raises(BackboneError) as err:
        import_state_dict({"state_dict": state}, **ARCH, layout="mocov2")
    message = str(err.value)
    assert "missing keys (1: layer4.0.bn2.running_var)" in message
    assert "unexpected keys (1: layer5.0.conv1.weight)" in message
    assert "layout 'mocov2'" in message and "auto-detected" not in message


def test_wrong_arch_and_stem():
    checkpoint = swav_checkpoint(random_backbone(1), None)
    with pytest.raises(BackboneError, match=r"missing keys \(\d+: layer1\.1\.conv1\.weight"):
        import_state_dict(checkpoint, arch="resnet18", stem="cifar", width=8)
    with pytest.raises(
        BackboneError,
        match=r"conv1\.weight \(checkpoint \[8, 3, 3, 3\], model \[8, 3, 7, 7\]\).*"
        r"stem='cifar'",
    ):
        import_state_dict(checkpoint, arch="resnet10", stem="imagenet", width=8)


def test_wrong_layout_is_reported():
    checkpoint = mocov2_checkpoint(random_backbone(1), random_backbone(2))
    with pytest.raises(BackboneError, match=r"under layout 'mocov3'.*missing keys"):
        import_state_dict(checkpoint, **ARCH, layout="mocov3")
    with pytest.raises(BackboneError, match="unknown checkpoint layout 'simclr'"):
        import_state_dict(checkpoint, **ARCH, layout="simclr")


def test_classifier_mismatch_and_keep_classifier():
    checkpoint = lincls_checkpoint(random_backbone(1), None)
    with pytest.raises(BackboneError, match="classifier .*fc.weight.*10, 64"):
        import_state_dict(checkpoint, **ARCH, num_classes=5)
    model = import_state_dict(checkpoint, **ARCH, num_classes=5, keep_classifier=False)
    assert model.fc.weight.shape == (5, NF)
    assert model.training_info["method"] == "mocov2-linear-probe"


class NotATensor:  # a pickled object that weights_only loading must refuse
    def __init__(self):
        self.value = 3


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": random_backbone(1), "extra": NotATensor()}, path)
    with pytest.raises(BackboneError, match="weights_only=True"):
        import_checkpoint(path, **ARCH)


def test_no_tensors_and_missing_file(tmp_path):
    with pytest.raises(BackboneError, match="no tensors found"):
        import_state_dict({"epoch": 3, "state_dict": {"a": 1}}, **ARCH)
    with pytest.raises(BackboneError, match="does not exist"):
        import_checkpoint(tmp_path / "nope.pth", **ARCH)
    with pytest.raises(BackboneError, match="without model.safetensors"):
        import_checkpoint(tmp_path, **ARCH)
