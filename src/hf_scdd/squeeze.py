"""Squeeze: pre-train the recovery backbone (MoCo v2 or supervised) and fit its frozen-BN linear probe.

``hf-scdd squeeze --method mocov2`` is MoCo v2 as in the official CIFAR demo that SC-DD's CIFAR recipe matches
(method.md §1.1): query encoder = backbone + 2-layer MLP head, momentum key encoder, a queue of negative keys,
InfoNCE at temperature ``T``, SGD with cosine decay. ``--method supervised`` trains the same backbone with
cross-entropy (the SRe²L control). Both differ only in what is built and in the ``step_fn`` handed to the
shared loop :func:`hf_scdd.core.loops.train` (checkpoint/resume, trackers, progress bar).

Batch-norm and MoCo (why keys are shuffled): a query and its positive key computed with the *same* batch
statistics let the network "cheat" by recognising its sub-batch instead of learning content. What runs:

* **within a process, always** — SplitBatchNorm: both encoders normalise ``bn_splits / num_processes``
  interleaved groups of the local batch separately (``SplitBatchNorm2d``; the MoCo CIFAR demo), and the key
  batch is permuted before the key encoder and un-permuted after, so a key never shares its BN group with
  its query;
* **across processes, when there are several** — shuffle-BN (MoCo's ``batch_shuffle_ddp``): the key views
  of all processes are gathered, permuted with a permutation broadcast from process 0, each process encodes
  its slice (again in split groups), and the keys are gathered back and un-permuted.

With the default ``bn_splits=8`` the BN group size is ``batch_size / 8`` whatever the number of processes.
The saved backbone is a plain :class:`~hf_scdd.models.ResNet` (SplitBatchNorm has BatchNorm2d's state).

``hf-scdd probe`` trains only a linear classifier on features of the frozen backbone **kept in eval mode**
(BN running statistics stay those of pre-training, method.md §1.2). For CPU speed it trains on features of
the un-augmented training images, extracted once under ``torch.no_grad`` (MoCo's probe uses crop+flip views;
with eval-mode BN the backbone is unaffected either way), standardised per feature, and the standardisation
is folded into the final ``fc`` so the saved model is a plain backbone + linear layer.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .configs import ConfigError, StageConfig, atomic_write_text, check_or_write_config
from .core.augment import ssl_view_augmentation, supervised_view_augmentation, to_unit_float, two_views
from .core.loops import (
    cosine_schedule,
    evaluate_top1,
    finish_trackers,
    index_loader,
    make_accelerator,
    Precision,
    autocast_of,
    remove_checkpoints,
    train,
)
from .data import ImageData, load_image_dataset, normalize
from .models import ResNet, load_backbone

logger = logging.getLogger(__name__)

METHODS = ("mocov2", "supervised")
BACKBONE_DIR = "backbone"
"""Sub-folder of a squeeze ``output_dir`` holding the Hub-ready backbone."""
MODEL_DIR = "model"
"""Sub-folder of a probe ``output_dir`` holding the Hub-ready backbone + linear probe."""


class SqueezeError(ValueError):
    """A squeeze/probe setting cannot work; the message names the fix."""


# ========================================================================================================
# Configs
# ========================================================================================================


@dataclass
class SqueezeConfig(StageConfig):
    """``hf-scdd squeeze``: MoCo v2 (default) or supervised pre-training of a BN ResNet.

    Defaults: the MoCo CIFAR recipe (K=4096, m=0.99, T=0.1, MLP head, 128-d, 8 BN splits, SGD lr 0.06
    momentum 0.9, wd 5e-4, cosine, no warm-up) at batch 256, scaled down for 2 CPU cores: ResNet-10 of width
    16 (CIFAR stem) for 2 epochs over a seeded 15k-image subset of the training split (116 steps). For a
    full-size run use e.g. ``--arch resnet18 --width 64 --epochs 200 --max_train_samples 0 --batch_size 512``.
    """

    output_dir: str = field(default="outputs/squeeze", metadata={"help": "Folder the stage writes to."})
    method: str = field(default="mocov2", metadata={"help": "'mocov2' (self-supervised) or 'supervised'."})
    arch: str = field(default="resnet10", metadata={"help": "Backbone architecture (resnet10/18/34/50/101)."})
    width: int = field(default=16, metadata={"help": "First-stage width (64 = torchvision)."})
    stem: str = field(default="cifar", metadata={"help": "'cifar' (3x3, no max-pool) or 'imagenet'."})
    epochs: int = field(default=2, metadata={"help": "Pre-training epochs over the (sub)set."})
    batch_size: int = field(default=256, metadata={"help": "GLOBAL batch size (split over processes)."})
    lr: float | None = field(
        default=None, metadata={"help": "Peak learning rate; default 0.06 (mocov2) or 0.1 (supervised)."}
    )
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear warm-up steps before the cosine decay."})
    moco_dim: int = field(default=128, metadata={"help": "MoCo projection dimension."})
    moco_k: int = field(default=4096, metadata={"help": "Queue size K (a multiple of batch_size)."})
    moco_m: float = field(default=0.99, metadata={"help": "Key-encoder momentum m."})
    moco_t: float = field(default=0.1, metadata={"help": "InfoNCE temperature T."})
    bn_splits: int = field(
        default=8, metadata={"help": "BN groups per global batch (SplitBatchNorm / shuffle-BN); 1 disables."}
    )
    crop_min_scale: float = field(default=0.2, metadata={"help": "Lower bound of RandomResizedCrop's scale."})
    max_train_samples: int = field(
        default=15000, metadata={"help": "Train on a seeded random subset of this many images (0 = all)."}
    )
    checkpoint_steps: int = field(
        default=0, metadata={"help": "Also checkpoint every N steps (every epoch is always checkpointed)."}
    )

    def resolved_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 0.06 if self.method == "mocov2" else 0.1


@dataclass
class ProbeConfig(StageConfig):
    """``hf-scdd probe``: a linear classifier on a frozen, eval-mode backbone (BN statistics untouched)."""

    output_dir: str = field(default="outputs/probe", metadata={"help": "Folder the stage writes to."})
    backbone: str | None = field(
        default=None, metadata={"help": "Backbone folder (or a squeeze output_dir) or Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of --backbone."})
    epochs: int = field(default=20, metadata={"help": "Probe epochs over the cached features."})
    batch_size: int = field(default=256, metadata={"help": "Probe batch size (global)."})
    lr: float = field(default=0.5, metadata={"help": "Peak SGD learning rate (standardised features)."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay (MoCo's probe uses 0)."})
    standardize: bool = field(
        default=True,
        metadata={"help": "Train on per-feature standardised features; folded into fc afterwards."},
    )
    max_train_samples: int = field(
        default=10000, metadata={"help": "Seeded subset of training images for the probe (0 = all)."}
    )
    feature_batch_size: int = field(default=1024, metadata={"help": "Batch size of feature extraction."})


# ========================================================================================================
# Batch norm for MoCo: SplitBatchNorm within a process, shuffle-BN across processes
# ========================================================================================================


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d normalising ``num_splits`` interleaved groups of the batch separately in training mode.

    Sample ``n`` belongs to group ``n % num_splits`` (the MoCo CIFAR demo's layout). Running statistics are
    updated with each group's statistics and averaged over groups; in eval mode it is a plain BatchNorm2d.
    State-dict keys equal BatchNorm2d's, so the weights load into a plain :class:`ResNet`.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise SqueezeError(f"batch of {n} does not split into {s} BN groups; make it a multiple of {s}")
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        momentum = 0.1 if self.momentum is None else self.momentum
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w), mean_split, var_split,
            self.weight.repeat(s), self.bias.repeat(s), True, momentum, self.eps,
        ).view(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
            self.running_var.copy_(var_split.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def use_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace (in place) every BatchNorm2d in ``module`` by a :class:`SplitBatchNorm2d` with its state."""
    for name, child in module.named_children():
        if isinstance(child, SplitBatchNorm2d):
            child.num_splits = num_splits
        elif isinstance(child, nn.BatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split.to(child.weight.device))
        else:
            use_split_batchnorm(child, num_splits)
    return module


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


