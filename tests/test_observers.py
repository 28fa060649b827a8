"""Several observers in recovery (``recover --observers``): the ensemble's logits and BN term are those of its
members, each through its own normalisation, and the recover stage optimises against all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import bn_backbone, write_random_dataset
from hf_scdd.configs import ConfigError, config_from_dict
from hf_scdd.data.tensors import normalize
from hf_scdd.errors import BackboneError
from hf_scdd.hub import load_distilled
from hf_scdd.losses.bn_matching import BNStatsRecorder, grouped_recovery_loss
from hf_scdd.models.adapters import model_logits
from hf_scdd.models.ensemble import LogitView, ObserverEnsemble
from hf_scdd.stages.recover import RecoverConfig, main

CLASSES = ["zero", "one", "two", "three"]
SIZE = 16


def second_observer(seed: int = 1, num_classes: int = 4):
    """Another recovery-model-like network with its own weights, BN statistics and input normalisation."""
    model = bn_backbone(num_classes=num_classes, seed=seed, class_names=CLASSES[:num_classes])
    model.mean, model.std = [0.5], [0.25]
    return model


def own_input(model, pixels: torch.Tensor) -> torch.Tensor:
    return normalize(pixels, model.mean, model.std)


def test_ensemble_logits_are_the_members_mean_each_on_its_own_normalisation():
    first, second = bn_backbone(class_names=CLASSES), second_observer()
    ensemble = ObserverEnsemble([first, second]).eval()
    pixels = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        got = ensemble(own_input(first, pixels))
        expected = (first(own_input(first, pixels)) + second(own_input(second, pixels))) / 2
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (ensemble.num_classes, ensemble.mean, ensemble.class_names) == (4, first.mean, CLASSES)


def test_ensemble_bn_term_sums_each_members_own_term_with_every_first_layer_weighted():
    first, second = bn_backbone(class_names=CLASSES), second_observer()
    ensemble = ObserverEnsemble([first, second]).eval()
    pixels, labels = torch.rand(8, 1, SIZE, SIZE), torch.tensor([0, 1, 2, 3] * 2)
    _, _, bn = grouped_recovery_loss(ensemble, own_input(first, pixels), labels, groups=2, r_bn=0.1)
    parts = [grouped_recovery_loss(m, own_input(m, pixels), labels, groups=2, r_bn=0.1)[2] for m in (first, second)]
    torch.testing.assert_close(bn, parts[0] + parts[1], rtol=1e-4, atol=1e-4)
    with BNStatsRecorder(ensemble, first_bn_multiplier=10.0) as recorder:
        ensemble(own_input(first, pixels))
        weights = recorder.layer_weights()
    per_member = len(recorder.layers) // 2
    assert sorted(recorder.first_indices.values()) == [0, per_member]
    assert weights.tolist().count(10.0) == 2


def test_an_observer_for_other_classes_is_refused():
    with pytest.raises(BackboneError, match="predicts 3 classes"):
        ObserverEnsemble([bn_backbone(class_names=CLASSES), second_observer(num_classes=3)], names=["a", "b"])


# --------------------------------------------------------------------------------------------------------
# The recover stage with --observers
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("observers")
    bn_backbone(class_names=CLASSES).save_pretrained(root / "backbone")
    second_observer().save_pretrained(root / "teacher")
    write_random_dataset(root / "data", CLASSES, SIZE)
    return root


def run(assets, out, **values):
    base = dict(backbone=str(assets / "backbone"), dataset=str(assets / "data"), output_dir=str(out), ipc=2,
                cpu=True, mixed_precision="no", report_to="none", group_size=2, seed=3, init="real",
                selection="kmeans", iterations=4, lr=0.05, bn_targets="clean")
    return main(config_from_dict(RecoverConfig, {**base, **values}))


def pixels_of(folder) -> np.ndarray:
    return np.stack([np.asarray(im) for im in load_distilled(folder)[0]["image"]])


def test_recover_with_an_observer_optimises_against_both_and_reproduces(assets, tmp_path):
    from safetensors.torch import load_file

    alone = run(assets, tmp_path / "alone")
    both = run(assets, tmp_path / "both", observers=[str(assets / "teacher")])
    again = run(assets, tmp_path / "again", observers=[str(assets / "teacher")])
    assert not np.array_equal(pixels_of(alone), pixels_of(both))  # the observer changed the optimisation
    assert np.array_equal(pixels_of(both), pixels_of(again))  # same seed and config: same images
    # the selection stays the recovery model's: the same starting images with and without the observer
    starts = [load_file(str(f / "inputs" / "init_images.safetensors"))["train_indices"] for f in (alone, both)]
    assert torch.equal(*starts)
    # the clean targets cover every observer's BN layers
    layers = len(load_file(str(alone / "inputs" / "bn_targets.safetensors")))
    assert len(load_file(str(both / "inputs" / "bn_targets.safetensors"))) == 2 * layers
    assert json.loads((both / "config.json").read_text())["config"]["observers"] == [str(assets / "teacher")]


def test_observers_without_optimisation_are_refused(assets, tmp_path):
    out = tmp_path / "kept"
    with pytest.raises(ConfigError, match="--observers only shape optimised images"):
        run(assets, out, iterations=0, observers=[str(assets / "teacher")])
    assert not out.exists() or not any(out.iterdir())


# --------------------------------------------------------------------------------------------------------
# Joint selection features (``recover --selection_features joint``)
# --------------------------------------------------------------------------------------------------------


def test_joint_features_are_each_members_unit_features_weighed_equally():
    first, second = bn_backbone(class_names=CLASSES), second_observer()
    ensemble = ObserverEnsemble([first, second]).eval()
    pixels = torch.rand(5, 1, SIZE, SIZE)
    with torch.no_grad():
        joint = ensemble.forward_features(own_input(first, pixels))
        own = [torch.nn.functional.normalize(m.forward_features(own_input(m, pixels)), dim=1) for m in (first, second)]
    assert joint.shape == (5, own[0].shape[1] + own[1].shape[1])
    torch.testing.assert_close(joint.norm(dim=1), torch.ones(5))
    # cosine similarity on the joint features = the mean of the members' own cosine similarities
    torch.testing.assert_close(joint @ joint.T, (own[0] @ own[0].T + own[1] @ own[1].T) / 2, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def selection_assets(tmp_path_factory):
    """The recovery model, a second model (the selection model) and 10 candidates per class for 2 picks."""
    root = tmp_path_factory.mktemp("selection")
    bn_backbone(class_names=CLASSES).save_pretrained(root / "backbone")
    second_observer().save_pretrained(root / "teacher")
    write_random_dataset(root / "data", CLASSES, SIZE, per_split=40)
    return root


def picked_indices(folder) -> torch.Tensor:
    """The training-split indices a recover run started from, as it recorded them."""
    from safetensors.torch import load_file

    return load_file(str(folder / "inputs" / "init_images.safetensors"))["train_indices"]


def library_medoids(root, observer) -> torch.Tensor:
    """The sorted indices :func:`select_real_images` picks with ``observer`` under :func:`run`'s settings."""
    from hf_scdd.data import load_image_dataset
    from hf_scdd.synthesis.selection import select_real_images

    source = load_image_dataset(str(root / "data")).source("train")
    chosen = select_real_images(observer, source.indexed_images(), source.labels(), num_classes=4, ipc=2,
                                how="kmeans", seed=3)
    return chosen.flatten().sort().values


