"""``hf-scdd relabel``: a teacher's soft labels for a distilled set, stored as safetensors next to it.

FKD-style: for every epoch, the views each image gets (a function of ``(seed, epoch)``) and the teacher's
logits on them, as fp16 or int8, optionally top-k (``--mode compact``: one label per image); the format is
:mod:`hf_scdd.formats.soft_labels`. Epochs are spread over processes round robin, files are written
atomically, a rerun skips finished epochs and a changed config is refused. The teacher runs in float32.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configs import ConfigError, DistilledSetFields, PostTrainViewFields, StageConfig, check_or_write_config
from ..formats.distilled_set import SOFT_LABELS_DIR, distilled_images, image_nbytes
from ..formats.soft_labels import SoftLabelStore, bytes_report, format_bytes_report, label_format, write_soft_labels
from ..hub.loading import load_distilled
from ..hub.push import push_soft_labels
from ..models.loading import load_backbone, teacher_fn
from ..training.accelerator import make_accelerator
from ..utils import atomic_write_text, use_cpu


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


def validate(config: RelabelConfig) -> None:
    """Refuse values that cannot work, before anything is written."""
    if config.mode not in ("fkd", "compact"):
        raise ConfigError(f"--mode must be 'fkd' or 'compact', got {config.mode!r}")
    if config.epochs < 1 or config.batch_size < 1:
        raise ConfigError("--epochs and --batch_size must be >= 1")


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
) -> dict[str, Any]:
    """Write the label files for ``images`` (uint8) into ``labels_dir``; returns the bytes report."""
    from accelerate import PartialState

    validate(config)
    state = PartialState(cpu=use_cpu(config.cpu)) if accelerator is None else accelerator.state
    labels_dir = Path(labels_dir)
    if state.is_main_process:
        labels_dir.mkdir(parents=True, exist_ok=True)
        # the teacher runs in float32 whatever --mixed_precision says (as it always has): record that
        check_or_write_config(config, labels_dir, name="relabel_config.json", runtime={"precision": "no"})
    state.wait_for_everyone()
    fmt = label_format(config, images, teacher)
    run = teacher_fn(teacher.to(state.device), getattr(teacher, "mean", None), getattr(teacher, "std", None))
    write_soft_labels(state, images, run, fmt, labels_dir)
    state.wait_for_everyone()
    store = SoftLabelStore(labels_dir, num_images=len(images), num_classes=fmt.num_classes)
    report = bytes_report(store, image_bytes)
    if state.is_main_process:
        atomic_write_text(labels_dir / "label_bytes.json", json.dumps(report, indent=2) + "\n")
        print(format_bytes_report(report))
    state.wait_for_everyone()
    return report


def main(config: RelabelConfig) -> dict[str, Any]:
    """``hf-scdd relabel --distilled FOLDER_OR_REPO --teacher FOLDER_OR_REPO``."""
    if not config.distilled or not config.teacher:
        raise ConfigError("relabel needs --distilled FOLDER_OR_REPO and --teacher FOLDER_OR_REPO")
    labels_dir = resolve_labels_dir(config)
    accelerator = make_accelerator(labels_dir, cpu=config.cpu, report_to="none", run_name="relabel")
    dataset, _, _ = load_distilled(config.distilled, config.revision)
    teacher = load_backbone(config.teacher, revision=config.teacher_revision)
    channels = int(getattr(teacher, "in_channels", 0) or (1 if dataset[0]["image"].mode == "L" else 3))
    image_size = int(max(dataset[0]["image"].size))
    images, _ = distilled_images(dataset, channels, image_size)
    report = relabel(
        config, images=images, teacher=teacher, labels_dir=labels_dir,
        image_bytes=image_nbytes(dataset), accelerator=accelerator,
    )
    if config.push_to_hub and accelerator.is_main_process:
        push_soft_labels(labels_dir, config.push_to_hub)
    return report
