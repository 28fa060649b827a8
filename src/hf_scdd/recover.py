"""Recover: SC-DD synthesis by BatchNorm-statistics matching (method.md §2), exported as a Hub dataset folder.

``hf-scdd recover --backbone FOLDER_OR_REPO --ipc 10 --output_dir out`` optimises, for every IPC index, batches
holding exactly one image per class (a chunk of ``classes_per_batch`` distinct classes) so that the frozen,
eval-mode recovery model classifies each as its class while the per-layer input statistics of the batch match
the BN running statistics:

    L = CE(f(aug(x)), y) + r_bn · Σ_l w_l (‖μ_l(x) − μ̂_l‖₂ + ‖σ²_l(x) − σ̂²_l‖₂),  w_first = 10, else 1.

Faithful to the reference: N(0, 1) init in normalised space, Adam (betas 0.5/0.9, eps 1e-8), cosine LR to zero
set before each step, per-channel clamp to the valid pixel range after each step, the last iterate kept,
circular-roll jitter (and batch-shared RandomResizedCrop + flip for ImageNet-style data).

Engineering beyond the reference, none of which changes a unit's result:

* **Units.** A unit is (ipc index, class chunk), seeded from ``(seed, ipc, chunk)`` only. Its init and all its
  augmentation draws come from its own generator, so images do not depend on process count, order or grouping.
* **Processes.** ``accelerate launch --num_processes N -m hf_scdd recover ...`` splits the units between ranks;
  rank r writes shards r, r+N, ...; the main process writes the card and grid after everyone is done.
* **Grouped recovery.** ``G`` units with the same batch size share one forward pass ([G*B, C, H, W]) with BN
  statistics per unit (:class:`~hf_scdd.core.bn_stats.BNStatsRecorder` groups) and a summed loss, so each
  unit's gradient is mathematically its own; Adam and the schedule are element-wise and the model is in eval
  mode, so each step equals one-by-one recovery up to float rounding (measured: ≤1e-8 on input gradients; on
  CPU only the classifier GEMM is not batch-invariant). SC-DD's optimisation amplifies rounding over hundreds
  of Adam steps, though, so *bit*-reproducibility needs a fixed grouping: the groups are a fixed partition of
  the unit list (consecutive blocks of ``group_size``), whole groups are assigned to processes, and the
  resolved ``group_size`` is recorded in config.json (``--group_size 0`` resolves it from the model's
  activation size and the device's *total* memory, so reruns on the same machine agree).
* **Resumable.** Each finished unit is written atomically to ``units/<name>.safetensors``; a rerun skips it. A
  changed config in the same folder is refused.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .configs import ConfigError, StageConfig, check_or_write_config
from .core.augment import apply_recovery_augmentation, boxes_to_corners, sample_recovery_plan
from .core.bn_stats import BNStatsRecorder, bn_layers
from .core.loops import Precision, autocast_of
from .hub import (
    DATA_DIR,
    IMAGE_FORMATS,
    DistilledSetCardData,
    push_distilled,
    remove_stale_shards,
    shard_name,
    write_dataset_card,
    write_grid,
    write_shard,
)
from .models.backbone import BackboneError

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.9)
ADAM_EPS = 1e-8
UNITS_DIR = "units"
ROWS_PER_SHARD = 10_000

# Per-dataset defaults (method.md §2.2). "small" is this library's choice for the built-in 28×28 grey
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


# --------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------


def _logits(output: Any) -> torch.Tensor:
    """Plain tensors pass through; transformers ``ModelOutput``s give their ``logits``."""
    return output.logits if hasattr(output, "logits") else output


def combine_objective(
    logits: torch.Tensor, labels: torch.Tensor, bn: torch.Tensor, groups: int, r_bn: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Σ_g (ce_g + r_bn·bn_g), ce [G], bn [G])`` with ce_g the mean CE over group g's batch, in fp32."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none").view(groups, -1).mean(dim=1)
    return (ce + r_bn * bn).sum(), ce, bn


def grouped_recovery_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    groups: int,
    r_bn: float,
    first_bn_multiplier: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The SC-DD loss of ``groups`` independent batches stacked in ``images`` [G*B, C, H, W].

    Returns ``(loss, ce [G], bn [G])`` where ``loss`` is the sum of the groups' losses, so the gradient with
    respect to each group's images equals the gradient of that group's loss computed on its own.
    """
    with BNStatsRecorder(model, groups=groups, first_bn_multiplier=first_bn_multiplier) as recorder:
        logits = _logits(model(images))
        return combine_objective(logits, labels, recorder.bn_loss(), groups, r_bn)


