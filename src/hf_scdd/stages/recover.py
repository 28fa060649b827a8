"""``hf-scdd recover``: SC-DD synthesis by BatchNorm-statistics matching, exported as a Hub dataset folder.

``hf-scdd recover --backbone FOLDER_OR_REPO --ipc 10 --output_dir out`` optimises, for every IPC index, batches
holding exactly one image per class (a chunk of ``classes_per_batch`` distinct classes) so that the frozen,
eval-mode recovery model classifies each as its class while the per-layer input statistics of the batch match
the BN running statistics (the objective: :func:`hf_scdd.losses.bn_matching.grouped_recovery_loss`; the
optimisation: :mod:`hf_scdd.synthesis.engine`). Units are seeded from ``(seed, ipc, chunk)`` only and
``accelerate launch --num_processes N -m hf_scdd recover ...`` splits fixed groups of them between ranks, so
the images do not depend on the process count; each finished unit is written atomically to ``units/`` and a
rerun skips it; a changed config in the same folder is refused.

``--method scdd`` (default) is SC-DD exactly: N(0, 1) noise refined against the model's running statistics.
``--method hf_scdd`` is this library's: real starting images chosen per class (``--selection kmeans`` on the
recovery model's features, :mod:`hf_scdd.synthesis.selection`) refined with a small learning rate against BN
statistics measured on clean training images (``--bn_targets clean``, optionally ``--class_bn_weight``); every
field it sets can be given explicitly instead. The output is a ``load_dataset``-ready folder
(:mod:`hf_scdd.formats.distilled_set`) with its card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import ConfigError, StageConfig, check_or_write_config
from ..formats.distilled_set import IMAGE_FORMATS, gather_units, write_grid, write_shards
from ..hub.cards import write_dataset_card
from ..hub.push import push_distilled
from ..models.loading import load_backbone
from ..synthesis.engine import SynthesisSpec, recover_units
from ..synthesis.inputs import recovery_inputs
from ..synthesis.selection import SELECTIONS
from ..synthesis.setup import card_data, prepare
from ..synthesis.units import make_groups
from ..training.accelerator import Precision, check_cpu_launch, finish_trackers, make_accelerator, stage_device

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
    method: str = field(
        default="scdd",
        metadata={"help": "'scdd' (SC-DD exactly: noise init, the running statistics) or 'hf_scdd' (this library's: "
                  "selected real images refined against clean-image statistics); sets the fields below when unset."},
    )
    init: str | None = field(default=None, metadata={"help": "Starting images: 'noise' (SC-DD) or 'real'."})
    selection: str | None = field(
        default=None, metadata={"help": "Real starting images: random, kmeans, herding or confident (per class)."}
    )
    selection_model: str | None = field(
        default=None, metadata={"help": "Observer whose features choose the real images (default: --backbone)."}
    )
    selection_pool: int = field(default=0, metadata={"help": "Seeded candidates per class to choose from (0 = all)."})
    bn_targets: str | None = field(
        default=None,
        metadata={"help": "'running' (SC-DD: the model's running statistics) or 'clean' (measured on clean "
                  "training images)."},
    )
    class_bn_weight: float | None = field(
        default=None, metadata={"help": "Weight in [0, 1] of the class-conditional BN term (needs clean targets)."}
    )
    bn_target_samples: int = field(default=10000, metadata={"help": "Training images the clean targets are measured on."})
    iterations: int | None = field(
        default=None, metadata={"help": "Adam steps per batch (preset default); 0 keeps real starting images as they are."}
    )
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
    crop_curriculum: bool | None = field(
        default=None, metadata={"help": "CDA's easy-to-hard crops: the smallest crop shrinks from 1 to crop_scale_min."}
    )
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
        (config.iterations is None or config.iterations >= 0, f"--iterations must be >= 0, got {config.iterations}"),
        (config.init in (None, "noise", "real"), f"--init must be noise or real, got {config.init!r}"),
        (config.selection in (None, *SELECTIONS), f"--selection must be one of {SELECTIONS}, got {config.selection!r}"),
        (config.bn_targets in (None, "running", "clean"), f"--bn_targets must be running or clean, got {config.bn_targets!r}"),
        (config.class_bn_weight is None or 0 <= config.class_bn_weight <= 1,
         f"--class_bn_weight must be in [0, 1], got {config.class_bn_weight}"),
        (config.selection_pool >= 0, f"--selection_pool must be >= 0 (0 = all), got {config.selection_pool}"),
        (config.bn_target_samples >= 1, f"--bn_target_samples must be >= 1, got {config.bn_target_samples}"),
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


def main(config: RecoverConfig) -> Path:
    """Run the recover stage (any number of processes); returns the output folder."""
    check_cpu_launch(config.cpu)
    validate_config(config)
    context = prepare(config)
    config = context.config
    out = Path(config.output_dir)
    precision = Precision.resolve(config.mixed_precision, stage_device(config.cpu))
    check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name="recover", config=config.to_dict(),
    )
    model = context.model.to(accelerator.device)
    observer = load_backbone(config.selection_model).to(accelerator.device) if config.selection_model else model
    targets, init_images = recovery_inputs(accelerator, config, model, context.data, out, observer=observer,
                                           precision=precision)
    spec = SynthesisSpec.from_config(config, context.channels, context.mean, context.std, targets=targets,
                                     init_images=init_images)
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
