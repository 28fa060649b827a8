"""SC-DD end to end: squeeze → probe → recover → relabel → evaluate, each stage a folder on disk.

The pipeline only chains the stages' own ``main(config)`` functions: every stage writes its output and its
config into ``<output_dir>/<stage>/``, so a rerun skips finished stages (and each stage resumes its own
unfinished work), and any stage can be replaced by an existing artefact (``--backbone`` skips squeeze and,
when it already has a matching classifier, the probe).

Stage configs are built from this config's shared fields plus optional per-stage overrides (YAML mappings,
e.g. ``recover: {lr: 0.3}``), so the whole run is described by one YAML file that is saved next to it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .configs import (
    Check, ConfigError, PostTrainViewFields, StageConfig, check_config, config_from_dict, record_config,
)
from .utils import atomic_write_text, first_line, use_cpu

logger = logging.getLogger(__name__)

PIPELINE_CONFIG = "pipeline_config.json"

@dataclass
class PipelineConfig(StageConfig):
    """The whole run; the defaults distil the built-in Fashion-MNIST within 15 minutes on 2 CPU cores."""

    output_dir: str = field(default="outputs/distill", metadata={"help": "Folder for every stage's output."})
    backbone: str | None = field(
        default=None,
        metadata={"help": "Recovery backbone (Hub id or folder). Skips squeeze; skips the probe if it already "
                  "has a classifier for the dataset's classes."},
    )
    squeeze_method: str = field(
        default="mocov2", metadata={"help": "'mocov2' (SC-DD) or 'supervised' (the SRe²L control)."}
    )
    arch: str = field(default="resnet10", metadata={"help": "Backbone, teacher and student architecture."})
    width: int = field(default=16, metadata={"help": "First-stage width of backbone and student (64 = torchvision)."})
    ssl_epochs: int = field(
        default=2, metadata={"help": "Epochs of the recovery model's squeeze (MoCo v2, or supervised) over the training set."}
    )
    teacher_epochs: int = field(
        default=3, metadata={"help": "Epochs of the supervised teacher's squeeze (teacher 'supervised')."}
    )
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Intra-op threads per process on CPU (default: the machine's cores divided among its "
                  "processes; accelerate launch alone gives each process 1)."},
    )
    train_samples: int = field(
        default=0, metadata={"help": "Training images both squeezes see per epoch (0 = the whole training split)."}
    )
    teacher: str = field(
        default="supervised",
        metadata={"help": "Relabel/KD teacher: 'supervised' (train one, as SC-DD uses a supervised teacher), "
                  "'recovery' (the probed recovery model), or a Hub id / folder."},
    )
    ipc: int = field(default=10, metadata={"help": "Distilled images per class."})
    method: str = field(
        default="hf_scdd",
        metadata={"help": "Recovery method of the distilled set: 'hf_scdd' (this library's: real images chosen "
                  "by k-means on the recovery model's features) or 'scdd' (the paper's configuration)."},
    )
    compare_scdd: bool = field(
        default=True,
        metadata={"help": "Also distil with the paper's configuration (--method scdd) and train its students "
                  "beside, under the same protocol (when --method is not scdd already)."},
    )
    compare_label_modes: list[str] | None = field(
        default=None,
        metadata={"help": "Label modes of the SC-DD arm's students, among --label_modes except 'stored'. Default: "
                  "online KD (the paper's protocol) when it is among --label_modes, else the other modes; a hard-"
                  "label SC-DD student costs a student's time for a cell the fidelity benchmark reports."},
    )
    iterations: int | None = field(default=None, metadata={"help": "Recovery iterations (recover preset if unset)."})
    label_modes: list[str] = field(
        default_factory=lambda: ["online", "hard"],
        metadata={"help": "Post-training labels: any of online, stored, hard ('stored' runs relabel first)."},
    )
    eval_steps: int = field(
        default=3000, metadata={"help": "Optimiser steps of every student (the same for every set size)."}
    )
    eval_points: int = field(default=8, metadata={"help": "Test-split scores along each student's curve."})
    eval_protocol: str = field(
        default="auto",
        metadata={"help": "Post-training protocol shared by relabel and evaluate: 'hf_scdd' (pad-crop, flip, "
                  "CutMix, KD at T=4, a step budget), 'hf_scdd_large' (the same with RandomResizedCrop), "
                  "'scdd_cifar' / 'scdd_imagenet' (SC-DD's released recipes: epoch budgets, T=30 Mixup / T=20 "
                  "CutMix), or 'auto' (hf_scdd up to 64 px, else hf_scdd_large)."},
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Student seeds (mean ± std)."})
    random_baseline: bool = field(default=True, metadata={"help": "Also train on a random real subset, same protocol."})
    squeeze: str | None = field(default=None, metadata={"help": "YAML/JSON mapping of SqueezeConfig overrides."})
    teacher_squeeze: str | None = field(
        default=None, metadata={"help": "YAML/JSON mapping of overrides for the supervised teacher's squeeze."}
    )
    probe: str | None = field(default=None, metadata={"help": "YAML/JSON mapping of ProbeConfig overrides."})
    recover: str | None = field(default=None, metadata={"help": "YAML/JSON mapping of RecoverConfig overrides."})
    relabel: str | None = field(default=None, metadata={"help": "YAML/JSON mapping of RelabelConfig overrides."})
    evaluate: str | None = field(default=None, metadata={"help": "YAML/JSON mapping of EvaluateConfig overrides."})

    def overrides(self, stage: str) -> dict[str, Any]:
        """The per-stage override mapping (a dict from YAML, or a YAML/JSON string from the command line)."""
        value = getattr(self, stage)
        if value is None:
            return {}
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) or {}
            except yaml.YAMLError as err:
                raise ConfigError(
                    f"--{stage} is not valid YAML/JSON ({first_line(err)}), e.g. --{stage} '{{epochs: 1}}'"
                ) from err
        if not isinstance(value, dict):
            raise ConfigError(f"--{stage} must be a mapping of {stage} config fields, got {value!r}")
        return dict(value)

    def checks(self) -> list[Check]:
        """The pipeline's own fields; :func:`plan` then validates every stage config built from them."""
        return [
            *super().checks(),
            (self.squeeze_method in ("mocov2", "supervised"),
             f"--squeeze_method must be mocov2 or supervised, got {self.squeeze_method!r}"),
            (self.eval_steps >= 1 and self.eval_points >= 1, "--eval_steps and --eval_points must be >= 1"),
            (self.ssl_epochs >= 1 and self.teacher_epochs >= 1, "--ssl_epochs and --teacher_epochs must be >= 1"),
            (self.train_samples >= 0, f"--train_samples must be >= 0 (0 = all), got {self.train_samples}"),
            (self.cpu_threads is None or self.cpu_threads >= 1, f"--cpu_threads must be >= 1, got {self.cpu_threads}"),
            (set(self.scdd_label_modes()) <= set(self.label_modes) - {"stored"},
             f"--compare_label_modes {self.compare_label_modes} must be among --label_modes {self.label_modes} "
             "without 'stored' (the SC-DD arm has no stored labels)"),
        ]

    def scdd_label_modes(self) -> list[str]:
        """The SC-DD arm's label modes: ``--compare_label_modes``, else online KD if asked, else the others
        (never ``stored``: the paper's set is not relabelled)."""
        if self.compare_label_modes is not None:
            return list(dict.fromkeys(self.compare_label_modes))
        return ["online"] if "online" in self.label_modes else [m for m in self.label_modes if m != "stored"]

    # threads change only the speed (and float reduction order), not what the run is
    RUNTIME_FIELDS = (*StageConfig.RUNTIME_FIELDS, "cpu_threads")


