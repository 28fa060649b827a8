"""``hf-scdd evaluate``: post-train a student from scratch on a distilled set and report real test top-1.

The protocol follows SC-DD's post-training (method.md §4, §8.6): KL(batchmean) between the student's and the
teacher's temperature-softened distributions on the *same* augmented, mixed batch, AdamW (lr 1e-3, wd 0.01)
with a cosine schedule, batch 64. Three label modes:

* ``online``: the teacher runs on every mixed batch (SC-DD as released);
* ``stored``: the ``hf-scdd relabel`` files, replayed view for view (FKD; no teacher at training time);
* ``hard``: cross-entropy on the (mixed) class ids, no teacher (for HLR).

Every mode trains on views drawn from an :class:`~hf_scdd.core.augment.EpochPlan` (a function of
``(seed, epoch)``), so the modes differ only in where the targets come from. The same protocol runs on a random
real subset with the same images per class (IOR = distilled − random) and optionally on the full training set
with hard labels (HLR = full − distilled, anchors.md §3.1). Accuracy is always over the full test split
(``count == len(test)`` is recorded); the last epoch's value is the headline, the best over evaluated epochs
a secondary number (never the reference's running-prefix maximum).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .configs import ConfigError, StageConfig, atomic_write_text, check_or_write_config
from .core.augment import EpochPlan, make_epoch_plan, render_batch
from .data import ImageData, normalize, per_class_subset
from .hub import load_distilled
from .relabel import (
    InMemoryLabels,
    PostTrainViewFields,
    SoftLabelStore,
    distilled_images,
    teacher_fn,
    uses_cpu,
)

logger = logging.getLogger(__name__)

LABEL_MODES = ("online", "stored", "hard")


@dataclass
class EvaluateConfig(PostTrainViewFields, StageConfig):
    """``hf-scdd evaluate``: a student trained on the distilled set, with same-protocol baselines."""

    distilled: str | None = field(default=None, metadata={"help": "Distilled set: folder or Hub dataset id."})
    revision: str | None = field(default=None, metadata={"help": "Revision of a Hub distilled set."})
    teacher: str | None = field(default=None, metadata={"help": "Teacher for online labels: folder or Hub id."})
    teacher_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub teacher."})
    soft_labels: str | None = field(default=None, metadata={"help": "Soft-label folder (default: the distilled set's)."})
    label_modes: list[str] = field(
        default_factory=lambda: ["online"], metadata={"help": "Any of 'online', 'stored', 'hard' (several allowed)."}
    )
    arch: str = field(default="resnet18", metadata={"help": "Student architecture (hf_scdd ResNet family)."})
    width: int = field(default=64, metadata={"help": "Student first-stage width (64 = torchvision)."})
    stem: str = field(default="cifar", metadata={"help": "Student stem: 'cifar' or 'imagenet'."})
    epochs: int = field(default=300, metadata={"help": "Post-training epochs (SC-DD: 300 ImageNet, 200 CIFAR)."})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (SC-DD: 1e-3)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (SC-DD: 0.01)."})
    decay_all_params: bool = field(
        default=False,
        metadata={"help": "Decay BN/bias too (SC-DD CIFAR); default decays only conv/linear weights (ImageNet)."},
    )
    temperature: float = field(default=20.0, metadata={"help": "KD temperature (SC-DD: 20 ImageNet, 30 CIFAR)."})
    t2_factor: bool = field(default=False, metadata={"help": "Multiply the KD loss by T^2 (SC-DD: no)."})
    teacher_train_mode: bool = field(
        default=False, metadata={"help": "Teacher BN in train mode (SC-DD CIFAR quirk); default eval mode."}
    )
    eval_every: int = field(default=10, metadata={"help": "Evaluate on the full test split every N epochs and last."})
    eval_batch_size: int = field(default=512, metadata={"help": "Test batch size per process."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Student seeds (mean ± std)."})
    random_baseline: bool = field(
        default=True, metadata={"help": "Same protocol on a random real subset with the same images per class."}
    )
    full_data_baseline: bool = field(
        default=False, metadata={"help": "Hard-label run on the full real training set (for HLR)."}
    )
    full_data_epochs: int | None = field(default=None, metadata={"help": "Epochs of the full-data run (default: --epochs)."})
    save_student: bool = field(default=True, metadata={"help": "Save the first seed's student as a Hub-ready model."})


# --------------------------------------------------------------------------------------------------------
# Losses and targets
# --------------------------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float, t2: bool = False) -> torch.Tensor:
    """KL(batchmean) between softmax(student/T) and the teacher's softened distribution (SC-DD, no CE)."""
    loss = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), teacher_probs, reduction="batchmean")
    return loss * temperature**2 if t2 else loss