@torch.no_grad()
def shuffled_keys(
    accelerator,
    encoder: nn.Module,
    views: torch.Tensor,
    generator: torch.Generator | None = None,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Key embeddings of this process's ``views`` computed in shuffled BN groups (see the module docstring).

    One process: permute the batch, encode (SplitBatchNorm groups the permuted batch), un-permute.
    Several: gather all processes' views, permute them with process 0's permutation, encode this
    process's slice, gather the keys, un-permute, return this process's rows.
    """
    world, rank, b = accelerator.num_processes, accelerator.process_index, len(views)
    all_views = accelerator.gather(views.contiguous()) if world > 1 else views
    perm = torch.randperm(len(all_views), generator=generator).to(views.device)
    if world > 1:
        from accelerate.utils import broadcast

        perm = broadcast(perm, from_process=0)
    mine = perm[rank * b : (rank + 1) * b]
    with autocast_of(precision):
        keys = encoder(all_views[mine]).float()
    all_keys = accelerator.gather(keys.contiguous()) if world > 1 else keys
    return all_keys[inverse_permutation(perm)][rank * b : (rank + 1) * b]


# ========================================================================================================
# MoCo v2
# ========================================================================================================


class ProjectionEncoder(nn.Module):
    """Backbone features -> 2-layer MLP -> L2-normalised embedding (the head is not saved)."""

    def __init__(self, backbone: ResNet, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or backbone.num_features
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone.forward_features(x)), dim=1)


class MoCoKeyState(nn.Module):
    """The momentum key encoder and the queue of negative keys: everything MoCo keeps outside the optimiser.

    An ``nn.Module`` so that ``state_dict``/``load_state_dict`` checkpoint it through ``train(extra_state=)``.
    """

    def __init__(self, query_encoder: ProjectionEncoder, dim: int, queue_size: int):
        super().__init__()
        self.encoder = copy.deepcopy(query_encoder)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self, query_encoder: nn.Module, m: float) -> None:
        for pk, pq in zip(self.encoder.parameters(), query_encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest ``len(keys)`` entries (``keys``: the global batch, same on every rank)."""
        k, ptr = self.queue.shape[1], int(self.queue_ptr)
        if k % len(keys):
            raise SqueezeError(f"moco_k={k} must be a multiple of the global batch size {len(keys)}")
        self.queue[:, ptr : ptr + len(keys)] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % k)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE: the positive logit first, then the queue's negatives; returns (loss, contrastive top-1)."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.clone().detach()
    logits = torch.cat([l_pos, l_neg], dim=1).float() / temperature
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), (logits.argmax(dim=1) == 0).float().mean()