PUSHED_LABEL_EPOCHS_DIVISOR = 10
"""Labels pushed with a set when evaluation did not store any: 1/10 of the students' epochs, cycled (the
``benchmarks/labels.py`` setting with 10x fewer bytes than every epoch at no measurable top-1 cost)."""


# --------------------------------------------------------------------------------------------------------


def _shared(config: PipelineConfig) -> dict[str, Any]:
    """The StageConfig fields every stage inherits from the pipeline (push_to_hub is handled here, per artefact)."""
    keys = [f.name for f in dataclasses.fields(StageConfig) if f.name not in ("output_dir", "push_to_hub")]
    return {k: getattr(config, k) for k in keys}


def stage_config(config: PipelineConfig, cls: type, stage: str, values: dict[str, Any], folder: Path, key: str | None = None):
    """Build one stage's config: shared fields, pipeline-derived values, then the user's overrides."""
    merged = {**_shared(config), **values, "output_dir": str(folder), **config.overrides(key or stage)}
    return config_from_dict(cls, merged)


@dataclass
class Step:
    """One stage of the run: its marker name, the stage's ``main`` and its config."""

    name: str
    main: Callable[[Any], Any]
    config: StageConfig


@dataclass
class Plan:
    """Every stage the pipeline will run, with the paths each hands the next (known before any runs)."""

    steps: list[Step]
    recovery_model: str
    teacher: str
    distilled: str
    inspect: Step