def mixed_hard_loss(logits: torch.Tensor, y_own: torch.Tensor, y_partner: torch.Tensor, lam: float) -> torch.Tensor:
    """Cross-entropy on mixed class ids: lam·CE(own) + (1 − lam)·CE(partner)."""
    return lam * F.cross_entropy(logits, y_own) + (1.0 - lam) * F.cross_entropy(logits, y_partner)


class TargetSource:
    """Supplies each epoch's plan and each batch's loss for one label mode."""

    def __init__(
        self,
        mode: str,
        *,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        view_spec,
        seed: int,
        temperature: float,
        t2: bool = False,
        teacher=None,
        store=None,
    ):
        if mode not in LABEL_MODES:
            raise ConfigError(f"label mode must be one of {LABEL_MODES}, got {mode!r}")
        if mode == "online" and teacher is None:
            raise ConfigError("label mode 'online' needs a teacher: pass --teacher FOLDER_OR_REPO")
        if mode == "stored" and store is None:
            raise ConfigError("label mode 'stored' needs soft labels: run `hf-scdd relabel` or pass --soft_labels")
        self.mode, self.images, self.labels = mode, images, labels
        self.batch_size, self.view_spec, self.seed = batch_size, view_spec, seed
        self.temperature, self.t2, self.teacher, self.store = temperature, t2, teacher, store
        self.compact = store.compact_logits() if mode == "stored" and _is_compact(store) else None
        self.plan: EpochPlan | None = None
        self.stored_logits: Any = None

    def start_epoch(self, epoch: int) -> None:
        if self.mode == "stored" and self.compact is None:
            record = self.store.epoch(epoch)
            self.plan, self.stored_logits = record.plan, record
        else:
            self.plan = make_epoch_plan(
                len(self.images), self.batch_size, self.view_spec, self.seed, epoch, self.images.shape[-1]
            )

    def loss(self, model, b: int, preprocess, device) -> torch.Tensor:
        plan = self.plan
        pixels = render_batch(self.images, plan, b, device)
        logits = model(preprocess(pixels)).float()
        slots = plan.batch_slots(b)
        own, partner = plan.order[slots].long(), plan.order[plan.mix_index[slots].long()].long()
        lam = float(plan.mix_lambda[b])
        T = self.temperature
        if self.mode == "hard":
            return mixed_hard_loss(logits, self.labels[own].to(device), self.labels[partner].to(device), lam)
        if self.mode == "online":
            probs = F.softmax(self.teacher(pixels) / T, dim=1)
        elif self.compact is not None:
            probs = lam * F.softmax(self.compact[own] / T, 1) + (1 - lam) * F.softmax(self.compact[partner] / T, 1)
        else:
            probs = F.softmax(self.stored_logits.batch_logits(b) / T, dim=1)
        return kd_loss(logits, probs.to(device), T, self.t2)


def _is_compact(store) -> bool:
    return getattr(store, "mode", None) == "compact" or (
        isinstance(store, InMemoryLabels) and store.format.mode == "compact"
    )