# ========================================================================================================
# The stage: what each method builds, then one shared driver
# ========================================================================================================


@dataclass
class TrainingPlan:
    """What a method contributes to the shared driver: the trained module, extra state, and the step."""

    model: nn.Module
    extra_state: list
    make_step_fn: Callable[[Any, nn.Module, Precision], Callable]
    backbone_of: Callable[[nn.Module], ResNet]


def new_backbone(config: SqueezeConfig, data: ImageData, num_classes: int) -> ResNet:
    """The backbone ``config`` describes, with the dataset's channels, size, normalisation and class names."""
    return ResNet(
        config.arch, num_classes=num_classes, stem=config.stem, in_channels=data.channels, width=config.width,
        image_size=data.image_size, mean=list(data.mean), std=list(data.std),
        class_names=data.class_names if num_classes else None,
    )


def splits_per_process(config: SqueezeConfig, num_processes: int) -> int:
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


def plan_mocov2(config: SqueezeConfig, data: ImageData, images: torch.Tensor, accelerator) -> TrainingPlan:
    splits = splits_per_process(config, accelerator.num_processes)
    query = ProjectionEncoder(use_split_batchnorm(new_backbone(config, data, 0), splits), config.moco_dim)
    key_state = MoCoKeyState(query, config.moco_dim, config.moco_k).to(accelerator.device)
    augment = ssl_view_augmentation(data.channels, data.image_size, crop_scale=(config.crop_min_scale, 1.0))

    def make_step_fn(acc, prepared: nn.Module, precision: Precision) -> Callable:
        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            x = images[idx]
            view_q, view_k = (data.normalize(v) for v in two_views(augment, x))
            with precision.autocast():
                q = prepared(view_q).float()
            key_state.encoder.train()
            key_state.momentum_update(acc.unwrap_model(prepared), config.moco_m)
            k = shuffled_keys(acc, key_state.encoder, view_k, precision=precision)
            loss, top1 = info_nce(q, k, key_state.queue, config.moco_t)
            key_state.enqueue(acc.gather(k) if acc.num_processes > 1 else k)
            return {"loss": loss, "contrastive_top1": top1}

        return step

    return TrainingPlan(query, [key_state], make_step_fn, lambda unwrapped: unwrapped.backbone)