def plan(config: PipelineConfig, *, needs_probe: bool = True, image_size: int | None = None,
         num_classes: int | None = None) -> Plan:
    """The stage configs of this run, each validated: an invalid value in any stage (``--ipc 0``, a bad
    override) is refused before the first stage starts. ``needs_probe``: False when ``--backbone`` already
    has a classifier for the dataset; ``image_size`` picks the ``auto`` protocol and ``num_classes`` sizes the
    label epochs (before the data are read: 32 px and one class, enough to validate)."""
    from .models.loading import BACKBONE_DIR, MODEL_DIR
    from .stages import evaluate, inspect_bn, probe, recover, relabel, squeeze

    out = Path(config.output_dir)
    steps: list[Step] = []
    backbone = config.backbone
    if not backbone:
        cfg = stage_config(config, squeeze.SqueezeConfig, "squeeze",
                           {"method": config.squeeze_method, "arch": config.arch, "width": config.width,
                            "epochs": config.ssl_epochs, "max_train_samples": config.train_samples}, out / "squeeze")
        steps.append(Step("squeeze", squeeze.main, cfg))
        backbone = str(out / "squeeze" / BACKBONE_DIR)
    recovery_model = backbone
    if needs_probe or not config.backbone:
        cfg = stage_config(config, probe.ProbeConfig, "probe", {"backbone": backbone}, out / "probe")
        steps.append(Step("probe", probe.main, cfg))
        recovery_model = str(out / "probe" / MODEL_DIR)

    teacher, trained_teacher = config.teacher, False
    squeezed_supervised = config.squeeze_method == "supervised" and not config.backbone
    if teacher == "recovery" or (teacher == "supervised" and squeezed_supervised):
        teacher = recovery_model
    elif teacher == "supervised":
        cfg = stage_config(config, squeeze.SqueezeConfig, "squeeze",
                           {"method": "supervised", "arch": config.arch, "width": config.width,
                            "epochs": config.teacher_epochs, "max_train_samples": config.train_samples},
                           out / "teacher", key="teacher_squeeze")
        steps.append(Step("teacher", squeeze.main, cfg))
        teacher, trained_teacher = str(out / "teacher" / BACKBONE_DIR), True

    values = {"backbone": recovery_model, "ipc": config.ipc, "method": config.method}
    if config.iterations is not None:
        values["iterations"] = config.iterations
    distilled = str(out / "distilled")
    steps.append(Step("recover", recover.main, stage_config(config, recover.RecoverConfig, "recover", values,
                                                            Path(distilled))))
    scdd_modes = config.scdd_label_modes()
    wants_scdd = config.compare_scdd and config.method != "scdd"
    compare = wants_scdd and bool(scdd_modes)
    if wants_scdd and not scdd_modes:
        logger.warning("no SC-DD arm: it trains no stored-label students and --label_modes %s has no other mode",
                       list(config.label_modes))
    if compare:  # the paper's configuration beside the distilled set
        steps.append(Step("recover_scdd", recover.main, stage_config(
            config, recover.RecoverConfig, "recover", {**values, "method": "scdd"}, out / "distilled_scdd")))
    protocol = eval_protocol(config, image_size or 32)
    values = {"distilled": distilled, "teacher": teacher, "label_modes": list(config.label_modes),
              "seeds": list(config.seeds), "random_baseline": config.random_baseline, "arch": config.arch,
              "width": config.width, "eval_points": config.eval_points, **protocol}
    eval_cfg = stage_config(config, evaluate.EvaluateConfig, "evaluate", values, out / "evaluate")
    if "stored" in config.label_modes or config.push_to_hub:
        steps.append(Step("relabel", relabel.main, relabel_config(config, eval_cfg, num_classes or 1)))
    steps.append(Step("evaluate", evaluate.main, eval_cfg))
    if compare:
        steps.append(Step("evaluate_scdd", evaluate.main, dataclasses.replace(
            eval_cfg, distilled=str(out / "distilled_scdd"), random_baseline=False, full_data_baseline=False,
            label_modes=scdd_modes, save_student=False, output_dir=str(out / "evaluate_scdd"))))
    backbones, labels = [recovery_model], [config.squeeze_method if not config.backbone else "recovery"]
    if teacher != recovery_model and (trained_teacher or Path(teacher).exists()):
        backbones, labels = backbones + [teacher], labels + ["supervised teacher"]
    inspect = config_from_dict(inspect_bn.InspectBNConfig, {**_shared(config), "output_dir": str(out / "bn_stats"),
                                                             "backbones": backbones, "labels": labels})
    for step in steps:
        step.config.validate()
    inspect.validate()
    return Plan(steps, recovery_model, teacher, distilled, Step("inspect-bn", inspect_bn.main, inspect))


