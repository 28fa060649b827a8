"""``hf-scdd relabel``: a teacher's soft labels for a distilled set, stored as safetensors next to it.

FKD-style: for every epoch, the views each image gets (a function of ``(seed, epoch)``) and the teacher's
logits on them, as fp16 or int8, optionally top-k (``--mode compact``: one label per image); the format is
:mod:`hf_scdd.formats.soft_labels`. Epochs are spread over processes round robin, files are written
atomically, a rerun skips finished epochs and a changed config is refused. The teacher runs in float32.
Every file's header binds the labels to the set's images (in order) and to the teacher
(:mod:`hf_scdd.formats.soft_labels`); a teacher with another class count than the set is refused before any
work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configs import (
    Check, DistilledSetFields, PostTrainViewFields, StageConfig, check_config, discard_on_failure, in_range,
    record_config,
)
from ..errors import ConfigError, SoftLabelError
from ..formats.distilled_set import SOFT_LABELS_DIR, distilled_images, image_nbytes
from ..formats.soft_labels import (
    COMPACT_FILE, LABEL_DTYPES, SoftLabelStore, bytes_report, format_bytes_report, label_format, write_soft_labels,
)
from ..hub.loading import load_distilled
from ..hub.push import push_soft_labels
from ..models.loading import load_backbone, teacher_fn
from ..training.accelerator import make_accelerator
from ..utils import atomic_write_text, resolve_hub_revision, use_cpu

CONFIG_FILE = "relabel_config.json"


@dataclass
class RelabelConfig(PostTrainViewFields, DistilledSetFields, StageConfig):
    """``hf-scdd relabel``: store a teacher's soft labels next to a distilled set."""

    labels_dir: str | None = field(
        default=None,
        metadata={"help": "Where to write; default <distilled>/soft_labels, or <output_dir>/soft_labels for a Hub id."},
    )
    mode: str = field(default="fkd", metadata={"help": "'fkd' (per-epoch views + logits) or 'compact' (one per image)."})
    epochs: int = field(default=300, metadata={"help": "Epochs of labels to store (training cycles through them)."})
    temperature: float = field(default=20.0, metadata={"help": "KD temperature recorded for training (20 IN, 30 CIFAR)."})
    topk: int = field(default=0, metadata={"help": "Store only the top-k logits (+ the mean of the rest); 0 = all."})
    label_dtype: str = field(default="fp16", metadata={"help": "'fp16' or 'int8' (per-row scale) logit values."})

    def checks(self) -> list[Check]:
        return [
            *super().checks(),
            (self.mode in ("fkd", "compact"), f"--mode must be 'fkd' or 'compact', got {self.mode!r}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            in_range("temperature", self.temperature, 0, 1000, low_open=True),
            (self.topk >= 0, f"--topk must be >= 0 (0 = all classes), got {self.topk}"),
            (self.label_dtype in LABEL_DTYPES,
             f"--label_dtype must be one of {list(LABEL_DTYPES)}, got {self.label_dtype!r}"),
        ]


def resolve_labels_dir(config: RelabelConfig) -> Path:
    """``--labels_dir``, else the distilled folder's ``soft_labels/``, else ``<output_dir>/soft_labels``."""
    if config.labels_dir:
        return Path(config.labels_dir)
    if config.distilled and os.path.isdir(config.distilled):
        return Path(config.distilled) / SOFT_LABELS_DIR
    return Path(config.output_dir) / SOFT_LABELS_DIR


def relabel(
    config: RelabelConfig,
    *,
    images: torch.Tensor,
    teacher: torch.nn.Module,
    labels_dir: str | os.PathLike,
    image_bytes: int | None = None,
    accelerator=None,
    num_classes: int | None = None,
    teacher_revision: str | None = None,
) -> dict[str, Any]:
    """Write the label files for ``images`` (uint8, as the teacher sees them) into ``labels_dir``; returns the
    bytes report. ``num_classes`` (the set's) refuses a teacher for another label set before anything is
    written; ``teacher_revision`` is the teacher's resolved Hub commit, recorded in every header."""
    from accelerate import PartialState

    config.validate()
    fmt = label_format(config, images, teacher, teacher_revision)
    if num_classes is not None and fmt.num_classes != num_classes:
        raise SoftLabelError(
            f"teacher {config.teacher!r} predicts {fmt.num_classes} classes but the distilled set has {num_classes}: "
            "pass a --teacher trained on the set's classes"
        )
    state = PartialState(cpu=use_cpu(config.cpu)) if accelerator is None else accelerator.state
    labels_dir = Path(labels_dir)
    check_config(config, labels_dir, CONFIG_FILE)
    if state.is_main_process:
        labels_dir.mkdir(parents=True, exist_ok=True)
        # the teacher runs in float32 whatever --mixed_precision says (as it always has): record that
        record_config(config, labels_dir, CONFIG_FILE, runtime={"precision": "no"})
    state.wait_for_everyone()
    run = teacher_fn(teacher.to(state.device), getattr(teacher, "mean", None), getattr(teacher, "std", None))
    with discard_on_failure(labels_dir, "epoch_*.safetensors", COMPACT_FILE, config_name=CONFIG_FILE):
        write_soft_labels(state, images, run, fmt, labels_dir)
    state.wait_for_everyone()
    store = SoftLabelStore(labels_dir, num_images=len(images), num_classes=fmt.num_classes, images=images)
    report = bytes_report(store, image_bytes)
    if state.is_main_process:
        atomic_write_text(labels_dir / "label_bytes.json", json.dumps(report, indent=2) + "\n")
        print(format_bytes_report(report))
    state.wait_for_everyone()
    return report


def main(config: RelabelConfig) -> dict[str, Any]:
    """``hf-scdd relabel --distilled FOLDER_OR_REPO --teacher FOLDER_OR_REPO``."""
    config.validate()
    if not config.distilled or not config.teacher:
        raise ConfigError("relabel needs --distilled FOLDER_OR_REPO and --teacher FOLDER_OR_REPO")
    labels_dir = resolve_labels_dir(config)
    dataset, _, _ = load_distilled(config.distilled, config.revision)
    revision = resolve_hub_revision(config.teacher, config.teacher_revision)
    teacher = load_backbone(config.teacher, revision=revision)
    channels = int(getattr(teacher, "in_channels", 0) or (1 if dataset[0]["image"].mode == "L" else 3))
    image_size = int(max(dataset[0]["image"].size))
    images, _ = distilled_images(dataset, channels, image_size)
    accelerator = make_accelerator(labels_dir, cpu=config.cpu, report_to="none", run_name="relabel")
    report = relabel(
        config, images=images, teacher=teacher, labels_dir=labels_dir, image_bytes=image_nbytes(dataset),
        accelerator=accelerator, num_classes=len(dataset.features["label"].names), teacher_revision=revision,
    )
    if config.push_to_hub and accelerator.is_main_process:
        push_soft_labels(labels_dir, config.push_to_hub)
    return report