# --------------------------------------------------------------------------------------------------------
# One student
# --------------------------------------------------------------------------------------------------------


def build_student(config: EvaluateConfig, data: ImageData):
    from .models import ResNet

    return ResNet(
        arch=config.arch, num_classes=data.num_classes, stem=config.stem, in_channels=data.channels,
        width=config.width, image_size=data.image_size, mean=list(data.mean), std=list(data.std),
        class_names=data.class_names,
    )


def param_groups(model: torch.nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """SC-DD ImageNet: decay only multi-dimensional weights (conv/linear); BN and biases get none."""
    if decay_all:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "weight" in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim > 1 and "weight" in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def train_student(
    config: EvaluateConfig,
    *,
    data: ImageData,
    images: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    seed: int,
    run_dir: str | os.PathLike,
    teacher: torch.nn.Module | None = None,
    store=None,
    epochs: int | None = None,
    name: str = "student",
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train one student on ``images`` (uint8) with one label mode and seed; returns (result, student).

    Resumable: checkpoints under ``run_dir/checkpoints`` (removed when the run finishes).
    """
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from .core.loops import (
        IndexDataset, Precision, cosine_schedule, evaluate_top1, finish_trackers, make_accelerator,
        remove_checkpoints, train,
    )

    epochs = int(epochs or config.epochs)
    accelerator = make_accelerator(
        run_dir, cpu=config.cpu, report_to=config.report_to, run_name=name,
        config={**config.to_dict(), "label_mode": mode, "run_seed": seed, "run_epochs": epochs},
    )
    precision = Precision.resolve(config.mixed_precision, accelerator.device)
    device = accelerator.device
    set_seed(seed)
    student = build_student(config, data)
    batch_size = config.batch_size
    if mode == "stored" and not _is_compact(store) and store.format.batch_size != batch_size:
        raise ConfigError(
            f"the soft labels were made with batch size {store.format.batch_size} but --batch_size is {batch_size}; "
            "stored per-batch labels only fit the same batches: use the same --batch_size (or relabel)"
        )
    teacher_call = None
    if mode == "online":
        teacher = teacher.to(device)
        teacher_call = teacher_fn(teacher, data.mean, data.std, train_mode=config.teacher_train_mode)
    source = TargetSource(
        mode, images=images.to(device), labels=labels, batch_size=batch_size, view_spec=config.view_spec(),
        seed=seed, temperature=config.temperature, t2=config.t2_factor, teacher=teacher_call, store=store,
    )
    num_batches = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(param_groups(student, config.weight_decay, config.decay_all_params), lr=config.lr)
    scheduler = cosine_schedule(optimizer, total_steps=epochs * num_batches)
    loader = DataLoader(IndexDataset(num_batches), batch_size=1, shuffle=False)
    student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)
    test_images, test_labels = data.tensors("test")

    def preprocess(pixels: torch.Tensor) -> torch.Tensor:
        return normalize(pixels, data.mean, data.std)

    def step_fn(batch: torch.Tensor) -> dict[str, torch.Tensor]:
        with precision.autocast():
            return {"loss": source.loss(student, int(batch[0]), preprocess, device)}

    def on_epoch_end(epoch: int) -> dict[str, float]:
        if (epoch + 1) % max(1, config.eval_every) and epoch + 1 != epochs:
            return {}
        top1, count = evaluate_top1(
            accelerator, student, test_images, test_labels, lambda x: normalize(x, data.mean, data.std),
            batch_size=config.eval_batch_size, return_count=True, precision=precision,
        )
        return {"top1": top1, "test_count": count}

    progress = train(
        accelerator, model=student, optimizer=optimizer, scheduler=scheduler, loader=loader, step_fn=step_fn,
        epochs=epochs, output_dir=run_dir, on_epoch_start=source.start_epoch, on_epoch_end=on_epoch_end, desc=name,
        precision=precision,
    )
    result = summarize_history(progress.history)
    result.update(mode=mode, seed=seed, epochs=epochs, num_images=len(images), test_size=len(test_labels),
                  steps=progress.global_step, precision=precision.name)
    remove_checkpoints(accelerator, run_dir)
    model = accelerator.unwrap_model(student)
    if accelerator.is_main_process:
        atomic_write_text(Path(run_dir) / "result.json", json.dumps(result, indent=2) + "\n")
    finish_trackers(accelerator)
    accelerator.free_memory()
    return result, model


def summarize_history(history: list[dict]) -> dict[str, Any]:
    """Final-epoch and best-over-evaluated-epochs top-1, each over the full test set."""
    evaluated = [r for r in history if "top1" in r]
    if not evaluated:
        raise RuntimeError("no evaluated epoch in the history (the last epoch is always evaluated)")
    best = max(evaluated, key=lambda r: r["top1"])
    return {
        "final_top1": evaluated[-1]["top1"],
        "final_epoch": evaluated[-1]["epoch"],
        "best_top1": best["top1"],
        "best_epoch": best["epoch"],
        "test_count": evaluated[-1]["test_count"],
        "curve": [[r["epoch"], r["top1"]] for r in evaluated],
        "loss": [[r["epoch"], r["loss"]] for r in history],
    }


# --------------------------------------------------------------------------------------------------------
# The report: distilled vs baselines, seeds, IOR/HLR
# --------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(runs: dict[str, list[dict]]) -> dict[str, dict[str, Any]]:
    """Per run group ``set/mode``: mean ± std of final and best top-1 over seeds."""
    table = {}
    for key, results in runs.items():
        final, best = mean_std([r["final_top1"] for r in results]), mean_std([r["best_top1"] for r in results])
        table[key] = {
            "final_top1_mean": final[0], "final_top1_std": final[1],
            "best_top1_mean": best[0], "best_top1_std": best[1],
            "seeds": [r["seed"] for r in results], "epochs": results[0]["epochs"],
            "num_images": results[0]["num_images"], "test_count": results[0]["test_count"],
        }
    return table


def protocol_metrics(table: dict[str, dict[str, Any]], modes: list[str]) -> dict[str, float]:
    """IOR per label mode (distilled − random, same protocol) and HLR (full hard − distilled hard), final epoch."""
    metrics = {}
    for mode in modes:
        if f"distilled/{mode}" in table and f"random/{mode}" in table:
            metrics[f"IOR/{mode}"] = table[f"distilled/{mode}"]["final_top1_mean"] - table[f"random/{mode}"]["final_top1_mean"]
    if "full/hard" in table and "distilled/hard" in table:
        metrics["HLR"] = table["full/hard"]["final_top1_mean"] - table["distilled/hard"]["final_top1_mean"]
    return metrics


def markdown_report(table: dict[str, dict[str, Any]], metrics: dict[str, float], title: str) -> str:
    lines = [
        f"# {title}", "",
        "Top-1 (%) on the full real test split; mean ± std over seeds. *final* = last epoch (headline), "
        "*best* = best evaluated epoch (secondary).", "",
        "| set | labels | images | epochs | final top-1 | best top-1 | seeds |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, row in table.items():
        subset, mode = key.split("/")
        lines.append(
            f"| {subset} | {mode} | {row['num_images']} | {row['epochs']} | "
            f"{100 * row['final_top1_mean']:.2f} ± {100 * row['final_top1_std']:.2f} | "
            f"{100 * row['best_top1_mean']:.2f} ± {100 * row['best_top1_std']:.2f} | "
            f"{' '.join(map(str, row['seeds']))} |"
        )
    if metrics:
        lines += ["", "| metric | value (points) |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:+.2f} |" for k, v in metrics.items()]
        lines += ["", "IOR = distilled − random real subset (same protocol); HLR = full data − distilled, hard labels."]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Mean test top-1 per evaluated epoch for every run group (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, results in runs.items():
        epochs = [e for e, _ in results[0]["curve"]]
        means = [statistics.fmean(r["curve"][i][1] for r in results) * 100 for i in range(len(epochs))]
        ax.plot(epochs, means, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def images_per_class(labels: torch.Tensor, num_classes: int) -> int:
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) != int(counts.max()):
        logger.warning("distilled set has unequal images per class (%s); random baseline uses the rounded mean",
                       counts.tolist())
    return max(1, round(len(labels) / num_classes))


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

    from .data import load_image_dataset

    from .core.loops import Precision

    state = PartialState(cpu=uses_cpu(config.cpu))  # as make_accelerator decides, or ranks see 1 process
    modes = list(dict.fromkeys(config.label_modes))
    for mode in modes:
        if mode not in LABEL_MODES:
            raise ConfigError(f"--label_modes: unknown mode {mode!r}; choose from {LABEL_MODES}")
    precision = Precision.resolve(config.mixed_precision, state.device)
    output = Path(config.output_dir)
    if state.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        check_or_write_config(config, output, runtime={"precision": precision.name})
    state.wait_for_everyone()
    if data is None:
        data = load_image_dataset(config.dataset, image_column=config.image_column, label_column=config.label_column)
    labels_dir = None
    if distilled is None:
        if not config.distilled:
            raise ConfigError("evaluate needs --distilled FOLDER_OR_REPO")
        distilled, labels_dir, _ = load_distilled(config.distilled, config.revision)
    _check_classes(distilled, data)
    images, labels = distilled_images(distilled, data.channels, data.image_size)
    needs_teacher = "online" in modes or ("stored" in modes and config.random_baseline)
    if teacher is None and needs_teacher and config.teacher:
        from .models import load_backbone

        teacher = load_backbone(config.teacher, revision=config.teacher_revision)
    if "stored" in modes and store is None:
        folder = config.soft_labels or labels_dir
        if folder is None:
            raise ConfigError("label mode 'stored' but the distilled set has no soft_labels/; run `hf-scdd relabel`")
        store = SoftLabelStore(folder, num_images=len(images), num_classes=data.num_classes)

    groups = _run_groups(config, data, images, labels, modes, teacher, store)
    runs: dict[str, list[dict]] = {}
    student_saved = None
    for key, spec in groups.items():
        for seed in config.seeds:
            run_dir = output / "runs" / key.replace("/", "-") / f"seed{seed}"
            done = run_dir / "result.json"
            if done.exists():
                result = json.loads(done.read_text())
            else:
                result, model = train_student(config, data=data, seed=seed, run_dir=run_dir, name=key.replace("/", "-"), **spec(seed))
                if student_saved is None and key.startswith("distilled/") and config.save_student:
                    student_saved = model
            runs.setdefault(key, []).append(result)
    table = aggregate(runs)
    metrics = protocol_metrics(table, modes)
    report = {"config": config.to_dict(), "dataset": data.name, "test_size": len(data.tensors("test")[1]),
              "num_processes": state.num_processes, "results": table, "metrics": metrics, "runs": runs}
    if store is not None:
        report["label_bytes"] = store.nbytes() if hasattr(store, "nbytes") else None
    if state.is_main_process:
        atomic_write_text(output / "results.json", json.dumps(report, indent=2, default=str) + "\n")
        atomic_write_text(output / "results.md", markdown_report(table, metrics, f"Evaluation of {config.distilled}"))
        plot_curves(runs, output / "curves.png")
        if student_saved is not None:
            save_student(student_saved, config, data, report, output / "student", modes[0])
    state.wait_for_everyone()
    return report


def _check_classes(distilled, data: ImageData) -> None:
    names = list(distilled.features["label"].names) if hasattr(distilled.features["label"], "names") else None
    if names is not None and names != data.class_names:
        raise ConfigError(
            f"the distilled set's classes {names[:5]}... differ from the test dataset's {data.class_names[:5]}...: "
            "pass the --dataset the set was distilled from"
        )


def _run_groups(config, data, images, labels, modes, teacher, store) -> dict[str, Any]:
    """``set/mode`` → a function of the seed giving :func:`train_student`'s data arguments."""
    groups: dict[str, Any] = {}
    for mode in modes:
        groups[f"distilled/{mode}"] = lambda seed, m=mode: dict(
            images=images, labels=labels, mode=m, teacher=teacher, store=store
        )
    if config.random_baseline:
        train_images, train_labels = data.tensors("train")
        ipc = images_per_class(labels, data.num_classes)
        for mode in modes:
            if mode == "stored" and teacher is None:
                logger.warning("no --teacher: skipping the random-subset baseline for stored labels")
                continue

            def random_spec(seed, m=mode):
                idx = per_class_subset(train_labels, ipc, seed=seed, num_classes=data.num_classes)
                sub_images, sub_labels = train_images[idx], train_labels[idx]
                sub_store = None
                if m == "stored":  # the same label format, made in memory for this subset
                    fmt = _replace_count(store.format, len(idx))
                    device = next(teacher.parameters()).device
                    sub_store = InMemoryLabels(sub_images, teacher_fn(teacher, data.mean, data.std), fmt, device)
                return dict(images=sub_images, labels=sub_labels, mode=m, teacher=teacher, store=sub_store)

            groups[f"random/{mode}"] = random_spec
    if config.full_data_baseline:
        train_images, train_labels = data.tensors("train")
        groups["full/hard"] = lambda seed: dict(
            images=train_images, labels=train_labels, mode="hard", epochs=config.full_data_epochs or config.epochs
        )
    return groups


def _replace_count(fmt, num_images: int):
    from dataclasses import replace

    return replace(fmt, num_images=num_images)


# --------------------------------------------------------------------------------------------------------
# The student as a Hub model
# --------------------------------------------------------------------------------------------------------


def save_student(model, config: EvaluateConfig, data: ImageData, report: dict, folder: Path, mode: str) -> None:
    """Save the student (safetensors + config) with its card; push it when ``--push_to_hub`` is set."""
    from .cards import StudentCardData, render_student_card

    row = report["results"][f"distilled/{mode}"]
    model.update_training_info(
        method="sc-dd-post-training", dataset=data.name, distilled=config.distilled, teacher=config.teacher,
        label_mode=mode, epochs=config.epochs, temperature=config.temperature, batch_size=config.batch_size,
        final_top1_mean=row["final_top1_mean"], final_top1_std=row["final_top1_std"],
    )
    model.save_pretrained(folder)
    card_data = StudentCardData(
        arch=config.arch, stem=config.stem, width=config.width, num_classes=data.num_classes, dataset=data.name,
        distilled=config.distilled, teacher=config.teacher, label_mode=mode, epochs=config.epochs,
        temperature=config.temperature, batch_size=config.batch_size, mix=config.mix, seeds=list(config.seeds),
        final_top1_mean=row["final_top1_mean"], final_top1_std=row["final_top1_std"],
        best_top1_mean=row["best_top1_mean"], best_top1_std=row["best_top1_std"],
        test_size=report["test_size"], metrics=report["metrics"],
        results_markdown=markdown_report(report["results"], report["metrics"], "Results").split("\n", 2)[2],
    )
    render_student_card(card_data).save(str(folder / "README.md"))
    if config.push_to_hub:
        from .hub import push_model_folder

        push_model_folder(folder, config.push_to_hub, commit_message="hf-scdd evaluate student")


def main(config: EvaluateConfig) -> dict[str, Any]:
    """``hf-scdd evaluate --distilled FOLDER_OR_REPO [--teacher ...] [--label_modes online stored hard]``."""
    report = run_evaluation(config)
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(markdown_report(report["results"], report["metrics"], f"Evaluation of {config.distilled}"))
    return report
