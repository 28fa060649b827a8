"""The quality guard of bf16 recovery: one recover config run in fp32 and in bf16, students trained alike.

    python benchmarks/precision_guard.py --dataset fashion_mnist --ipc 10      # both methods, seeds 0 1 2

For each method the set is recovered twice from the SSL recovery model (MoCo v2 + calibrated probe), with
``--mixed_precision no`` and ``--mixed_precision bf16`` and otherwise the same config (seed, group size):

* ``scdd`` (the paper's configuration): 500 Adam steps from noise, where bf16 rounding in the forward pass
  and the input gradient accumulates over the whole optimisation;
* ``hf_scdd`` (the library's default): bf16 reaches only the observer's pooled features that k-means chooses
  the real images on; when both precisions choose the same images, the sets are identical and so are their
  students (same seeds), and no students are trained for it.

SC-DD's optimisation amplifies every rounding difference over its 500 steps: the bf16 set differs from the
fp32 one by about 31 / 255 per pixel, as much as an independent set. One bf16 set against one fp32 set
therefore mixes the precision's effect with the spread between sets. The floor measures that spread: a third
SC-DD set in fp32 from recovery seed 1 (another noise draw), paired with the fp32 set (seed 0) by student seed.
A bf16 difference within the floor is not a precision effect. (Two units per forward pass, ``--group_size 2``,
was tried as a pure-rounding floor first: on this CPU its set is bit-identical to one-by-one recovery.)

Both sets of a method train students with the same seeds (paired), hard labels and online KD from the
supervised teacher, under ``hf-scdd evaluate``'s protocol; the students' own precision is the same for both
(``--mixed_precision auto``), so only the recovery precision differs. The guard of the precision issue: the
mean paired difference is at most 1 point of top-1. Models come from the fidelity benchmark's folder
(trained first if missing); everything is resumable. Writes ``benchmarks/results/precision_guard/<dataset>-ipc<N>.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from common import DATASETS, HERE, evaluate_command, hardware_line, read_results, run_all, stage_command, \
    start_benchmark, write_report

PRECISIONS = ("no", "bf16")
FLOOR = "no-seed1"
"""The floor's variant: fp32 from recovery seed 1 (SC-DD only: a selection has no steps to amplify rounding)."""
VARIANTS = {
    "no": dict(mixed_precision="no", group_size=1, seed=0),
    "bf16": dict(mixed_precision="bf16", group_size=1, seed=0),
    FLOOR: dict(mixed_precision="no", group_size=1, seed=1),
}
METHODS = ("scdd", "hf_scdd")
MODES = ("hard", "online")
GUARD = 1.0  # points of top-1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (paired)")
    p.add_argument("--steps", type=int, default=3000, help="student optimiser steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def set_dir(work: Path, method: str, variant: str) -> Path:
    return work / f"{method}-{variant}" / "distilled"


def variants(method: str) -> tuple[str, ...]:
    """fp32 and bf16 for every method, and the floor for the method that optimises images."""
    return PRECISIONS + ((FLOOR,) if method == "scdd" else ())


def recover_all(args, setup, models: Path, work: Path) -> None:
    commands = [
        (f"recover_{method}_{variant}", stage_command(
            "recover", backbone=models / "probe_mocov2", dataset=setup.dataset, ipc=args.ipc, method=method,
            output_dir=set_dir(work, method, variant), report_to="none", **VARIANTS[variant]))
        for method in args.methods for variant in variants(method)
    ]
    run_all(commands, work / "logs", workers=args.workers)


def set_pixels(folder: Path) -> tuple[np.ndarray, list[int]]:
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.load_dataset(str(folder), split="train")
    return np.stack([np.asarray(im, dtype=np.int16) for im in ds["image"]]), list(ds["label"])


def compare_sets(work: Path, method: str, pair: tuple[str, str] = PRECISIONS) -> dict:
    """How far the second set of ``pair`` is from the first (fp32): identical or not, mean |pixel
    difference|, and for real starting images the share of chosen images both chose."""
    (a, labels_a), (b, labels_b) = (set_pixels(set_dir(work, method, p)) for p in pair)
    out = {"identical": bool(labels_a == labels_b and np.array_equal(a, b)),
           "mean_abs_pixel_difference": float(np.abs(a - b).mean())}
    inits = [set_dir(work, method, p) / "inputs" / "init_images.safetensors" for p in pair]
    if all(path.exists() for path in inits):
        from safetensors.torch import load_file

        first, second = (load_file(str(path))["train_indices"] for path in inits)
        shared = [len(set(x.tolist()) & set(y.tolist())) for x, y in zip(first, second)]
        out["shared_selection"] = sum(shared) / first.numel()
    return out


def evaluate_all(args, setup, models: Path, work: Path, methods: list[str]) -> None:
    commands = [
        (f"evaluate_{method}_{variant}", evaluate_command(
            setup, set_dir(work, method, variant), work / f"{method}-{variant}" / "evaluate", models / "teacher",
            modes=list(MODES), seeds=args.seeds, steps=args.steps, random_baseline=False))
        for method in methods for variant in variants(method)
    ]
    run_all(commands, work / "logs", workers=args.workers)


def per_seed(work: Path, method: str, variant: str, mode: str) -> dict[int, float]:
    runs = read_results(work / f"{method}-{variant}" / "evaluate")["runs"][f"distilled/{mode}"]
    return {int(r["seed"]): 100 * r["final_top1"] for r in runs}


def paired_rows(work: Path, method: str, pair: tuple[str, str] = PRECISIONS) -> list[dict]:
    """Per label mode: the second variant of ``pair`` minus the first, paired by student seed."""
    rows = []
    for mode in MODES:
        first, second = (per_seed(work, method, p, mode) for p in pair)
        seeds = sorted(set(first) & set(second))
        diffs = [second[s] - first[s] for s in seeds]
        mean = statistics.mean(diffs)
        rows.append(dict(mode=mode, pair=list(pair), seeds=seeds, first=[first[s] for s in seeds],
                         second=[second[s] for s in seeds],
                         diff_mean=mean, diff_std=statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                         holds=abs(mean) <= GUARD))
    return rows


def row_line(method: str, row: dict, verdict: str) -> str:
    cells = [" / ".join(f"{v:.2f}" for v in row[p]) for p in ("first", "second")]
    return (f"| {method} | {'KD' if row['mode'] == 'online' else 'hard'} | {cells[0]} | {cells[1]} | "
            f"{row['diff_mean']:+.2f} ± {row['diff_std']:.2f} | {verdict} |")


def set_note(comparison: dict) -> str:
    if comparison["identical"]:
        return "identical"
    note = f"mean |pixel difference| {comparison['mean_abs_pixel_difference']:.2f} / 255"
    if "shared_selection" in comparison:
        note += f", {100 * comparison['shared_selection']:.0f} % of chosen images shared"
    return note


def report(args, comparisons: dict[str, dict], rows: dict[str, list[dict]], floor: dict | None = None) -> str:
    lines = [
        f"# bf16 vs fp32 recovery on {args.dataset}, IPC {args.ipc}", "",
        f"Machine: {hardware_line()}. Students: {args.steps} steps, seeds {args.seeds} (paired), precision auto. "
        f"Guard: |mean(bf16 − fp32)| ≤ {GUARD:g} point.", "",
        "| method | labels | fp32 top-1 (per seed) | bf16 top-1 (per seed) | bf16 − fp32 (mean ± std) | guard |",
        "|---|---|---|---|---:|---|",
    ]
    for method, comparison in comparisons.items():
        if comparison["identical"]:
            lines.append(f"| {method} | hard, KD | identical sets: the students are the same | | 0 | holds |")
        for row in rows.get(method, []):
            lines.append(row_line(method, row, "holds" if row["holds"] else "FAILS"))
    lines += ["", "Sets (bf16 vs fp32): " + "; ".join(f"{m}: {set_note(c)}" for m, c in comparisons.items()) + "."]
    if floor:
        lines += [
            "", "Floor: the same SC-DD config in fp32 from recovery seed 1, paired with the fp32 set (recovery "
            "seed 0) by student seed: the spread between two sets that share everything but the noise draw.", "",
            "| method | labels | fp32, seed 0 (per student seed) | fp32, seed 1 (per student seed) | seed 1 − seed 0 "
            "(mean ± std) | |",
            "|---|---|---|---|---:|---|",
            *(row_line("scdd", row, "") for row in floor["rows"]),
            "", f"Sets (seed 1 vs seed 0): scdd: {set_note(floor['sets'])}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    setup, models, work = start_benchmark("precision_guard", args)
    recover_all(args, setup, models, work)
    comparisons = {method: compare_sets(work, method) for method in args.methods}
    differing = [m for m in args.methods if not comparisons[m]["identical"]]
    evaluate_all(args, setup, models, work, differing)
    rows = {method: paired_rows(work, method) for method in differing}
    floor = None
    if "scdd" in args.methods:
        pair = ("no", FLOOR)
        floor = {"sets": compare_sets(work, "scdd", pair), "rows": paired_rows(work, "scdd", pair)}
    text = report(args, comparisons, rows, floor)
    write_report(work, text, {"args": vars(args), "sets": comparisons, "rows": rows, "floor": floor,
                              "hardware": hardware_line()})


if __name__ == "__main__":
    main()
