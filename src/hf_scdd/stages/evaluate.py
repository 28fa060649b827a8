"""``hf-scdd evaluate``: post-train a student from scratch on a distilled set and report real test top-1.

Students are trained with SC-DD's post-training protocol in any of three label modes (``online`` teacher,
``stored`` relabel files, ``hard`` labels; :mod:`hf_scdd.training.post_train`), next to the same protocol on a
random real subset with the same images per class (IOR = distilled − random) and optionally on the full
training set, with hard labels (HLR = full − distilled) and online KD (the KD ceiling at this budget). The
output folder holds ``results.json``, ``results.md``, ``curves.png`` and ``student/`` (the first seed's
student, Hub-ready, with model-index results on its card); finished runs are reused on rerun, and the
student's run keeps its weights before it counts as finished, so a resumed evaluation always has it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configs import (
    Check, CompileFields, ConfigError, DistilledSetFields, PostTrainViewFields, StageConfig, check_config, discard_on_failure,
    in_range, record_config,
)
from ..data.loading import ImageData
from ..formats.distilled_set import distilled_images
from ..formats.soft_labels import labels_for_set
from ..hub.cards import StudentCardData, render_student_card
from ..hub.loading import load_distilled
from ..hub.push import push_model_folder
from ..models.loading import load_backbone
from ..models.resnet import ARCHITECTURES, STEMS, ResNet
from ..training.accelerator import Precision, check_compile
from ..training.post_train import LABEL_MODES, STUDENT_DIR, STUDENT_LR, check_classes, full_data_check, run_dir
from ..training.post_train import run_groups, train_groups
from ..training.evaluation import teacher_test_top1
from ..training.report import aggregate, markdown_report, plot_curves, protocol_checks, protocol_metrics
from ..training.stage import load_stage_data
from ..utils import atomic_write_text, use_cpu

logger = logging.getLogger(__name__)

@dataclass
class EvaluateConfig(PostTrainViewFields, DistilledSetFields, CompileFields, StageConfig):
    """``hf-scdd evaluate``: a student trained on the distilled set, with same-protocol baselines."""

    soft_labels: str | None = field(default=None, metadata={"help": "Soft-label folder (default: the distilled set's)."})
    label_modes: list[str] = field(
        default_factory=lambda: ["online"], metadata={"help": "Any of 'online', 'stored', 'hard' (several allowed)."}
    )
    arch: str = field(default="resnet18", metadata={"help": "Student architecture (hf_scdd ResNet family)."})
    width: int = field(default=64, metadata={"help": "Student first-stage width (64 = torchvision)."})
    stem: str = field(default="cifar", metadata={"help": "Student stem: 'cifar' or 'imagenet'."})
    steps: int = field(
        default=3000,
        metadata={"help": "Optimiser steps of every student (rounded up to whole epochs): the same budget for "
                  "every set size. KD students still gain from longer budgets: compare sets at one budget."},
    )
    epochs: int | None = field(
        default=None, metadata={"help": "Epochs instead of --steps (SC-DD's schedules: 300 ImageNet, 200 CIFAR)."}
    )
    lr: float = field(default=STUDENT_LR, metadata={"help": "AdamW lr (SC-DD: 1e-3; see benchmarks/protocol_sweep.py)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (SC-DD: 0.01)."})
    decay_all_params: bool = field(
        default=False,
        metadata={"help": "Decay BN/bias too (SC-DD CIFAR); default decays only conv/linear weights (ImageNet)."},
    )
    temperature: float = field(default=4.0, metadata={"help": "KD temperature (SC-DD: 20 ImageNet, 30 CIFAR)."})
    t2_factor: bool = field(default=False, metadata={"help": "Multiply the KD loss by T^2 (SC-DD: no)."})
    teacher_train_mode: bool = field(
        default=False, metadata={"help": "Teacher BN in train mode (SC-DD CIFAR quirk); default eval mode."}
    )
    eval_points: int = field(
        default=8, metadata={"help": "Score the full test split at this many evenly spaced points (the last included)."}
    )
    eval_batch_size: int = field(default=512, metadata={"help": "Test batch size per process."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Student seeds (mean ± std)."})
    random_baseline: bool = field(
        default=True, metadata={"help": "Same protocol on a random real subset with the same images per class."}
    )
    full_data_baseline: bool = field(
        default=False, metadata={"help": "Full-training-set runs: hard labels (HLR) and online KD if asked (its ceiling)."}
    )
    full_data_steps: int | None = field(default=None, metadata={"help": "Steps of the full-data run (default: --steps)."})
    save_student: bool = field(default=True, metadata={"help": "Save the first seed's student as a Hub-ready model."})

    def checks(self) -> list[Check]:
        unknown = [m for m in self.label_modes if m not in LABEL_MODES]
        return [
            *super().checks(),
            (bool(self.label_modes) and not unknown,
             f"--label_modes: unknown or no mode {unknown or self.label_modes}; choose from {list(LABEL_MODES)}"),
            (self.arch in ARCHITECTURES, f"unknown --arch {self.arch!r}; choose one of {sorted(ARCHITECTURES)}"),
            (self.stem in STEMS, f"unknown --stem {self.stem!r}; choose one of {list(STEMS)}"),
            (self.width >= 1 and self.steps >= 1, "--width and --steps must be >= 1"),
            (self.epochs is None or self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            in_range("lr", self.lr, 0, 1, low_open=True, note="AdamW; SC-DD uses 0.001"),
            in_range("weight_decay", self.weight_decay, 0, 1),
            in_range("temperature", self.temperature, 0, 1000, low_open=True),
            (self.eval_points >= 1 and self.eval_batch_size >= 1, "--eval_points and --eval_batch_size must be >= 1"),
            (bool(self.seeds) and len(set(self.seeds)) == len(self.seeds),
             f"--seeds must be distinct, got {self.seeds}"),
            (self.full_data_steps is None or self.full_data_steps >= 1, "--full_data_steps must be >= 1"),
            full_data_check(self.full_data_baseline, self.streaming),
        ]


def run_evaluation(
    config: EvaluateConfig,
    *,
    data: ImageData | None = None,
    distilled=None,
    teacher: torch.nn.Module | None = None,
    store=None,
) -> dict[str, Any]:
    """Train the students of every (set, label mode, seed) and write the report; returns the results dict.

    ``data``/``distilled``/``teacher``/``store`` may be given directly (pipeline, benchmarks); otherwise they
    are loaded from the config.
    """
    from accelerate import PartialState

    config.validate()
    state = PartialState(cpu=use_cpu(config.cpu))  # as make_accelerator decides, or ranks see 1 process
    modes = list(dict.fromkeys(config.label_modes))
    precision = Precision.resolve(config.mixed_precision, state.device)
    if config.compile:
        check_compile(state.device)
    output = Path(config.output_dir)
    check_config(config, output)  # compare only: the record is written once the inputs are known to be usable
    data = data if data is not None else load_stage_data(config)
    labels_dir = None
    if distilled is None:
        if not config.distilled:
            raise ConfigError("evaluate needs --distilled FOLDER_OR_REPO")
        distilled, labels_dir, _ = load_distilled(config.distilled, config.revision)
    check_classes(distilled, data)
    images, labels = distilled_images(distilled, data.channels, data.image_size)
    needs_teacher = "online" in modes or ("stored" in modes and config.random_baseline)
    if teacher is None and needs_teacher and config.teacher:
        teacher = load_backbone(config.teacher, revision=config.teacher_revision)
    if "stored" in modes and store is None:
        folder = config.soft_labels or labels_dir
        if folder is None:
            raise ConfigError("label mode 'stored' but the distilled set has no soft_labels/; run `hf-scdd relabel`")
        store = labels_for_set(folder, distilled, num_classes=data.num_classes, teacher=teacher)
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        record_config(config, output, runtime={"precision": precision.name, "data_source": data.source_kind})
    state.wait_for_everyone()

    with discard_on_failure(output, "runs"):
        runs = train_groups(config, data, run_groups(config, data, images, labels, modes, teacher, store))
    table = aggregate(runs)
    report = {"config": config.to_dict(), "dataset": data.name, "test_size": len(data.source("test")),
              "num_processes": state.num_processes, "results": table, "metrics": protocol_metrics(table, modes),
              "checks": protocol_checks(table), "runs": runs,
              "teacher_top1": teacher_test_top1(teacher, data, precision) if teacher is not None else None}
    if store is not None:
        report["label_bytes"] = store.nbytes() if hasattr(store, "nbytes") else None
    for warning in report["checks"]:
        logger.warning(warning)
    if state.is_main_process:
        if config.save_student:  # before results.json, which marks the evaluation finished
            student = ResNet.from_pretrained(run_dir(config, f"distilled/{modes[0]}", config.seeds[0]) / STUDENT_DIR)
            save_student(student, config, data, report, output / "student", modes[0])
        atomic_write_text(output / "results.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(output / "results.md", report_markdown(report, f"Evaluation of {config.distilled}"))
        plot_curves(runs, output / "curves.png")
    state.wait_for_everyone()
    return report


def report_markdown(report: dict[str, Any], title: str) -> str:
    """The Markdown table of an evaluation report (teacher row, side-by-side label modes, self-checks)."""
    return markdown_report(report["results"], report["metrics"], title, teacher_top1=report.get("teacher_top1"),
                           checks=report.get("checks"))


def save_student(model, config: EvaluateConfig, data: ImageData, report: dict, folder: Path, mode: str) -> None:
    """Save the student (safetensors + config) with its card; push it when ``--push_to_hub`` is set."""
    row = report["results"][f"distilled/{mode}"]
    model.update_training_info(
        method="sc-dd-post-training", dataset=data.name, distilled=config.distilled, teacher=config.teacher,
        label_mode=mode, steps=row["steps"], epochs=row["epochs"], temperature=config.temperature,
        batch_size=config.batch_size, final_top1_mean=row["final_top1_mean"], final_top1_std=row["final_top1_std"])
    model.save_pretrained(folder)
    card_data = StudentCardData(
        arch=config.arch, stem=config.stem, width=config.width, num_classes=data.num_classes, dataset=data.name,
        distilled=config.distilled, teacher=config.teacher, label_mode=mode, steps=row["steps"], epochs=row["epochs"],
        temperature=config.temperature, batch_size=config.batch_size, mix=config.mix, seeds=list(config.seeds),
        lr=config.lr, weight_decay=config.weight_decay, final_top1_mean=row["final_top1_mean"],
        final_top1_std=row["final_top1_std"], best_top1_mean=row["best_top1_mean"], best_top1_std=row["best_top1_std"],
        test_size=report["test_size"], metrics=report["metrics"],
        results_markdown=report_markdown(report, "Results").split("\n", 2)[2],
    )
    render_student_card(card_data).save(str(folder / "README.md"))
    if config.push_to_hub:
        push_model_folder(folder, config.push_to_hub, commit_message="hf-scdd evaluate student")


def main(config: EvaluateConfig) -> dict[str, Any]:
    """``hf-scdd evaluate --distilled FOLDER_OR_REPO [--teacher ...] [--label_modes online stored hard]``."""
    from accelerate import PartialState

    report = run_evaluation(config)
    if PartialState(cpu=use_cpu(config.cpu)).is_main_process:
        print(report_markdown(report, f"Evaluation of {config.distilled}"))
    return report
