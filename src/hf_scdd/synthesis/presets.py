"""Recovery hyper-parameter presets per kind of dataset, and filling a config's unset values from one.

The presets follow SC-DD's per-dataset settings (CIFAR, Tiny-ImageNet, ImageNet); "small" is this library's
choice for 28×28 grey data such as the built-in Fashion-MNIST. The resolved values are recorded in the stage's
config.json, so a rerun compares values, not preset names.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")

# Per-dataset defaults (SC-DD's settings). "small" is this library's choice for the built-in 28×28 grey
# Fashion-MNIST: the CIFAR recipe (roll jitter 4, no crop) with a shorter budget (the images have 4× fewer
# pixels than CIFAR's 3×32×32) and a 20× stronger BN weight: with r_bn 0.01 the BN term stalled at ~40 while CE
# reached ~0 and the images saturated; r_bn 0.1 brought it to ~6 at the same CE (IPC-2 sweep over lr 0.05-0.25 and
# r_bn 0.01-1.0 on the MoCo v2 ResNet-10 of the built-in pipeline, 2026-11-25).
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(iterations=500, lr=0.25, r_bn=0.1, jitter=4, random_crop=False, classes_per_batch=0),
    "cifar": dict(iterations=1000, lr=0.4, r_bn=0.005, jitter=4, random_crop=False, classes_per_batch=0),
    "tiny": dict(iterations=1000, lr=0.6, r_bn=0.05, jitter=4, random_crop=True, classes_per_batch=0),
    "imagenet": dict(iterations=1000, lr=0.25, r_bn=0.01, jitter=32, random_crop=True, classes_per_batch=50),
}


# Recovery methods: what recovery starts from and matches, on top of the dataset preset's hyper-parameters.
# "scdd" is SC-DD exactly (noise, the model's running statistics). "hf_scdd" is this library's method, chosen by
# student accuracy against a random real subset (benchmarks/recover_sweep.py, benchmarks/fidelity.py, RESULTS.md):
# real images chosen per class by k-means on the SSL recovery model's features (the medoids). On CIFAR-size data
# they are then refined (LIGHT_REFINEMENT: 100 Adam steps at lr 0.03 towards BN statistics of clean training
# images, still 13x below SC-DD's lr and 10x fewer steps): the CIFAR-10 sweep's best of 10 refinements (IPC 10,
# one seed: 35.2 / 47.4 hard / KD against the medoids' 30.1 / 43.1; lr 0.003 gave 32.2 / 44.5, lr 0.05 x 200
# steps 36.6 / 43.8), confirmed with 3 seeds at IPC 10 and 50 (the fidelity table's hf_scdd_cifar row). On the
# 28x28 grey preset ("small", Fashion-MNIST) even 100 steps at lr 0.003 cost 1.0 point with hard labels at IPC 50
# (3 seeds) and lr 0.01 cost 2 points at IPC 10 (one seed), so the medoids stay as they are there. Matching the
# SSL model's running statistics, class-conditional terms and a crop curriculum trained worse students than no
# refinement on Fashion-MNIST. Explicit fields win: --iterations 0 keeps the medoids anywhere.
METHODS: dict[str, dict[str, Any]] = {
    "scdd": dict(init="noise", selection="random", bn_targets="running", class_bn_weight=0.0, crop_curriculum=False),
    "hf_scdd": dict(init="real", selection="kmeans", bn_targets="running", class_bn_weight=0.0, crop_curriculum=False,
                    iterations=0),
}
LIGHT_REFINEMENT: dict[str, Any] = dict(iterations=100, lr=0.03, r_bn=0.01, bn_targets="clean")
METHOD_BY_PRESET: dict[tuple[str, str], dict[str, Any]] = {
    ("hf_scdd", preset): LIGHT_REFINEMENT for preset in ("cifar", "tiny", "imagenet")
}
"""Per-preset additions to a method (applied after it): hf_scdd refines its medoids except on "small" data."""


def choose_preset(config: Any, dataset_name: str, image_size: int) -> str:
    """The preset named by ``config.preset``, or for ``auto`` the one matching the dataset."""
    if config.preset != "auto":
        if config.preset not in PRESETS:
            raise ConfigError(f"unknown preset {config.preset!r}; choose auto or one of {sorted(PRESETS)}")
        return config.preset
    name = dataset_name.lower()
    for key, preset in (("mnist", "small"), ("cifar", "cifar"), ("tiny", "tiny"), ("imagenet", "imagenet")):
        if key in name:
            return preset
    return "small" if image_size <= 28 else "cifar" if image_size <= 32 else "tiny" if image_size <= 64 else "imagenet"


def resolve_presets(config: T, dataset_name: str, image_size: int) -> T:
    """Fill unset hyper-parameters from the method, then from the dataset preset (an explicit value wins over
    both); recorded in config.json, so reruns compare values, not preset names."""
    if config.method not in METHODS:
        raise ConfigError(f"unknown --method {config.method!r}; choose one of {sorted(METHODS)}")
    preset = choose_preset(config, dataset_name, image_size)
    defaults = {**PRESETS[preset], **METHODS[config.method], **METHOD_BY_PRESET.get((config.method, preset), {})}
    values = {k: v for k, v in defaults.items() if getattr(config, k) is None}
    return replace(config, preset=preset, image_size=image_size, **values)