def plan_supervised(
    config: SqueezeConfig, data: ImageData, images: torch.Tensor, labels: torch.Tensor, accelerator
) -> TrainingPlan:
    model = new_backbone(config, data, data.num_classes)
    augment = supervised_view_augmentation(data.image_size)

    def make_step_fn(acc, prepared: nn.Module, precision: Precision) -> Callable:
        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            x = data.normalize(augment(to_unit_float(images[idx])))
            with precision.autocast():
                logits = prepared(x).float()
            y = labels[idx]
            return {"loss": F.cross_entropy(logits, y), "train_top1": (logits.argmax(1) == y).float().mean()}

        return step

    return TrainingPlan(model, [], make_step_fn, lambda unwrapped: unwrapped)


def training_subset(n: int, max_samples: int, seed: int) -> torch.Tensor:
    """All indices, or a seeded random subset of ``max_samples`` of them."""
    if not max_samples or max_samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def plain_resnet(model: ResNet) -> ResNet:
    """A fresh plain-BatchNorm ResNet with ``model``'s config and state (drops SplitBatchNorm)."""
    plain = ResNet(**model.config)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def save_model_atomically(model: ResNet, folder: str | os.PathLike) -> Path:
    """``save_pretrained`` into a temporary sibling, then rename: readers never see half a model."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_data(config: StageConfig) -> ImageData:
    return load_image_dataset(
        config.dataset, image_column=config.image_column, label_column=config.label_column
    )


def start_stage(config: StageConfig, run_name: str, final: Path):
    """The accelerator and precision of a training stage, its config checked against the output folder (the
    resolved precision recorded there), and whether the stage's final model already exists (then there is
    nothing to do)."""
    out = Path(config.output_dir)
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name=run_name, config=config.to_dict(),
    )
    precision = Precision.resolve(config.mixed_precision, accelerator.device)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator.wait_for_everyone()
    if (final / "model.safetensors").exists():
        accelerator.print(f"[{run_name}] {final} already exists for this config; nothing to do")
        finish_trackers(accelerator)
        return accelerator, precision, True
    return accelerator, precision, False


def main(config: SqueezeConfig) -> Path:
    """Pre-train a backbone; returns ``output_dir/backbone`` (Hub-ready). Rerun the same command to resume."""
    from accelerate.utils import set_seed

    if config.method not in METHODS:
        raise ConfigError(f"unknown --method {config.method!r}; choose one of {METHODS}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError("epochs and batch_size must be >= 1")
    out = Path(config.output_dir)
    final = out / BACKBONE_DIR
    accelerator, precision, finished = start_stage(config, f"squeeze_{config.method}", final)
    if finished:
        return final
    if config.batch_size % accelerator.num_processes:
        raise ConfigError(
            f"batch_size {config.batch_size} is not divisible by {accelerator.num_processes} processes"
        )

    data = load_data(config)
    all_images, all_labels = data.tensors("train")
    subset = training_subset(len(all_images), config.max_train_samples, config.seed)
    images, labels = all_images[subset].to(accelerator.device), all_labels[subset].to(accelerator.device)
    local_batch = config.batch_size // accelerator.num_processes
    if len(images) < config.batch_size:
        raise ConfigError(f"{len(images)} training images are fewer than one batch of {config.batch_size}")

    set_seed(config.seed)  # identical initialisation (and MoCo queue) on every process
    if config.method == "mocov2":
        plan = plan_mocov2(config, data, images, accelerator)
    else:
        plan = plan_supervised(config, data, images, labels, accelerator)
    optimizer = torch.optim.SGD(
        plan.model.parameters(), lr=config.resolved_lr(), momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    loader = index_loader(len(images), local_batch, seed=config.seed)
    model, optimizer, loader = accelerator.prepare(plan.model, optimizer, loader)
    # Unprepared on purpose: one scheduler step per optimiser step whatever the process count.
    scheduler = cosine_schedule(optimizer, config.epochs * len(loader), config.warmup_steps)
    set_seed(config.seed, device_specific=True)  # different views on each process
    progress = train(
        accelerator, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader,
        step_fn=plan.make_step_fn(accelerator, model, precision), epochs=config.epochs, output_dir=out,
        extra_state=plan.extra_state, checkpoint_steps=config.checkpoint_steps,
        desc=f"squeeze[{config.method}]", precision=precision,
    )
    if accelerator.is_main_process:
        backbone = plain_resnet(plan.backbone_of(accelerator.unwrap_model(model)))
        backbone.update_training_info(
            method=config.method, dataset=data.name, epochs=config.epochs, train_samples=len(images),
            final_loss=round(progress.history[-1]["loss"], 6) if progress.history else None,
            stage="squeeze", config=config.result_fields(),
        )
        save_model_atomically(backbone, final)
        if config.push_to_hub:
            backbone.push_to_hub(config.push_to_hub)
        accelerator.print(f"[squeeze] saved {final}")
    remove_checkpoints(accelerator, out)
    finish_trackers(accelerator)
    return final


# ========================================================================================================
# Linear probe
# ========================================================================================================


def resolve_backbone_path(name: str) -> str:
    """A model folder or repo id as is; a squeeze/probe ``output_dir`` -> its ``backbone``/``model``."""
    path = Path(name)
    for sub in (MODEL_DIR, BACKBONE_DIR):
        if (path / sub / "config.json").exists() and not (path / "model.safetensors").exists():
            return str(path / sub)
    return name


@torch.no_grad()
def extract_features(
    accelerator,
    backbone: ResNet,
    images: torch.Tensor,
    preprocess: Callable,
    batch_size: int = 1024,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Pooled features of every image (eval mode, no grad), computed shard-wise and gathered in order."""
    from torch.utils.data import DataLoader

    from .core.loops import IndexDataset

    backbone.eval()
    loader = accelerator.prepare_data_loader(
        DataLoader(IndexDataset(len(images)), batch_size=batch_size, shuffle=False), device_placement=False
    )
    feats = torch.zeros(len(images), backbone.num_features, device=accelerator.device)
    for idx in loader:
        with autocast_of(precision):
            f = backbone.forward_features(preprocess(images[idx].to(accelerator.device))).float()
        idx, f = accelerator.gather_for_metrics((idx.to(accelerator.device), f))
        feats[idx] = f
    return feats


