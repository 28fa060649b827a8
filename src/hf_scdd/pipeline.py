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
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .configs import ConfigError, PostTrainViewFields, StageConfig, check_or_write_config, config_from_dict
from .utils import atomic_write_text, use_cpu

logger = logging.getLogger(__name__)


@dataclass
class PipelineConfig(StageConfig):
    """The whole SC-DD run; defaults distil the built-in Fashion-MNIST in about 10 minutes on 2 CPU cores."""

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
    teacher: str = field(
        default="supervised",
        metadata={"help": "Relabel/KD teacher: 'supervised' (train one, as SC-DD uses a supervised teacher), "
                  "'recovery' (the probed recovery model), or a Hub id / folder."},
    )
    ipc: int = field(default=10, metadata={"help": "Distilled images per class."})
    method: str = field(
        default="hf_scdd",
        metadata={"help": "Recovery method of the distilled set: 'hf_scdd' (this library's: selected real images "
                  "refined against clean-image statistics) or 'scdd' (the paper's configuration)."},
    )
    compare_scdd: bool = field(
        default=True,
        metadata={"help": "Also distil with the paper's configuration (--method scdd) and train its students "
                  "beside, under the same protocol (when --method is not scdd already)."},
    )
    iterations: int | None = field(default=None, metadata={"help": "Recovery iterations (recover preset if unset)."})
    label_modes: list[str] = field(
        default_factory=lambda: ["online"],
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
            value = yaml.safe_load(value) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"--{stage} must be a mapping of {stage} config fields, got {value!r}")
        return dict(value)


# --------------------------------------------------------------------------------------------------------


def _shared(config: PipelineConfig) -> dict[str, Any]:
    """The StageConfig fields every stage inherits from the pipeline (push_to_hub is handled here, per artefact)."""
    keys = [f.name for f in dataclasses.fields(StageConfig) if f.name not in ("output_dir", "push_to_hub")]
    return {k: getattr(config, k) for k in keys}


def stage_config(config: PipelineConfig, cls: type, stage: str, values: dict[str, Any], folder: Path, key: str | None = None):
    """Build one stage's config: shared fields, pipeline-derived values, then the user's overrides."""
    merged = {**_shared(config), **values, "output_dir": str(folder), **config.overrides(key or stage)}
    return config_from_dict(cls, merged)


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


