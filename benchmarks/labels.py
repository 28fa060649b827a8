"""Soft-label storage vs accuracy on the built-in Fashion-MNIST (issue 6 acceptance).

Question: how many bytes do stored soft labels need, and what does compressing them cost in top-1?
Reference = FKD-style stored labels with full fp16 logits for every training epoch. Goal: >= 10x fewer label
bytes at <= 1 point top-1 cost.

Honest accounting: "label bytes" are the whole ``soft_labels/`` files (augmentation record + logits +
safetensors headers), not only the logits. With 10 classes, top-k alone cannot reach 10x (the augmentation
record is ~17 B/image/epoch vs 20 B of fp16 logits), so the candidates also store fewer label epochs
(cycled during training, ``--epochs`` of relabel < training epochs), int8 logits, or one label per image.

Set-up (CPU, ~6 minutes): the supervised teacher from ``benchmarks/artifacts/squeeze_supervised`` (resnet10 width
16, the same teacher the fidelity benchmark uses; trained with ``benchmarks/squeeze_probe.py``'s settings when
missing, as ``benchmarks/artifacts/`` is not in git), a random real subset with 10 images per class as the labelled
set (labels are measured independently of how the images were made), students resnet10 width 8 trained for
EPOCHS epochs with batch 64, pad-crop + flip + CutMix, T = 4, 3 seeds; top-1 on the full 10k test split, final
epoch. Every variant trains the SAME students (same seeds, same views: the stored plans are generated from the
same relabel seed), so the cost of a compressed variant is reported as the mean paired difference to the
reference, which is far less noisy than comparing two means.

Run: ``python benchmarks/labels.py [--out benchmarks/results/labels]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_scdd.data import load_image_dataset, per_class_subset
from hf_scdd.formats.soft_labels import SoftLabelStore
from hf_scdd.stages.evaluate import EvaluateConfig
from hf_scdd.stages.relabel import RelabelConfig, relabel
from hf_scdd.training.post_train import train_student

EPOCHS = 40
SEEDS = (0, 1, 2)
TEACHER = Path(__file__).resolve().parent / "artifacts" / "squeeze_supervised" / "backbone"
TEMPERATURE = 4.0
IPC = 10

# name -> relabel overrides (None = online teacher, no files)
VARIANTS: dict[str, dict | None] = {
    "online teacher": None,
    "stored fp16, all epochs (reference)": dict(epochs=EPOCHS),
    "stored top-2 fp16, all epochs": dict(epochs=EPOCHS, topk=2),
    "stored int8, all epochs": dict(epochs=EPOCHS, label_dtype="int8"),
    "stored fp16, 2 epochs cycled": dict(epochs=EPOCHS // 10),
    "stored int8, 4 epochs cycled": dict(epochs=EPOCHS // 5, label_dtype="int8"),
    "compact fp16 (1 label/image)": dict(mode="compact"),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/labels")
    parser.add_argument("--teacher", default=str(TEACHER))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hf_scdd_labels_"))
    torch.set_num_threads(2)
    start = time.time()
    data = load_image_dataset()
    train_images, train_labels = data.tensors("train")

    base = dict(arch="resnet10", width=8, batch_size=64, temperature=TEMPERATURE, cpu=True, report_to="none",
                eval_points=1, save_student=False, crop="pad", mix="cutmix")
    from hf_scdd.models import load_backbone
    from hf_scdd.training.accelerator import make_accelerator
    from hf_scdd.training.evaluation import evaluate_top1

    if args.teacher == str(TEACHER) and not TEACHER.exists():  # benchmarks/artifacts is not in git
        from squeeze_probe import squeezed_backbone

        squeezed_backbone("supervised")
    teacher = load_backbone(args.teacher).eval()
    teacher_top1 = evaluate_top1(make_accelerator(work / "teacher", cpu=True, report_to="none"), teacher,
                                 data.source("test"), data.normalize)
    teacher_result = {"final_top1": teacher_top1}
    print(f"teacher top-1 {100 * teacher_top1:.2f} ({time.time() - start:.0f}s)")

    subset = per_class_subset(train_labels, IPC, seed=123, num_classes=10)
    images, labels = train_images[subset], train_labels[subset]
    image_bytes = len(images) * images[0].numel()  # raw uint8 pixels (PNG would be smaller still)
    student_cfg = EvaluateConfig(**base, epochs=EPOCHS)
    rows = []
    for name, overrides in VARIANTS.items():
        store, label_bytes, logit_bytes = None, 0, 0
        if overrides is not None:
            labels_dir = work / name.replace(" ", "_").replace(",", "").replace("/", "-") / "soft_labels"
            rcfg = RelabelConfig(distilled="random-subset", teacher="quick-teacher", batch_size=64,
                                 temperature=TEMPERATURE, cpu=True, seed=5, crop="pad", mix="cutmix",
                                 **overrides)
            relabel(rcfg, images=images, teacher=teacher, labels_dir=labels_dir, image_bytes=image_bytes)
            store = SoftLabelStore(labels_dir, num_images=len(images), num_classes=10)
            label_bytes = store.nbytes()
            logit_bytes = _logit_bytes(labels_dir)
        mode = "online" if overrides is None else "stored"
        finals = []
        for seed in SEEDS:
            result, _ = train_student(
                student_cfg, data=data, images=images, labels=labels, mode=mode, seed=seed,
                run_dir=work / "runs" / f"{len(rows)}-{seed}", teacher=teacher, store=store, name=f"{mode}-{seed}",
            )
            finals.append(100 * result["final_top1"])
        rows.append(dict(name=name, top1_mean=statistics.fmean(finals), top1_std=statistics.stdev(finals),
                         top1=finals, label_bytes=label_bytes, logit_bytes=logit_bytes))
        print(f"{name}: {rows[-1]['top1_mean']:.2f} ± {rows[-1]['top1_std']:.2f}, {label_bytes} B "
              f"({time.time() - start:.0f}s)", flush=True)

    ref = next(r for r in rows if "reference" in r["name"])
    for r in rows:
        r["bytes_ratio"] = ref["label_bytes"] / r["label_bytes"] if r["label_bytes"] else None
        paired = [a - b for a, b in zip(ref["top1"], r["top1"])]
        r["top1_cost"] = statistics.fmean(paired)
        r["top1_cost_std"] = statistics.stdev(paired) if len(paired) > 1 else 0.0
    report = dict(epochs=EPOCHS, seeds=list(SEEDS), temperature=TEMPERATURE, ipc=IPC, image_bytes=image_bytes,
                  teacher_top1=teacher_result["final_top1"], seconds=time.time() - start, rows=rows)
    (out / "labels.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (out / "labels.md").write_text(table)
    print(table)


def _logit_bytes(labels_dir: Path) -> int:
    """Bytes of the label tensors alone (logits, indices, scales, tails), without the augmentation record."""
    from safetensors import safe_open

    total = 0
    for path in labels_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                if key in ("logits", "indices", "scale", "tail"):
                    t = f.get_tensor(key)
                    total += t.numel() * t.element_size()
    return total


def markdown(report: dict) -> str:
    lines = [
        f"Fashion-MNIST, random real subset IPC {report['ipc']} (100 images, {report['image_bytes']:,} B of raw "
        f"pixels), supervised teacher top-1 {100 * report['teacher_top1']:.1f} %, student resnet10-w8, "
        f"{report['epochs']} epochs, batch 64, pad-crop + flip + CutMix, T = {report['temperature']}, seeds "
        f"{report['seeds']}, final-epoch top-1 on the full 10k test split; cost = mean ± std of the paired "
        f"(same seed) difference to the reference. Run time {report['seconds'] / 60:.1f} min.",
        "",
        "| labels | top-1 (%) | paired cost vs ref (points) | label bytes (files) | of which logits | ref/bytes |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        ratio = f"{r['bytes_ratio']:.1f}x" if r["bytes_ratio"] else "teacher at train time"
        lines.append(
            f"| {r['name']} | {r['top1_mean']:.2f} ± {r['top1_std']:.2f} | {r['top1_cost']:+.2f} ± {r['top1_cost_std']:.2f} | "
            f"{r['label_bytes']:,} | {r['logit_bytes']:,} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