def test_recover_selects_on_joint_features_and_reproduces(selection_assets, tmp_path):
    from hf_scdd.models.loading import load_backbone

    root = selection_assets
    joint = dict(selection_model=str(root / "teacher"), selection_features="joint", iterations=0)
    picked = picked_indices(run(root, tmp_path / "joint", **joint))
    assert torch.equal(picked, picked_indices(run(root, tmp_path / "again", **joint)))
    models = [load_backbone(str(root / "backbone")), load_backbone(str(root / "teacher"))]
    joint_medoids = library_medoids(root, ObserverEnsemble(models))
    assert torch.equal(picked.flatten().sort().values, joint_medoids)
    for alone in models:  # both views count: neither model alone chooses these images
        assert not torch.equal(joint_medoids, library_medoids(root, alone))


def test_joint_features_without_a_selection_model_are_refused(assets, tmp_path):
    with pytest.raises(ConfigError, match="--selection_features joint needs --selection_model"):
        run(assets, tmp_path / "refused", selection_features="joint", iterations=0)


# --------------------------------------------------------------------------------------------------------
# Soft-label shapes (``recover --selection_features logits``)
# --------------------------------------------------------------------------------------------------------


def test_logit_view_features_are_centred_logits_whose_cosine_ignores_shifts():
    model = second_observer().eval()
    view = LogitView(model)
    assert (view.num_classes, view.mean, view.std) == (model.num_classes, model.mean, model.std)
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        logits, features = model_logits(model(x)), view.forward_features(x)
    torch.testing.assert_close(features.sum(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(features, logits - logits.mean(dim=1, keepdim=True))
    # two soft labels of the same shape (logits that differ by a constant) are one point to the selection
    shifted = torch.nn.functional.cosine_similarity(features, (logits + 3.0) - (logits + 3.0).mean(1, keepdim=True))
    torch.testing.assert_close(shifted, torch.ones(6))


def test_recover_selects_on_the_selection_models_logits(selection_assets, tmp_path):
    from hf_scdd.models.loading import load_backbone

    root = selection_assets
    out = run(root, tmp_path / "logits", selection_model=str(root / "teacher"), selection_features="logits",
              iterations=0)
    picked, teacher = picked_indices(out).flatten().sort().values, load_backbone(str(root / "teacher"))
    assert torch.equal(picked, library_medoids(root, LogitView(teacher)))
    assert not torch.equal(picked, library_medoids(root, teacher))  # logits, not the teacher's pooled features
