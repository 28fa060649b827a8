"""How well each real-image set covers its classes in an observer's feature space: the k-medoids objective that
``--selection kmeans`` approximates and ``--selection kmedoids`` optimises, measured on the sets of
``benchmarks/fidelity.py``, next to a random draw of the same size.

    python benchmarks/coverage.py --dataset cifar10 --ipc 50 --sets hf_scdd_teacher hf_scdd_teacher_kmedoids hf_scdd

For every class: the mean, over the class's training images, of the cosine similarity of each image's pooled
features to its most similar chosen image of the class (1 would be a set containing every image). The figure
says whether a selection does what it is built for; whether that trains better students is the fidelity
table's question, not this one's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_scdd.data.loading import load_image_dataset
from hf_scdd.formats.distilled_set import INPUTS_DIR
from hf_scdd.models.loading import load_backbone
from hf_scdd.synthesis.inputs import INIT_FILE
from hf_scdd.synthesis.selection import observer_outputs, select_real_images
from hf_scdd.training.accelerator import Precision

from common import DATASETS, HERE, hardware_line


def class_coverage(points: torch.Tensor, picks: torch.Tensor) -> float:
    """Mean over unit-norm ``points`` (one class) of the cosine similarity to the most similar of ``picks``."""
    return float((points @ picks.T).max(dim=1).values.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--sets", nargs="+", required=True, help="real-image rows of results/fidelity/<dataset>/sets/")
    p.add_argument("--observer", default="teacher", help="model folder under results/models/<dataset>/")
    p.add_argument("--random_draws", type=int, default=3, help="seeded random subsets of the same size to compare")
    p.add_argument("--root", default=str(HERE / "results"))
    args = p.parse_args()
    setup = DATASETS[args.dataset]
    observer = load_backbone(str(Path(args.root) / "models" / args.dataset / args.observer))
    source = load_image_dataset(setup.dataset).source("train")
    images, labels = source.indexed_images(), torch.as_tensor(source.labels())
    features = observer_outputs(observer, images, features=True, precision=Precision.resolve("auto", "cpu"))
    classes = sorted(set(labels.tolist()))
    unit = F.normalize(features.float(), dim=1)
    print(f"{args.dataset}, IPC {args.ipc}, the {args.observer}'s pooled features; machine: {hardware_line()}\n")
    print("| set | mean coverage | worst class |\n|---|---:|---:|")

    def report(name: str, chosen: torch.Tensor) -> None:
        """``chosen``: [K, IPC] training-split indices, class k's in row k."""
        scores = [class_coverage(unit[labels == c], unit[chosen[k]]) for k, c in enumerate(classes)]
        print(f"| {name} | {sum(scores) / len(scores):.4f} | {min(scores):.4f} |")

    for name in args.sets:
        folder = Path(args.root) / "fidelity" / args.dataset / "sets" / f"{name}-ipc{args.ipc}"
        report(name, load_file(str(folder / INPUTS_DIR / INIT_FILE))["train_indices"])
    for seed in range(args.random_draws):  # the library's own seeded random draw (``--selection random``)
        report(f"random draw {seed}", select_real_images(None, images, labels, num_classes=len(classes),
                                                          ipc=args.ipc, how="random", seed=seed))


if __name__ == "__main__":
    main()
