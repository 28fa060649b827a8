"""transformers BN image classifiers behind the ResNet interface (recovery model / teacher)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_transformers_classifier
from hf_scdd.models import BackboneError, load_backbone
from hf_scdd.models.adapters import IMAGENET_MEAN, IMAGENET_STD, TransformersClassifier

transformers = pytest.importorskip("transformers")

LABELS = ["cat", "dog", "ship", "frog"]
PREPROCESSOR = {
    "image_processor_type": "ConvNextImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 64},
    "crop_pct": 0.875,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
}


def tiny_resnet_classifier(seed: int = 0):
    return tiny_transformers_classifier(LABELS, seed)


@pytest.fixture
def saved_classifier(tmp_path):
    model = tiny_resnet_classifier()
    folder = tmp_path / "tiny-resnet"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return model, folder


def test_load_backbone_dispatches_to_adapter_with_same_logits(saved_classifier):
    reference, folder = saved_classifier
    adapter = load_backbone(str(folder))
    assert isinstance(adapter, TransformersClassifier)
    assert not adapter.training and not adapter.model.training
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits = adapter(x)
        expected = reference(pixel_values=x).logits
    assert type(logits) is torch.Tensor and logits.shape == (5, 4)
    assert torch.equal(logits, expected)
    # the BN running statistics came from the checkpoint, not a fresh init
    bn = next(m for m in adapter.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.num_batches_tracked.item() == 3 and not torch.allclose(
        bn.running_var, torch.ones_like(bn.running_var)
    )


def test_attributes_from_configs(saved_classifier):
    reference, folder = saved_classifier
    adapter = TransformersClassifier.from_pretrained(str(folder))
    assert adapter.mean == [0.5, 0.4, 0.3] and adapter.std == [0.2, 0.25, 0.3]
    assert adapter.image_size == 64
    assert adapter.in_channels == 3 and adapter.num_classes == 4
    assert adapter.class_names == LABELS
    expected_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert adapter.bn_layer_count() == expected_bn == 12
    assert adapter.training_info["base_model"] == str(folder)
    assert adapter.training_info["model_type"] == "resnet"
    assert adapter.config["class_names"] == LABELS
    assert adapter.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 16)


def test_defaults_without_preprocessor(tmp_path):
    tiny_resnet_classifier().save_pretrained(tmp_path)
    adapter = load_backbone(str(tmp_path))
    assert adapter.mean == IMAGENET_MEAN and adapter.std == IMAGENET_STD
    assert adapter.image_size == 224


@pytest.mark.parametrize("kind", ["convnext", "vit"])
def test_model_without_batchnorm_is_refused(tmp_path, kind):
    if kind == "convnext":
        config = transformers.ConvNextConfig(hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], num_labels=2)
        model = transformers.ConvNextForImageClassification(config)
    else:
        config = transformers.ViTConfig(
            image_size=16,
            patch_size=8,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            num_labels=2,
        )
        model = transformers.ViTForImageClassification(config)
    model.save_pretrained(tmp_path)
    with pytest.raises(BackboneError, match=f"\\({kind}\\) has no BatchNorm2d layer"):
        load_backbone(str(tmp_path))


def test_bare_backbone_checkpoint_is_refused(tmp_path):
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic", num_labels=4
    )
    transformers.ResNetModel(config).save_pretrained(tmp_path)  # no classification head
    with pytest.raises(BackboneError, match=r"2 missing.*classifier\.1\.bias"):
        load_backbone(str(tmp_path))


def test_remote_code_is_never_executed(tmp_path):
    sentinel = tmp_path / "executed"
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "model_type": "evil-net",
                "auto_map": {
                    "AutoConfig": "modeling_evil.EvilConfig",
                    "AutoModelForImageClassification": "modeling_evil.EvilModel",
                },
            }
        )
    )
    (tmp_path / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    with pytest.raises(BackboneError, match="could not load"):
        load_backbone(str(tmp_path))
    assert not sentinel.exists()


def test_load_from_hub_with_revision(saved_classifier, hub_repo_id):
    from huggingface_hub import HfApi

    reference, folder = saved_classifier
    api = HfApi()
    api.create_repo(hub_repo_id)
    first = api.upload_folder(repo_id=hub_repo_id, folder_path=folder).oid
    tiny_resnet_classifier(seed=1).save_pretrained(folder)  # a second commit with other weights
    api.upload_folder(repo_id=hub_repo_id, folder_path=folder)

    pinned = load_backbone(hub_repo_id, revision=first)
    latest = load_backbone(hub_repo_id)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pinned(x), reference(pixel_values=x).logits)
        assert not torch.equal(latest(x), pinned(x))
    assert pinned.mean == [0.5, 0.4, 0.3] and pinned.image_size == 64
    assert pinned.training_info["base_model"] == f"{hub_repo_id}@{first}"
