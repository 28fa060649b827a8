"""How much a KD teacher has to say about a distilled set: its accuracy, its probability of the set's label and
the entropy of its softened labels (T = 4, the student protocol's temperature) on every image, next to the same
figures for the recovery model.

    python benchmarks/teacher_confidence.py --dataset cifar10 --sets hf_scdd-ipc10 hf_scdd_cifar-ipc10 hf_scdd_observers-ipc10

A set optimised through the teacher itself (``recover --observers <teacher>``) is one the teacher is sure of: its
soft labels approach one-hot and a KD student learns little more than from hard labels. This prints that
directly, for the sets of ``benchmarks/fidelity.py`` (``results/fidelity/<dataset>/sets/<name>``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from hf_scdd.data.tensors import normalize
from hf_scdd.formats.distilled_set import distilled_images
from hf_scdd.hub.loading import load_distilled
from hf_scdd.models.loading import load_backbone

from common import DATASETS, HERE, hardware_line


@torch.no_grad()
def confidence(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """Top-1 on the set, mean p(label), and mean entropy (nats) of softmax(logits / T)."""
    logits = model(normalize(pixels, model.mean, model.std)).float()
    soft = F.softmax(logits / temperature, dim=1)
    return {
        "top1": float((logits.argmax(1) == labels).float().mean()),
        "p_label": float(F.softmax(logits, 1)[torch.arange(len(labels)), labels].mean()),
        "entropy": float(-(soft * soft.clamp_min(1e-12).log()).sum(1).mean()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--sets", nargs="+", required=True, help="set folders under results/fidelity/<dataset>/sets/")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--root", default=str(HERE / "results"))
    args = p.parse_args()
    models = Path(args.root) / "models" / args.dataset
    observers = {"teacher": load_backbone(str(models / "teacher")),
                 "recovery model": load_backbone(str(models / "probe_mocov2"))}
    print(f"{args.dataset}, T = {args.temperature:g}; machine: {hardware_line()}\n")
    print("| set | model | top-1 on the set | mean p(label) | mean entropy at T (nats) |\n|---|---|---:|---:|---:|")
    channels, size = int(getattr(observers["teacher"], "in_channels", 3)), int(observers["teacher"].image_size)
    for name in args.sets:
        dataset, _, _ = load_distilled(Path(args.root) / "fidelity" / args.dataset / "sets" / name)
        pixels, labels = distilled_images(dataset, channels, size)  # uint8: normalize scales it
        for tag, observer in observers.items():
            row = confidence(observer, pixels, labels, args.temperature)
            print(f"| {name} | {tag} | {100 * row['top1']:.1f} % | {row['p_label']:.3f} | {row['entropy']:.3f} |")


if __name__ == "__main__":
    main()
