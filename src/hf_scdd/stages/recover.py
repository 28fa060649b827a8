"""``hf-scdd recover``: SC-DD synthesis by BatchNorm-statistics matching, exported as a Hub dataset folder.

``hf-scdd recover --backbone FOLDER_OR_REPO --ipc 10 --output_dir out`` optimises, for every IPC index, batches
holding exactly one image per class (a chunk of ``classes_per_batch`` distinct classes) so that the frozen,
eval-mode recovery model classifies each as its class while the per-layer input statistics of the batch match
the BN running statistics (the objective: :func:`hf_scdd.losses.bn_matching.grouped_recovery_loss`; the
optimisation: :mod:`hf_scdd.synthesis.engine`). Units are seeded from ``(seed, ipc, chunk)`` only and
``accelerate launch --num_processes N -m hf_scdd recover ...`` splits fixed groups of them between ranks, so
the images do not depend on the process count; each finished unit is written atomically to ``units/`` and a
rerun skips it; a changed config in the same folder is refused. The output is a ``load_dataset``-ready folder
(:mod:`hf_scdd.formats.distilled_set`) with its card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..configs import ConfigError, StageConfig, check_or_write_config
from ..data.loading import load_image_dataset
from ..formats.distilled_set import IMAGE_FORMATS, gather_units, load_unit, write_grid, write_shards
from ..hub.cards import DistilledSetCardData, source_dataset_terms, write_dataset_card
from ..hub.push import push_distilled
from ..models.loading import load_backbone
from ..synthesis.engine import SynthesisSpec, auto_group_size, check_recovery_model, recover_units
from ..synthesis.presets import resolve_presets
from ..synthesis.units import Unit, make_groups, plan_units
from ..training.accelerator import Precision, check_cpu_launch, finish_trackers, make_accelerator, stage_device
from ..utils import resolve_hub_revision, use_cpu

logger = logging.getLogger(__name__)


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


def prepare(config: RecoverConfig) -> RecoverContext:
    """Validate the config, load the backbone and the class names, plan the units. Writes nothing."""
    validate_config(config)
    revision = resolve_hub_revision(config.backbone, config.backbone_revision)
    model = load_backbone(config.backbone, revision=revision)
    channels = int(getattr(model, "in_channels", 3))
    image_size = int(config.image_size or getattr(model, "image_size", 0) or 0) or None
    mean, std = getattr(model, "mean", None), getattr(model, "std", None)
    data = load_image_dataset(
        config.dataset, image_column=config.image_column, label_column=config.label_column, channels=channels,
        image_size=image_size, mean=mean, std=std,
    )
    check_recovery_model(model, config.backbone, data.num_classes)
    backbone_names = getattr(model, "class_names", None)
    if backbone_names and list(backbone_names) != data.class_names:
        logger.warning("backbone class names %s differ from the dataset's %s; using the dataset's",
                       list(backbone_names)[:5], data.class_names[:5])
    config = resolve_presets(config, data.name, image_size or data.image_size)
    units = plan_units(data.num_classes, config.ipc, config.classes_per_batch, config.seed)
    model.eval().requires_grad_(False)
    if config.group_size == 0:
        device_type = "cuda" if torch.cuda.is_available() and not use_cpu(config.cpu) else "cpu"
        group_size = auto_group_size(model, units, channels, config.image_size, device_type, config.max_group_size)
        config = replace(config, group_size=group_size)
    return RecoverContext(
        config=config, model=model, class_names=data.class_names, dataset_name=data.name, channels=channels,
        mean=list(mean), std=list(std), backbone_revision=revision, units=units,
    )


def main(config: RecoverConfig) -> Path:
    """Run the recover stage (any number of processes); returns the output folder."""
    check_cpu_launch(config.cpu)
    context = prepare(config)
    config = context.config
    out = Path(config.output_dir)
    precision = Precision.resolve(config.mixed_precision, stage_device(config.cpu))
    check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name="recover", config=config.to_dict(),
    )
    model = context.model.to(accelerator.device)
    spec = SynthesisSpec.from_config(config, context.channels, context.mean, context.std)
    recover_units(accelerator, model, make_groups(context.units, config.group_size), spec, out,
                  precision=precision, log_every=config.log_every)

    num_shards = write_shards(accelerator, context.units, out, context.class_names, config.image_format)
    if accelerator.is_main_process:
        images, labels, ipcs, _ = gather_units(out, context.units)
        write_grid(out / "grid.png", images, labels, ipcs)
        write_dataset_card(out, card_data(context, num_shards))
    accelerator.wait_for_everyone()
    if config.push_to_hub and accelerator.is_main_process:
        logger.info("pushed %s to %s", out, push_distilled(out, config.push_to_hub))
    finish_trackers(accelerator)
    return out


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
