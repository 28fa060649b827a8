"""What squeeze trains: a plan per method (the module, its extra state, its step) for the shared loop.

``mocov2`` (SC-DD) pre-trains a backbone with MoCo v2 (query encoder, momentum key encoder and queue from
:mod:`hf_scdd.models.moco`, SSL views); ``supervised`` (the SRe²L control) trains the same backbone with
cross-entropy on pad-crop + flip views. Both differ only in what is built and in the ``step_fn`` handed to
:func:`hf_scdd.training.loop.train`, which receives batches of ``(uint8 images, labels)`` on the device from
:func:`hf_scdd.training.loaders.training_loader`; every forward runs under the stage's precision and its outputs are
cast to float32 before the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..augment.ssl import ssl_view_augmentation, supervised_view_augmentation, to_unit_float, two_views
from ..data.loading import ImageData
from ..errors import SqueezeError
from ..models.moco import MoCoKeyState, ProjectionEncoder, info_nce, shuffled_keys, use_split_batchnorm
from ..models.resnet import ResNet
from .accelerator import Precision, compiled_forward


class PretrainSettings(Protocol):
    """The squeeze config fields a plan reads (``SqueezeConfig`` has them all)."""

    arch: str
    width: int
    stem: str
    batch_size: int
    bn_splits: int
    moco_dim: int
    moco_k: int
    moco_m: float
    moco_t: float
    crop_min_scale: float
    compile: bool


@dataclass
class TrainingPlan:
    """What a method contributes to the shared driver: the trained module, extra state, and the step."""

    model: nn.Module
    extra_state: list
    make_step_fn: Callable[[Any, nn.Module, Precision], Callable]
    backbone_of: Callable[[nn.Module], ResNet]


def new_backbone(config: PretrainSettings, data: ImageData, num_classes: int) -> ResNet:
    """The backbone ``config`` describes, with the dataset's channels, size, normalisation and class names."""
    return ResNet(
        config.arch, num_classes=num_classes, stem=config.stem, in_channels=data.channels, width=config.width,
        image_size=data.image_size, mean=list(data.mean), std=list(data.std),
        class_names=data.class_names if num_classes else None,
    )


def splits_per_process(config: PretrainSettings, num_processes: int) -> int:
    """SplitBatchNorm groups per process, so that the BN group size is ``batch_size / bn_splits`` on any process count."""
    local_batch = config.batch_size // num_processes
    splits = max(1, config.bn_splits // num_processes)
    if config.bn_splits % num_processes and config.bn_splits > 1:
        raise SqueezeError(f"bn_splits={config.bn_splits} is not a multiple of {num_processes} processes")
    if local_batch % splits:
        raise SqueezeError(
            f"per-process batch {local_batch} does not divide into {splits} BN splits; "
            "change batch_size or bn_splits"
        )
    return splits


def plan_mocov2(config: PretrainSettings, data: ImageData, accelerator) -> TrainingPlan:
    """MoCo v2: split-BN query encoder, momentum key state (checkpointed), SSL views, InfoNCE against the queue."""
    splits = splits_per_process(config, accelerator.num_processes)
    query = ProjectionEncoder(use_split_batchnorm(new_backbone(config, data, 0), splits), config.moco_dim)
    key_state = MoCoKeyState(query, config.moco_dim, config.moco_k).to(accelerator.device)
    augment = ssl_view_augmentation(data.channels, data.image_size, crop_scale=(config.crop_min_scale, 1.0))

    def make_step_fn(acc, prepared: nn.Module, precision: Precision) -> Callable:
        forward = compiled_forward(prepared, config.compile)  # the query encoder; the key encoder stays eager

        def step(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
            x, _ = batch
            view_q, view_k = (data.normalize(v) for v in two_views(augment, x))
            with precision.autocast():
                q = forward(view_q).float()
            key_state.encoder.train()
            key_state.momentum_update(acc.unwrap_model(prepared), config.moco_m)
            k = shuffled_keys(acc, key_state.encoder, view_k, precision=precision)
            loss, top1 = info_nce(q, k, key_state.queue, config.moco_t)
            key_state.enqueue(acc.gather(k) if acc.num_processes > 1 else k)
            return {"loss": loss, "contrastive_top1": top1}

        return step

    return TrainingPlan(query, [key_state], make_step_fn, lambda unwrapped: unwrapped.backbone)


def plan_supervised(config: PretrainSettings, data: ImageData, accelerator) -> TrainingPlan:
    """The SRe²L control: the same backbone with a classifier, pad-crop + flip views, cross-entropy."""
    model = new_backbone(config, data, data.num_classes)
    augment = supervised_view_augmentation(data.image_size)

    def make_step_fn(acc, prepared: nn.Module, precision: Precision) -> Callable:
        forward = compiled_forward(prepared, config.compile)

        def step(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
            images, y = batch
            x = data.normalize(augment(to_unit_float(images)))
            with precision.autocast():
                logits = forward(x).float()
            return {"loss": F.cross_entropy(logits, y), "train_top1": (logits.argmax(1) == y).float().mean()}

        return step

    return TrainingPlan(model, [], make_step_fn, lambda unwrapped: unwrapped)