def fold_standardization(
    head: nn.Linear, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``x -> head((x - mean) / std)`` as one linear layer on raw features."""
    weight = head.weight.detach() / std
    bias = head.bias.detach() - weight @ mean
    return weight, bias


def probe(config: ProbeConfig) -> Path:
    """Fit a linear probe on a frozen eval-mode backbone; returns ``output_dir/model`` (backbone + probe)."""
    from accelerate.utils import set_seed

    if not config.backbone:
        raise ConfigError("--backbone is required (a backbone folder, a squeeze output_dir or a Hub repo id)")
    out = Path(config.output_dir)
    final = out / MODEL_DIR
    accelerator, precision, finished = start_stage(config, "probe", final)
    if finished:
        return final

    backbone = load_backbone(resolve_backbone_path(config.backbone), revision=config.revision)
    backbone = backbone.to(accelerator.device)
    if not isinstance(backbone, ResNet):
        raise SqueezeError(
            f"probe needs an hf_scdd ResNet backbone; {config.backbone!r} is a {type(backbone).__name__}"
        )
    data = load_data(config)
    if backbone.in_channels != data.channels:
        raise SqueezeError(
            f"backbone expects {backbone.in_channels}-channel images, dataset {data.name!r} has {data.channels}"
        )
    for p in backbone.parameters():
        p.requires_grad_(False)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith("fc.")}

    def preprocess(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, backbone.mean, backbone.std)

    set_seed(config.seed)
    images, labels = data.tensors("train")
    subset = training_subset(len(images), config.max_train_samples, config.seed)
    feats = extract_features(
        accelerator, backbone, images[subset], preprocess, config.feature_batch_size, precision=precision
    )
    y = labels[subset].to(accelerator.device)
    mean, std = torch.zeros_like(feats[0]), torch.ones_like(feats[0])
    if config.standardize:
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    feats = (feats - mean) / std

    head = nn.Linear(backbone.num_features, data.num_classes)
    nn.init.normal_(head.weight, 0.0, 0.01)  # MoCo's probe initialisation
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    local_batch = max(1, config.batch_size // accelerator.num_processes)
    loader = index_loader(len(feats), local_batch, seed=config.seed, drop_last=False)
    prepared, optimizer, loader = accelerator.prepare(head, optimizer, loader)
    scheduler = cosine_schedule(optimizer, config.epochs * len(loader))

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(feats.device)
        with precision.autocast():
            logits = prepared(feats[idx]).float()
        top1 = (logits.argmax(1) == y[idx]).float().mean()
        return {"loss": F.cross_entropy(logits, y[idx]), "train_top1": top1}

    train(
        accelerator, model=prepared, optimizer=optimizer, scheduler=scheduler, loader=loader, step_fn=step,
        epochs=config.epochs, output_dir=out, desc="probe", precision=precision,
    )
    weight, bias = fold_standardization(accelerator.unwrap_model(prepared), mean, std)
    backbone.reset_classifier(data.num_classes, data.class_names)
    backbone.fc.weight.data.copy_(weight)
    backbone.fc.bias.data.copy_(bias)
    backbone.to(accelerator.device).eval()
    unchanged = all(torch.equal(v, backbone.state_dict()[k]) for k, v in frozen.items())
    if not unchanged:  # a guard, not an expected path: the probe must never alter the pre-trained model
        raise SqueezeError("the backbone changed during probing; this is a bug in hf_scdd")
    test_images, test_labels = data.tensors("test")
    top1 = evaluate_top1(accelerator, backbone, test_images, test_labels, preprocess, precision=precision)
    if accelerator.is_main_process:
        info = {"probe_top1": round(top1, 6), "probe_epochs": config.epochs}
        backbone.update_training_info(
            **info, probe_dataset=data.name, probe_config=config.result_fields(),
            base_model=config.backbone if not Path(config.backbone).exists() else None,
        )
        backbone.update_training_info(dataset=backbone.training_info.get("dataset") or data.name)
        model = plain_resnet(backbone)
        save_model_atomically(model, final)
        results = json.dumps({**info, "backbone": config.backbone}, indent=2) + "\n"
        atomic_write_text(out / "probe_results.json", results)
        if config.push_to_hub:
            model.push_to_hub(config.push_to_hub)
        accelerator.print(f"[probe] linear-probe top-1 {100 * top1:.2f} % on {data.name} test; saved {final}")
    remove_checkpoints(accelerator, out)
    finish_trackers(accelerator)
    return final