def relabel_config(config: PipelineConfig, eval_cfg: StageConfig, num_classes: int) -> StageConfig:
    """Relabel with evaluate's views, batch and temperature: one label epoch per student epoch when stored labels
    are evaluated, else (a push) 1/10 of them, cycled: a pushed set always carries its soft labels."""
    from .stages import relabel
    from .training.post_train import student_epochs

    views = {f.name: getattr(eval_cfg, f.name) for f in dataclasses.fields(PostTrainViewFields)}
    epochs = student_epochs(config.ipc * num_classes, eval_cfg.batch_size, eval_cfg.steps, eval_cfg.epochs)
    if "stored" not in config.label_modes:
        epochs = max(1, math.ceil(epochs / PUSHED_LABEL_EPOCHS_DIVISOR))
    values = {"distilled": eval_cfg.distilled, "teacher": eval_cfg.teacher, "epochs": epochs,
              "temperature": eval_cfg.temperature, **views}
    return stage_config(config, relabel.RelabelConfig, "relabel", values, Path(config.output_dir) / "relabel")


def _marker(out: Path, stage: str) -> Path:
    return out / "stages" / f"{stage}.json"


def run_stage(accelerator_state, out: Path, stage: str, fn, stage_cfg) -> Any:
    """Run ``fn(stage_cfg)`` unless a completion marker for the same config exists; returns its result."""
    marker = _marker(out, stage)
    wanted = json.loads(json.dumps(stage_cfg.result_fields(), default=str))
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("config") == wanted:
            logger.info("[pipeline] %s: done already (%s), skipping", stage, marker)
            return done.get("result")
    print(f"[pipeline] ===== {stage} =====", flush=True) if accelerator_state.is_main_process else None
    result = fn(stage_cfg)
    accelerator_state.wait_for_everyone()
    if accelerator_state.is_main_process:
        payload = {"config": wanted, "result": json.loads(json.dumps(result, default=str))}
        atomic_write_text(marker, json.dumps(payload, indent=2) + "\n")
    accelerator_state.wait_for_everyone()
    return json.loads(json.dumps(result, default=str))


def eval_protocol(config: PipelineConfig, image_size: int) -> dict[str, Any]:
    """The post-training protocol fields for relabel and evaluate (both must agree for stored labels)."""
    from .training.post_train import protocol_fields

    return {"steps": config.eval_steps, **protocol_fields(config.eval_protocol, image_size)}