def recovery_loss(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, r_bn: float, first_bn_multiplier: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SC-DD's recovery loss (method.md §2.1) of one batch: ``(loss, ce, bn)`` scalars.

    ``loss = ce + r_bn * bn`` with ``ce`` the mean cross-entropy against the hard ``labels`` and ``bn`` the
    weighted sum over every BatchNorm2d of ‖μ − running_mean‖₂ + ‖σ² − running_var‖₂ (biased batch statistics
    of the layer's input over N, H, W, in float32; the first BN layer weighted by ``first_bn_multiplier``).
    ``model`` must be in eval mode (its BN layers normalise with the running statistics being matched).
    """
    loss, ce, bn = grouped_recovery_loss(
        model, images, labels, groups=1, r_bn=r_bn, first_bn_multiplier=first_bn_multiplier
    )
    return loss, ce[0], bn[0]


# --------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------


@dataclass
class RecoverConfig(StageConfig):
    """``hf-scdd recover``: synthesise a distilled set from a BN recovery model."""

    output_dir: str = field(default="outputs/recover", metadata={"help": "Folder of the distilled set."})
    backbone: str | None = field(
        default=None,
        metadata={"help": "Recovery model with a classifier head: local folder or Hub model id (required)."},
    )
    backbone_revision: str | None = field(default=None, metadata={"help": "Hub revision of --backbone."})
    ipc: int = field(default=10, metadata={"help": "Images per class (one optimisation pass per IPC index)."})
    classes_per_batch: int | None = field(
        default=None,
        metadata={"help": "Distinct classes per optimisation batch (one image each); 0 = all classes; "
                  "default from the preset (all; 50 for ImageNet)."},
    )
    preset: str = field(
        default="auto",
        metadata={"help": "Default hyper-parameters: auto (from dataset name and image size), small, cifar, "
                  "tiny or imagenet."},
    )
    iterations: int | None = field(default=None, metadata={"help": "Adam steps per batch (preset default)."})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate, cosine to 0 (preset default)."})
    r_bn: float | None = field(default=None, metadata={"help": "Weight of the BN-matching term (preset default)."})
    first_bn_multiplier: float = field(default=10.0, metadata={"help": "Weight of the first BN layer's term."})
    jitter: int | None = field(
        default=None, metadata={"help": "Circular-roll offsets drawn from {0..jitter} per axis (preset default)."}
    )
    random_crop: bool | None = field(
        default=None,
        metadata={"help": "Batch-shared RandomResizedCrop + flip before the roll (preset default: ImageNet-style "
                  "data only)."},
    )
    crop_scale_min: float = field(default=0.08, metadata={"help": "Lower scale bound of the random crop."})
    image_size: int | None = field(
        default=None, metadata={"help": "Side of the synthesised images (default: the backbone's image_size)."}
    )
    image_format: str = field(
        default="png",
        metadata={"help": "png (lossless, rounded) or jpeg (quality 75, truncated: the reference's format)."},
    )
    group_size: int = field(
        default=0,
        metadata={"help": "Units stacked in one forward pass (a fixed partition of the units, recorded in "
                  "config.json); 0 = automatic from the activation size and the device's total memory."},
    )
    max_group_size: int = field(default=16, metadata={"help": "Upper bound for the automatic group size."})
    log_every: int = field(default=50, metadata={"help": "Log CE/BN every N steps (a device sync each time)."})

    # Fields that do not change the images (beyond float rounding for the group size).
    # (group_size is NOT runtime-only: it changes float rounding, which SC-DD's optimisation amplifies.)
    # output_dir is runtime-only too: a moved (or copied) folder still resumes.
    RUNTIME_FIELDS = StageConfig.RUNTIME_FIELDS + ("output_dir", "max_group_size", "log_every")


def choose_preset(config: RecoverConfig, dataset_name: str, image_size: int) -> str:
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


def resolve_config(config: RecoverConfig, dataset_name: str, image_size: int) -> RecoverConfig:
    """Fill unset hyper-parameters from the preset (recorded in config.json, so reruns compare values)."""
    preset = choose_preset(config, dataset_name, image_size)
    values = {k: v for k, v in PRESETS[preset].items() if getattr(config, k) is None}
    return replace(config, preset=preset, image_size=image_size, **values)


def validate_config(config: RecoverConfig) -> None:
    """Refuse values that cannot work, before anything is written."""
    if not config.backbone:
        raise ConfigError("recover needs a recovery model: pass --backbone FOLDER_OR_HUB_ID")
    checks = [
        (config.ipc >= 1, f"--ipc must be >= 1 (got {config.ipc}): it is the number of images per class"),
        (config.seed >= 0, f"--seed must be >= 0 (got {config.seed})"),
        (config.classes_per_batch is None or config.classes_per_batch >= 0,
         f"--classes_per_batch must be >= 0 (0 = all classes), got {config.classes_per_batch}"),
        (config.iterations is None or config.iterations >= 1, f"--iterations must be >= 1, got {config.iterations}"),
        (config.lr is None or config.lr > 0, f"--lr must be > 0, got {config.lr}"),
        (config.r_bn is None or config.r_bn >= 0, f"--r_bn must be >= 0, got {config.r_bn}"),
        (config.jitter is None or config.jitter >= 0, f"--jitter must be >= 0, got {config.jitter}"),
        (0 < config.crop_scale_min <= 1, f"--crop_scale_min must be in (0, 1], got {config.crop_scale_min}"),
        (config.image_format in IMAGE_FORMATS, f"--image_format must be png or jpeg, got {config.image_format!r}"),
        (config.group_size >= 0, f"--group_size must be >= 0 (0 = automatic), got {config.group_size}"),
        (config.max_group_size >= 1, f"--max_group_size must be >= 1, got {config.max_group_size}"),
        (config.log_every >= 1, f"--log_every must be >= 1, got {config.log_every}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# --------------------------------------------------------------------------------------------------------
# Units of work
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One optimisation batch: IPC index ``ipc``, class chunk ``chunk`` (one image per class in ``classes``)."""

    ipc: int
    chunk: int
    classes: tuple[int, ...]
    seed: int

    @property
    def name(self) -> str:
        return f"ipc{self.ipc:05d}-chunk{self.chunk:05d}"


def unit_seed(seed: int, ipc: int, chunk: int) -> int:
    """A well-mixed 63-bit seed that depends on ``(seed, ipc, chunk)`` only."""
    state = np.random.SeedSequence([seed, ipc, chunk]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def plan_units(num_classes: int, ipc: int, classes_per_batch: int, seed: int) -> list[Unit]:
    """All units in output order: IPC index major, then class chunks ``[0:k], [k:2k], ...`` (the last may be smaller)."""
    per_batch = classes_per_batch or num_classes
    if per_batch > num_classes:
        raise ConfigError(
            f"--classes_per_batch {per_batch} exceeds the {num_classes} classes of the dataset: a batch holds "
            "one image of each of distinct classes. Use at most the class count (0 = all classes)."
        )
    chunks = [tuple(range(start, min(start + per_batch, num_classes))) for start in range(0, num_classes, per_batch)]
    return [Unit(i, c, classes, unit_seed(seed, i, c)) for i in range(ipc) for c, classes in enumerate(chunks)]


def unit_path(output_dir: str | os.PathLike, unit: Unit) -> Path:
    return Path(output_dir) / UNITS_DIR / f"{unit.name}.safetensors"


def save_unit(output_dir: str | os.PathLike, unit: Unit, images: torch.Tensor, ce: float, bn: float) -> Path:
    """Write a finished unit atomically: uint8 images [B, C, H, W], labels, and its seed/loss as metadata."""
    from safetensors.torch import save_file

    path = unit_path(output_dir, unit)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tensors = {"images": images.contiguous().cpu(), "labels": torch.tensor(unit.classes, dtype=torch.int64)}
    metadata = {"ipc": str(unit.ipc), "chunk": str(unit.chunk), "seed": str(unit.seed), "ce": repr(ce), "bn": repr(bn)}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_unit(output_dir: str | os.PathLike, unit: Unit) -> tuple[torch.Tensor, dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(unit_path(output_dir, unit)), "pt") as f:
        return f.get_tensor("images"), f.metadata()


# --------------------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------------------


@dataclass
class SynthesisSpec:
    """Everything a group's optimisation needs besides its units."""

    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float
    jitter: int
    random_crop: bool
    crop_scale_min: float
    channels: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    image_format: str = "png"

    @classmethod
    def from_config(cls, config: RecoverConfig, channels: int, mean, std) -> SynthesisSpec:
        return cls(
            iterations=config.iterations, lr=config.lr, r_bn=config.r_bn,
            first_bn_multiplier=config.first_bn_multiplier, jitter=config.jitter,
            random_crop=bool(config.random_crop), crop_scale_min=config.crop_scale_min, channels=channels,
            image_size=config.image_size, mean=list(mean), std=list(std), image_format=config.image_format,
        )


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def synthesize_group(
    model: nn.Module,
    units: Sequence[Unit],
    spec: SynthesisSpec,
    *,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    on_step: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise ``units`` (same batch size) together; returns (normalised images [G, B, C, H, W], ce [G], bn [G]).

    Each unit's init and augmentation come from ``torch.Generator().manual_seed(unit.seed)`` on the CPU, in a
    fixed order (init, roll offsets, crop boxes, flips), so a unit's result is the same whatever shares the
    forward pass. The model's forward runs under ``precision``'s autocast (BN statistics and the loss stay
    float32). ``on_step(step, ce, bn)`` is called after every step with device tensors.
    """
    batch = len(units[0].classes)
    if any(len(u.classes) != batch for u in units):
        raise ValueError("units stacked in one group must have the same number of classes")
    size, channels, steps = spec.image_size, spec.channels, spec.iterations
    inits, plans = [], []
    for unit in units:
        generator = torch.Generator().manual_seed(unit.seed)
        inits.append(torch.randn(batch, channels, size, size, generator=generator))
        plans.append(
            sample_recovery_plan(
                generator, steps, (size, size), jitter=spec.jitter, random_crop=spec.random_crop,
                crop_scale=(spec.crop_scale_min, 1.0),
            )
        )
    device = torch.device(device)
    x = torch.stack(inits).to(device).requires_grad_(True)
    labels = torch.tensor([c for u in units for c in u.classes], dtype=torch.long, device=device)
    shifts = [plan.shifts for plan in plans]
    corners = flips = None
    if spec.random_crop:
        corners = torch.stack([boxes_to_corners(plan.boxes) for plan in plans]).to(device)
        flips = torch.stack([plan.flips for plan in plans]).to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, 1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 1, -1, 1, 1)
    low, high = (0.0 - mean) / std, (1.0 - mean) / std
    optimizer = torch.optim.Adam([x], lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    ce = bn = torch.zeros(len(units), device=device)
    with BNStatsRecorder(model, groups=len(units), first_bn_multiplier=spec.first_bn_multiplier) as recorder:
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            augmented = apply_recovery_augmentation(x, step, shifts, corners, flips)
            with autocast_of(precision):
                logits = _logits(model(augmented))
            loss, ce, bn = combine_objective(logits, labels, recorder.bn_loss(), len(units), spec.r_bn)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(min=low, max=high)
            if on_step is not None:
                on_step(step, ce.detach(), bn.detach())
        recorder.clear()
    return x.detach(), ce.detach(), bn.detach()


def to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], image_format: str) -> torch.Tensor:
    """Normalised images [..., C, H, W] → uint8 pixels: rounded for PNG, truncated for JPEG (the reference)."""
    shape = (-1,) + (1,) * 2
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(shape)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(shape)
    pixels = (x.float() * s + m).clamp(0.0, 1.0) * 255.0
    return (pixels.round() if image_format == "png" else pixels.floor()).to(torch.uint8)


def auto_group_size(
    model: nn.Module, batch: int, channels: int, image_size: int, device_type: str, cap: int
) -> int:
    """How many units of ``batch`` images to stack, from the model's activation size and total device memory.

    The per-unit cost is the sum of every leaf module's output size for one unit (a no-grad dry run on the
    CPU), ×3 for the activations autograd keeps plus their gradients. It is compared with 40 % of the
    device's *total* memory (``torch.cuda.get_device_properties`` or ``MemTotal``), not the free memory, so the
    answer is the same on every rerun on the same machine. Capped at ``cap``.
    """
    sizes: list[int] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4) if torch.is_tensor(out) else None)
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(batch, channels, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    per_unit = max(1, 3 * sum(sizes))
    if device_type == "cuda":
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        total = _total_memory()
    return max(1, min(cap, int(0.4 * total // per_unit)))


def _total_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def make_groups(units: Sequence[Unit], group_size: int) -> list[list[Unit]]:
    """The fixed partition of ``units`` into groups: consecutive units with the same batch size,
    ``group_size`` at a time (a smaller last class chunk forms its own groups)."""
    groups: list[list[Unit]] = []
    by_size: dict[int, list[Unit]] = {}
    for unit in units:
        by_size.setdefault(len(unit.classes), []).append(unit)
    for same in by_size.values():
        groups += [list(same[i : i + group_size]) for i in range(0, len(same), group_size)]
    return groups


# --------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------


@dataclass
class RecoverContext:
    """What ``main`` resolves before writing anything: the backbone, the classes and the final config."""

    config: RecoverConfig
    model: nn.Module
    class_names: list[str]
    dataset_name: str
    channels: int
    mean: list[float]
    std: list[float]
    backbone_revision: str | None
    units: list[Unit]


def resolve_backbone_revision(name_or_path: str, revision: str | None) -> str | None:
    """The commit hash a Hub backbone id resolves to (None for local folders or when it cannot be resolved)."""
    if os.path.isdir(name_or_path):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(name_or_path, revision=revision).sha
    except Exception:  # noqa: BLE001 - load_backbone reports the real problem
        return revision


def check_backbone(model: nn.Module, name: str, num_classes: int) -> None:
    """Refuse models that cannot drive recovery: no BN, no classifier head, wrong class count, no normalisation."""
    bn_layers(model)  # raises BNStatsError for a model without BatchNorm2d
    heads = getattr(model, "num_classes", None)
    if not heads:
        raise BackboneError(
            f"backbone {name!r} has no classifier head (num_classes={heads}); recovery needs class logits. "
            "Fit a linear probe first: hf-scdd probe --backbone ... (or pass a classifier)."
        )
    if int(heads) != num_classes:
        raise BackboneError(
            f"backbone {name!r} predicts {heads} classes but the dataset has {num_classes}; use the probe "
            "trained on this dataset, or pass the matching --dataset."
        )
    for attribute in ("mean", "std"):
        if getattr(model, attribute, None) is None:
            raise BackboneError(f"backbone {name!r} has no '{attribute}' attribute: its input normalisation is unknown")


def prepare(config: RecoverConfig) -> RecoverContext:
    """Validate the config, load the backbone and the class names, plan the units. Writes nothing."""
    from .data import load_image_dataset
    from .models import load_backbone

    validate_config(config)
    revision = resolve_backbone_revision(config.backbone, config.backbone_revision)
    model = load_backbone(config.backbone, revision=revision)
    channels = int(getattr(model, "in_channels", 3))
    image_size = int(config.image_size or getattr(model, "image_size", 0) or 0) or None
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    data = load_image_dataset(
        config.dataset, image_column=config.image_column, label_column=config.label_column, channels=channels,
        image_size=image_size, mean=mean, std=std,
    )
    check_backbone(model, config.backbone, data.num_classes)
    backbone_names = getattr(model, "class_names", None)
    if backbone_names and list(backbone_names) != data.class_names:
        logger.warning("backbone class names %s differ from the dataset's %s; using the dataset's",
                       list(backbone_names)[:5], data.class_names[:5])
    config = resolve_config(config, data.name, image_size or data.image_size)
    units = plan_units(data.num_classes, config.ipc, config.classes_per_batch, config.seed)
    model.eval().requires_grad_(False)
    if config.group_size == 0:
        largest = max(sum(1 for u in units if len(u.classes) == len(v.classes)) for v in units)
        device_type = "cuda" if torch.cuda.is_available() and not _cpu_requested(config) else "cpu"
        group_size = auto_group_size(model, len(units[0].classes), channels, config.image_size, device_type,
                                     min(config.max_group_size, largest))
        config = replace(config, group_size=group_size)
    return RecoverContext(
        config=config, model=model, class_names=data.class_names, dataset_name=data.name, channels=channels,
        mean=list(mean), std=list(std), backbone_revision=revision, units=units,
    )


def _device(config: RecoverConfig) -> torch.device:
    """The device the stage will run on (what ``make_accelerator`` picks), known before anything is written."""
    from accelerate import PartialState

    return PartialState(cpu=_cpu_requested(config)).device


def _cpu_requested(config: RecoverConfig) -> bool:
    return config.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


def check_launch(config: RecoverConfig) -> None:
    """Refuse a multi-process CPU launch without ``--cpu``: each process would run everything as rank 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.cuda.is_available() and not _cpu_requested(config):
        raise ConfigError(
            f"launched as {world} processes on a machine without GPUs, but the stage was not told to use the "
            "CPU, so every process would believe it is rank 0 and redo all the work. Pass --cpu true (or export "
            "ACCELERATE_USE_CPU=1)."
        )


def shard_plan(units: Sequence[Unit], num_processes: int) -> list[list[Unit]]:
    """Contiguous shards of the unit list: at least one per process, at most ``ROWS_PER_SHARD`` images each."""
    images = sum(len(u.classes) for u in units)
    count = max(min(num_processes, len(units)), math.ceil(images / ROWS_PER_SHARD))
    return [[units[i] for i in part] for part in np.array_split(np.arange(len(units)), count)]


def main(config: RecoverConfig) -> Path:
    """Run the recover stage (any number of processes); returns the output folder."""
    from tqdm.auto import tqdm

    from .core.loops import finish_trackers, make_accelerator

    check_launch(config)
    context = prepare(config)
    config = context.config
    out = Path(config.output_dir)
    precision = Precision.resolve(config.mixed_precision, _device(config))
    check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name="recover", config=config.to_dict(),
    )
    model = context.model.to(accelerator.device)
    spec = SynthesisSpec.from_config(config, context.channels, context.mean, context.std)

    groups = make_groups(context.units, config.group_size)
    remaining = [g for g in groups if not all(unit_path(out, u).exists() for u in g)]
    accelerator.wait_for_everyone()  # every rank listed the same finished units before anyone adds one
    with accelerator.split_between_processes(remaining) as mine:
        mine = list(mine)
    if mine:
        logger.info("rank %d: %d of %d groups of %d unit(s) to do", accelerator.process_index, len(mine),
                    len(groups), config.group_size)
    bar = tqdm(total=sum(len(g) for g in mine) * spec.iterations, desc="recover",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    done_steps = 0
    for group in mine:
        def on_step(step: int, ce: torch.Tensor, bn: torch.Tensor, _n=len(group)) -> None:
            nonlocal done_steps
            done_steps += _n
            if (step + 1) % config.log_every == 0 or step + 1 == spec.iterations:
                ce_mean, bn_mean = float(ce.mean()), float(bn.mean())
                accelerator.log({"recover/ce": ce_mean, "recover/bn": bn_mean,
                                 "recover/loss": ce_mean + spec.r_bn * bn_mean}, step=done_steps)
                bar.set_postfix(ce=f"{ce_mean:.3f}", bn=f"{bn_mean:.3f}")
                bar.update(done_steps - bar.n)

        x, ce, bn = synthesize_group(model, group, spec, device=accelerator.device, precision=precision,
                                     on_step=on_step)
        pixels = to_uint8(x, spec.mean, spec.std, spec.image_format)
        for g, unit in enumerate(group):
            if not unit_path(out, unit).exists():  # a resumed group: its finished units are already there
                save_unit(out, unit, pixels[g], float(ce[g]), float(bn[g]))
    bar.close()
    accelerator.wait_for_everyone()

    write_outputs(accelerator, context, out)
    accelerator.wait_for_everyone()
    if config.push_to_hub and accelerator.is_main_process:
        url = push_distilled(out, config.push_to_hub)
        logger.info("pushed %s to %s", out, url)
    finish_trackers(accelerator)
    return out


def write_outputs(accelerator, context: RecoverContext, out: Path) -> None:
    """Shards (rank r writes shards r, r+N, ...), then the card, grid on the main process."""
    missing = [u.name for u in context.units if not unit_path(out, u).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} unit(s) were not produced (e.g. {missing[:3]}); rerun to finish them")
    shards = shard_plan(context.units, accelerator.num_processes)
    names = [shard_name(k, len(shards)) for k in range(len(shards))]
    if accelerator.is_main_process:
        remove_stale_shards(out, names)
    accelerator.wait_for_everyone()
    for k in range(accelerator.process_index, len(shards), accelerator.num_processes):
        images, labels, ipcs, seeds = _gather_units(out, shards[k])
        write_shard(out / DATA_DIR / names[k], images, labels, ipcs, seeds, context.class_names,
                    context.config.image_format)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        images, labels, ipcs, _ = _gather_units(out, context.units)
        write_grid(out / "grid.png", images, labels, ipcs)
        write_dataset_card(out, card_data(context, len(shards)))


def _gather_units(out: Path, units: Sequence[Unit]) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
    images, labels, ipcs, seeds = [], [], [], []
    for unit in units:
        pixels, _ = load_unit(out, unit)
        images.append(pixels)
        labels += list(unit.classes)
        ipcs += [unit.ipc] * len(unit.classes)
        seeds += [unit.seed] * len(unit.classes)
    return torch.cat(images), labels, ipcs, seeds


def card_data(context: RecoverContext, num_shards: int) -> DistilledSetCardData:
    from . import __version__

    config = context.config
    finals = [load_unit(config.output_dir, u)[1] for u in context.units]
    return DistilledSetCardData(
        class_names=context.class_names,
        num_images=sum(len(u.classes) for u in context.units),
        ipc=config.ipc,
        image_format=config.image_format,
        image_size=config.image_size,
        channels=context.channels,
        source_dataset=context.dataset_name,
        backbone=config.backbone,
        backbone_revision=context.backbone_revision,
        seed=config.seed,
        recover_config=config.result_fields(),
        hf_scdd_version=__version__,
        num_shards=num_shards,
        final_ce=float(np.mean([float(m["ce"]) for m in finals])),
        final_bn=float(np.mean([float(m["bn"]) for m in finals])),
    )