def run(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage; returns a summary with the artefact paths and the results table."""
    from accelerate import PartialState

    from .models.loading import has_matching_classifier
    from .stages import evaluate, inspect_bn, probe, recover, relabel, squeeze
    from .training.stage import load_stage_data

    state = PartialState(cpu=use_cpu(config.cpu))
    out = Path(config.output_dir)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        check_or_write_config(config, out, "pipeline_config.json")
    state.wait_for_everyone()
    data = load_stage_data(config)  # class names and image size only (no decoding, no statistics)
    summary: dict[str, Any] = {"dataset": data.name, "output_dir": str(out)}

    # 1. squeeze + probe -> the recovery model
    if config.backbone:
        backbone = config.backbone
    else:
        cfg = stage_config(config, squeeze.SqueezeConfig, "squeeze",
                           {"method": config.squeeze_method, "arch": config.arch, "width": config.width},
                           out / "squeeze")
        backbone = run_stage(state, out, "squeeze", squeeze.main, cfg)
    if config.backbone and has_matching_classifier(config.backbone, data.num_classes):
        recovery_model = config.backbone
    else:
        cfg = stage_config(config, probe.ProbeConfig, "probe", {"backbone": str(backbone)}, out / "probe")
        recovery_model = run_stage(state, out, "probe", probe.main, cfg)
    summary["recovery_model"] = recovery_model

    # 2. the relabel / KD teacher
    if config.teacher == "recovery":
        teacher = recovery_model
    elif config.teacher == "supervised":
        if config.squeeze_method == "supervised" and not config.backbone:
            teacher = recovery_model
        else:
            cfg = stage_config(config, squeeze.SqueezeConfig, "squeeze",
                               {"method": "supervised", "arch": config.arch, "width": config.width},
                               out / "teacher", key="teacher_squeeze")
            teacher = run_stage(state, out, "teacher", squeeze.main, cfg)
    else:
        teacher = config.teacher
    summary["teacher"] = teacher

    # 3. recover: the distilled set, and the paper's configuration beside it
    values = {"backbone": str(recovery_model), "ipc": config.ipc, "method": config.method}
    if config.iterations is not None:
        values["iterations"] = config.iterations
    cfg = stage_config(config, recover.RecoverConfig, "recover", values, out / "distilled")
    distilled = run_stage(state, out, "recover", recover.main, cfg)
    summary["distilled"] = distilled
    scdd_set = None
    if config.compare_scdd and config.method != "scdd":
        cfg = stage_config(config, recover.RecoverConfig, "recover", {**values, "method": "scdd"},
                           out / "distilled_scdd")
        scdd_set = run_stage(state, out, "recover_scdd", recover.main, cfg)

    # 4. relabel (only when stored labels are evaluated): one label epoch per post-training epoch
    protocol = eval_protocol(config, data.image_size)
    values = {"distilled": str(distilled), "teacher": str(teacher), "label_modes": list(config.label_modes),
              "seeds": list(config.seeds), "random_baseline": config.random_baseline, "arch": config.arch,
              "width": config.width, "eval_points": config.eval_points, **protocol}
    eval_cfg = stage_config(config, evaluate.EvaluateConfig, "evaluate", values, out / "evaluate")
    if "stored" in config.label_modes:
        from .training.post_train import student_epochs

        views = {f.name: getattr(eval_cfg, f.name) for f in dataclasses.fields(PostTrainViewFields)}
        label_epochs = student_epochs(config.ipc * data.num_classes, eval_cfg.batch_size, eval_cfg.steps,
                                      eval_cfg.epochs)
        cfg = stage_config(config, relabel.RelabelConfig, "relabel",
                           {"distilled": str(distilled), "teacher": str(teacher), "epochs": label_epochs,
                            "temperature": eval_cfg.temperature, **views}, out / "relabel")
        summary["labels"] = run_stage(state, out, "relabel", relabel.main, cfg)

    # 5. evaluate: the distilled set vs a random real subset (and the paper's configuration), same protocol
    report = run_stage(state, out, "evaluate", evaluate.main, eval_cfg)
    if scdd_set is not None:
        cfg = dataclasses.replace(eval_cfg, distilled=str(scdd_set), random_baseline=False, full_data_baseline=False,
                                  label_modes=[m for m in config.label_modes if m != "stored"], save_student=False,
                                  output_dir=str(out / "evaluate_scdd"))
        scdd_report = run_stage(state, out, "evaluate_scdd", evaluate.main, cfg)
        report = merge_reports(report, scdd_report, config.method)

    # 6. the pictures a person looks at first
    if state.is_main_process:
        _collect_figures(out, Path(str(distilled)))
        backbones = [str(recovery_model)] + ([str(teacher)] if teacher != recovery_model and Path(str(teacher)).exists() else [])
        labels = [config.squeeze_method if not config.backbone else "recovery"] + (["supervised teacher"] if len(backbones) > 1 else [])
        bn_cfg = config_from_dict(inspect_bn.InspectBNConfig, {**_shared(config), "output_dir": str(out / "bn_stats"),
                                                                "backbones": backbones, "labels": labels})
        inspect_bn.main(bn_cfg)
        from .stages.evaluate import report_markdown

        results_md = report_markdown(report, f"{data.name}, IPC {config.ipc}: distilled sets vs a random real subset")
        atomic_write_text(out / "results.md", results_md)
        print(_artefact_listing(out, recovery_model, teacher, distilled) + "\n\n" + results_md, flush=True)
    state.wait_for_everyone()

    if config.push_to_hub:
        summary["pushed"] = push_artefacts(state, config, recovery_model, distilled, out / "evaluate" / "student")
    summary["results"] = (report or {}).get("results")
    if state.is_main_process:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
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