@contextmanager
def cpu_cores(state, threads: int | None) -> Iterator[None]:
    """On CPU, give this process its share of the cores (``threads``, or cores / processes on this machine)
    while the stages run, then restore the previous thread count (the pipeline may run inside a notebook or a
    test process whose other work expects its own setting).

    ``accelerate launch`` gives every process one intra-op thread unless told otherwise, which leaves all but
    one core idle in the single-process default run (measured: 12 min 21 s wall for 11 min 52 s of CPU).
    """
    import torch

    previous = torch.get_num_threads()
    if state.device.type == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, local)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage; returns a summary with the artefact paths and the results table.

    Every stage's config is validated before the first stage runs, and ``pipeline_config.json`` is written
    when the whole run has finished: a run that fails leaves nothing that refuses the corrected command
    (each stage's own folder keeps its finished or resumable work).
    """
    from accelerate import PartialState

    from .models.loading import has_matching_classifier
    from .training.stage import load_stage_data

    config.validate()
    plan(config)  # every stage config valid, before any data is read
    out = Path(config.output_dir)
    check_config(config, out, PIPELINE_CONFIG)
    state = PartialState(cpu=use_cpu(config.cpu))
    data = load_stage_data(config)  # class names and image size only (no decoding, no statistics)
    needs_probe = not (config.backbone and has_matching_classifier(config.backbone, data.num_classes))
    stages = plan(config, needs_probe=needs_probe, image_size=data.image_size, num_classes=data.num_classes)
    summary: dict[str, Any] = {"dataset": data.name, "output_dir": str(out), "recovery_model": stages.recovery_model,
                               "teacher": stages.teacher, "distilled": stages.distilled}
    with cpu_cores(state, config.cpu_threads):
        results = {step.name: run_stage(state, out, step.name, step.main, step.config) for step in stages.steps}
    if "relabel" in results:
        summary["labels"] = results["relabel"]
    report = results["evaluate"]
    if "evaluate_scdd" in results:  # the paper's configuration, evaluated beside under the same protocol
        report = merge_reports(report, results["evaluate_scdd"], config.method)

    # the pictures a person looks at first
    if state.is_main_process:
        _collect_figures(out, Path(stages.distilled))
        stages.inspect.main(stages.inspect.config)
        from .stages.evaluate import report_markdown

        results_md = report_markdown(report, f"{data.name}, IPC {config.ipc}: distilled sets vs a random real subset")
        atomic_write_text(out / "results.md", results_md)
        print(_artefact_listing(out, stages.recovery_model, stages.teacher, stages.distilled) + "\n\n" + results_md,
              flush=True)
    state.wait_for_everyone()

    if config.push_to_hub:
        summary["pushed"] = push_artefacts(state, config, stages.recovery_model, stages.distilled,
                                           out / "evaluate" / "student")
    summary["results"] = (report or {}).get("results")
    if state.is_main_process:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        record_config(config, out, PIPELINE_CONFIG)
    return summary


def merge_reports(report: dict[str, Any], scdd_report: dict[str, Any], method: str) -> dict[str, Any]:
    """One table: the distilled set's rows named by its method, the paper configuration's rows as ``scdd``."""
    def renamed(results: dict[str, Any], name: str) -> dict[str, Any]:
        return {key.replace("distilled/", f"{name}/"): row for key, row in results.items()}

    scdd_rows = {k: v for k, v in scdd_report["results"].items() if k.startswith("distilled/")}
    return {**report, "results": {**renamed(report["results"], method), **renamed(scdd_rows, "scdd")}}


def _artefact_listing(out: Path, recovery_model, teacher, distilled) -> str:
    lines = ["", "# SC-DD pipeline finished", "", f"- recovery model: `{recovery_model}`", f"- teacher: `{teacher}`",
             f"- distilled set (load_dataset-ready): `{distilled}`", f"- image grid: `{out / 'grid.png'}`",
             f"- BN statistics: `{out / 'bn_stats' / 'bn_stats.png'}`",
             f"- results: `{out / 'results.md'}`, curves `{out / 'evaluate' / 'curves.png'}`"]
    return "\n".join(lines)


def _collect_figures(out: Path, distilled: Path) -> None:
    grid = distilled / "grid.png"
    if grid.exists():
        shutil.copyfile(grid, out / "grid.png")


def push_artefacts(state, config: PipelineConfig, recovery_model, distilled, student_dir: Path) -> dict[str, str]:
    """Push backbone, distilled set (with its soft labels) and student under ``config.push_to_hub`` (a namespace).

    The folders are uploaded as they are, so each keeps the card its stage wrote (probe accuracy, provenance,
    evaluation results).
    """
    from .hub.push import push_distilled, push_model_folder

    if not state.is_main_process:
        return {}
    namespace = config.push_to_hub.strip("/")
    name = f"{Path(str(config.dataset)).name.replace('_', '-')}-scdd-ipc{config.ipc}"
    repos = {"backbone": f"{namespace}/{name}-backbone", "distilled": f"{namespace}/{name}"}
    push_model_folder(str(recovery_model), repos["backbone"])
    push_distilled(str(distilled), repos["distilled"])
    if (student_dir / "model.safetensors").exists():
        repos["student"] = f"{namespace}/{name}-student"
        push_model_folder(str(student_dir), repos["student"])
    return repos


def main(config: PipelineConfig) -> dict[str, Any]:
    """``hf-scdd pipeline [--config configs/fashion_mnist.yaml] [--field value ...]``."""
    return run(config)
