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
``--method hf_scdd`` is this library's: real images chosen per class (``--selection kmeans`` medoids of the
recovery model's features, :mod:`hf_scdd.synthesis.selection`); on CIFAR-size data (presets cifar, tiny,
imagenet) lightly refined: 100 Adam steps at lr 0.03 towards BN statistics of clean training images
(``--bn_targets clean``), kept as they are on 28×28 grey data (preset small), where the refinement cost a point
at IPC 50 (:data:`hf_scdd.synthesis.presets.METHOD_BY_PRESET`). Every field it sets can be given explicitly
instead, e.g. ``--iterations 0`` to keep the medoids anywhere. The output is a ``load_dataset``-ready folder
(:mod:`hf_scdd.formats.distilled_set`) with its card.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import Check, StageConfig, check_or_write_config, discard_on_failure, in_range
from ..errors import ConfigError, DataError
from ..formats.distilled_set import INPUTS_DIR, IMAGE_FORMATS, UNITS_DIR, gather_units, write_grid, write_shards
from ..hub.cards import write_dataset_card
from ..hub.push import push_distilled
from ..synthesis.engine import SynthesisSpec, recover_units
from ..synthesis.inputs import recovery_inputs
from ..synthesis.presets import METHODS
from ..synthesis.selection import SELECTION_FEATURES, SELECTIONS
from ..synthesis.setup import card_data, prepare, recovery_precision, selection_observer
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
                  "real images chosen by k-means on the model's features; on CIFAR-size presets 100 light steps towards "
                  "clean-image BN statistics); sets the fields below when unset."},
    )
    init: str | None = field(default=None, metadata={"help": "Starting images: 'noise' (SC-DD) or 'real'."})
    selection: str | None = field(
        default=None,
        metadata={"help": f"Real starting images per class: one of {', '.join(SELECTIONS)} "
                  "(see hf_scdd.synthesis.selection)."},
    )
    selection_model: str | None = field(
        default=None, metadata={"help": "Observer whose features choose the real images (default: --backbone)."}
    )
    selection_features: str = field(default="observer", metadata={
        "help": "'observer' (--selection_model's features, else --backbone's), 'joint' (both side by side) "
                "or 'logits' (the observer's centred logits: the shapes of its soft labels)."})
    observers: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra models (folders or Hub ids, same classes) whose BN statistics and logits join the "
                  "recovery model's while images are optimised (several observers, G-VBSM/CV-DD style)."},
    )
    selection_pool: int = field(default=0, metadata={"help": "Seeded candidates per class to choose from (0 = all)."})
    patches_per_side: int = field(
        default=1,
        metadata={"help": "Real-patch starting images (RDED-style mosaics): each image tiles N×N downscaled real "
                  "images of its class, chosen together (IPC·N² per class); 1 = whole images. Needs --init real."},
    )
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

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            (bool(self.backbone), "recover needs a recovery model: pass --backbone FOLDER_OR_HUB_ID"),
            (self.ipc >= 1, f"--ipc must be >= 1 (got {self.ipc}): it is the number of images per class"),
            (self.classes_per_batch is None or self.classes_per_batch >= 0,
             f"--classes_per_batch must be >= 0 (0 = all classes), got {self.classes_per_batch}"),
            (self.method in METHODS, f"unknown --method {self.method!r}; choose one of {sorted(METHODS)}"),
            (self.iterations is None or self.iterations >= 0, f"--iterations must be >= 0, got {self.iterations}"),
            (self.init in (None, "noise", "real"), f"--init must be noise or real, got {self.init!r}"),
            (self.selection in (None, *SELECTIONS),
             f"--selection must be one of {SELECTIONS}, got {self.selection!r}"),
            (self.bn_targets in (None, "running", "clean"),
             f"--bn_targets must be running or clean, got {self.bn_targets!r}"),
            in_range("class_bn_weight", self.class_bn_weight, 0, 1),
            (self.selection_features in SELECTION_FEATURES,
             f"--selection_features must be one of {SELECTION_FEATURES}, got {self.selection_features!r}"),
            (self.selection_pool >= 0, f"--selection_pool must be >= 0 (0 = all), got {self.selection_pool}"),
            (self.patches_per_side >= 1, f"--patches_per_side must be >= 1 (1 = whole images), got {self.patches_per_side}"),
            (self.bn_target_samples >= 1, f"--bn_target_samples must be >= 1, got {self.bn_target_samples}"),
            in_range("lr", self.lr, 0, 10, low_open=True, note="Adam steps on normalised pixels; presets use 0.25"),
            in_range("r_bn", self.r_bn, 0, 1e4, note="presets use 0.01; far larger overflows float32"),
            in_range("first_bn_multiplier", self.first_bn_multiplier, 0, 1e4),
            (self.jitter is None or self.jitter >= 0, f"--jitter must be >= 0, got {self.jitter}"),
            in_range("crop_scale_min", self.crop_scale_min, 0, 1, low_open=True),
            (self.image_size is None or self.image_size >= 1, f"--image_size must be >= 1, got {self.image_size}"),
            (self.image_format in IMAGE_FORMATS, f"--image_format must be png or jpeg, got {self.image_format!r}"),
            (self.group_size >= 0, f"--group_size must be >= 0 (0 = automatic), got {self.group_size}"),
            (self.max_group_size >= 1, f"--max_group_size must be >= 1, got {self.max_group_size}"),
            (self.log_every >= 1, f"--log_every must be >= 1, got {self.log_every}"),
        ]


def main(config: RecoverConfig) -> Path:
    """Run the recover stage (any number of processes); returns the output folder."""
    check_cpu_launch(config.cpu)
    config.validate()
    context = prepare(config)
    config = context.config
    out = Path(config.output_dir)
    precision = Precision.resolve(recovery_precision(config), stage_device(config.cpu))
    check_or_write_config(config, out, runtime={"precision": precision.name})
    accelerator = make_accelerator(
        out, cpu=config.cpu, report_to=config.report_to, run_name="recover", config=config.to_dict(),
    )
    model = context.model.to(accelerator.device)
    objective = context.objective.to(accelerator.device)  # the recovery model, or it with --observers
    observer = selection_observer(config, model).to(accelerator.device)
    with discard_on_failure(out, UNITS_DIR, INPUTS_DIR, "logs"):  # a diverged run keeps no (black) unit
        # Input the selection rejects (a class with fewer images than IPC, ...) leaves no record behind that
        # would refuse the corrected command; a folder with finished units keeps everything.
        rejected = () if (out / UNITS_DIR).exists() else (ConfigError, DataError)
        with discard_on_failure(out, INPUTS_DIR, "logs", errors=rejected):
            targets, init_images = recovery_inputs(accelerator, config, objective, context.data, out,
                                                   observer=observer, precision=precision)
        spec = SynthesisSpec.from_config(config, context.channels, context.mean, context.std, targets=targets,
                                         init_images=init_images)
        recover_units(accelerator, objective, make_groups(context.units, config.group_size), spec, out,
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
