"""Resolving a recovery run before anything is written: the backbone, the data, the filled-in config, the units.

``hf-scdd recover`` (:mod:`hf_scdd.stages.recover`) validates its flags, then :func:`prepare` loads the recovery
model and the dataset (for the class names, the real starting images and the clean BN targets), fills the
unset fields from the method and the dataset preset (:mod:`hf_scdd.synthesis.presets`), refuses combinations
that only show once resolved, plans the units and picks the group size. :func:`card_data` is what the dataset
card records about the finished run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.loading import ImageData
from ..errors import ConfigError
from ..formats.distilled_set import load_unit
from ..hub.cards import DistilledSetCardData, source_dataset_terms
from ..models.ensemble import LogitView, ObserverEnsemble
from ..models.loading import check_synthesis_input, load_backbone
from ..training.stage import load_stage_data
from ..utils import resolve_hub_revision, use_cpu
from .engine import auto_group_size, check_recovery_model
from .presets import resolve_presets
from .units import Unit, plan_units

logger = logging.getLogger(__name__)


def check_resolved(config: Any) -> None:
    """Refuse combinations that only show once the method and preset have filled the unset fields."""
    if config.iterations == 0 and config.init != "real":
        raise ConfigError("--iterations 0 keeps the starting images as they are: it needs --init real")
    if config.class_bn_weight and config.bn_targets != "clean":
        raise ConfigError("--class_bn_weight needs class statistics: pass --bn_targets clean")
    if config.patches_per_side > 1 and config.init != "real":
        raise ConfigError("--patches_per_side tiles real images: it needs --init real")
    if config.observers and config.iterations == 0:
        raise ConfigError("--observers only shape optimised images, and --iterations is 0: pass --iterations N "
                          "(or drop --observers)")
    if config.selection_features == "joint" and config.selection_model is None:
        raise ConfigError("--selection_features joint needs --selection_model (the model whose features join the "
                          "recovery model's)")
    if config.patches_per_side > config.image_size:
        raise ConfigError(f"--patches_per_side {config.patches_per_side} exceeds the image side {config.image_size}: "
                          "use a smaller one")


def recovery_precision(config: Any) -> str:
    """The precision a resolved recovery asks for: ``auto`` means float32 whenever images are optimised.

    The quality guard (benchmarks/precision_guard.py) asks that bf16 and fp32 recoveries train students within
    1 point of each other. SC-DD's 500 steps from noise amplify every rounding difference into a different set,
    so the guard compares the precisions over three sets each (one per recovery seed): on Fashion-MNIST it
    holds (hard +0.26 ± 2.55, KD +0.66 ± 0.79), on CIFAR-10 KD it fails in bf16's favour (+1.76 ± 2.07), which
    the guard's two-sided bar does not accept. So image optimisation stays fp32 unless bf16 is asked for
    (1.74× faster on a CPU with avx512_bf16). Selection alone (``--iterations 0``: bf16 only in the observer's
    features) held on Fashion-MNIST (−0.31 hard, −0.03 KD), so there ``auto`` keeps the hardware's answer.
    """
    if config.mixed_precision == "auto" and config.iterations > 0:
        return "no"
    return config.mixed_precision


@dataclass
class RecoverContext:
    """What ``main`` resolves before writing anything: the backbone, the classes and the final config."""

    config: Any
    model: nn.Module
    """The recovery model (``--backbone``): the default selection observer."""
    objective: nn.Module
    """What the images are optimised against: the recovery model, or it and ``--observers`` as one
    :class:`~hf_scdd.models.ensemble.ObserverEnsemble`."""
    class_names: list[str]
    dataset_name: str
    channels: int
    mean: list[float]
    std: list[float]
    backbone_revision: str | None
    units: list[Unit]
    data: ImageData


def prepare(config: Any) -> RecoverContext:
    """Load the backbone and the class names, plan the units. Writes nothing."""
    revision = resolve_hub_revision(config.backbone, config.backbone_revision)
    model = load_backbone(config.backbone, revision=revision)
    channels = int(getattr(model, "in_channels", 3))
    image_size = int(config.image_size or getattr(model, "image_size", 0) or 0) or None
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    data = load_stage_data(config, channels=channels, image_size=image_size, mean=mean, std=std)
    check_recovery_model(model, config.backbone, data.num_classes)
    check_synthesis_input(model, config.backbone, data, requested_size=config.image_size)
    backbone_names = getattr(model, "class_names", None)
    if backbone_names and list(backbone_names) != data.class_names:
        logger.warning("backbone class names %s differ from the dataset's %s; using the dataset's",
                       list(backbone_names)[:5], data.class_names[:5])
    config = resolve_presets(config, data.name, image_size or data.image_size)
    check_resolved(config)
    units = plan_units(data.num_classes, config.ipc, config.classes_per_batch, config.seed)
    model.eval().requires_grad_(False)
    objective = observer_ensemble(model, config) if config.observers else model
    if config.group_size == 0:
        device_type = "cuda" if torch.cuda.is_available() and not use_cpu(config.cpu) else "cpu"
        group_size = auto_group_size(objective, units, channels, config.image_size, device_type, config.max_group_size)
        config = replace(config, group_size=group_size)
    return RecoverContext(
        config=config, model=model, objective=objective, class_names=data.class_names, dataset_name=data.name,
        channels=channels,
        mean=list(mean), std=list(std), backbone_revision=revision, units=units, data=data,
    )


def observer_ensemble(model: nn.Module, config: Any) -> nn.Module:
    """The recovery model and every ``--observers`` model as one :class:`ObserverEnsemble`, frozen in eval mode
    (each observer checked for the recovery model's classes and channels)."""
    extras = [load_backbone(name) for name in config.observers]
    ensemble = ObserverEnsemble([model, *extras], names=[config.backbone, *config.observers])
    return ensemble.eval().requires_grad_(False)


def selection_observer(config: Any, model: nn.Module) -> nn.Module:
    """The model whose features choose the real starting images: the recovery model, ``--selection_model``, or
    both side by side (``--selection_features joint``: clusters that are modes for both views of the images), or
    the chosen model's centred logits (``logits``: clusters of soft-label shapes)."""
    chosen = model if config.selection_model is None else load_backbone(config.selection_model)
    if config.selection_features == "joint":
        return ObserverEnsemble([model, chosen], names=[str(config.backbone), str(config.selection_model)])
    return LogitView(chosen) if config.selection_features == "logits" else chosen


def card_data(context: RecoverContext, num_shards: int) -> DistilledSetCardData:
    """What the dataset card records: contents, provenance, final loss terms, the source's licence."""
    from .. import __version__

    config = context.config
    license_, citation = source_dataset_terms(context.dataset_name)
    finals = [load_unit(config.output_dir, u)[1] for u in context.units]
    return DistilledSetCardData(
        **{k: getattr(config, k) for k in ("ipc", "image_format", "image_size", "backbone", "seed")},
        class_names=context.class_names, num_images=sum(len(u.classes) for u in context.units),
        channels=context.channels, source_dataset=context.dataset_name, backbone_revision=context.backbone_revision,
        recover_config=config.result_fields(), hf_scdd_version=__version__, num_shards=num_shards,
        final_ce=float(np.mean([float(m["ce"]) for m in finals])), final_bn=float(np.mean([float(m["bn"]) for m in finals])),
        license=license_, citation=citation,
    )
