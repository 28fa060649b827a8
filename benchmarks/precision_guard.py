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

With ``--recovery_seeds 0 1 2`` each precision recovers one SC-DD set per seed, and the guard compares the
precisions over those sets: for each recovery seed, bf16 minus fp32 on the same student seeds, then the mean
over sets, with the spread between the fp32 sets beside it. That averages the precision's effect over noise
draws instead of reading it off one pair of sets (the floor then needs no extra set):

    python benchmarks/precision_guard.py --dataset fashion_mnist --ipc 10 --methods scdd --recovery_seeds 0 1 2 --seeds 0

Both sets of a method train students with the same seeds (paired), hard labels and online KD from the
supervised teacher, under ``hf-scdd evaluate``'s protocol; the students' own precision is the same for both
(``--mixed_precision auto``), so only the recovery precision differs. The guard of the precision issue: the
mean paired difference is at most 1 point of top-1. Models come from the fidelity benchmark's folder
(trained first if missing); everything is resumable. Writes
``benchmarks/results/precision_guard/<dataset>-ipc<N>.{md,json}`` (``...-recovery_seeds012.{md,json}`` for several
recovery seeds).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from common import DATASETS, HERE, evaluate_command, hardware_line, read_results, run_all, stage_command, \
    mode_label, start_benchmark, unrefined_medoids, write_report

PRECISIONS = ("no", "bf16")
FLOOR = "no-seed1"
"""The floor's variant: fp32 from recovery seed 1 (SC-DD only: a selection has no steps to amplify rounding)."""


def variant_name(precision: str, recovery_seed: int) -> str:
    """``no``/``bf16`` for recovery seed 0 (the first guard's folders), ``<precision>-seed<N>`` otherwise."""
    return precision if recovery_seed == 0 else f"{precision}-seed{recovery_seed}"


def variant_fields(variant: str) -> dict:
    """The recover fields of a variant name: its precision and recovery seed, one unit per forward pass."""
    precision, _, seed = variant.partition("-seed")
    return dict(mixed_precision=precision, group_size=1, seed=int(seed or 0))


METHODS = ("scdd", "hf_scdd")
MODES = ("hard", "online")
GUARD = 1.0  # points of top-1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="student seeds (paired)")
    p.add_argument("--recovery_seeds", type=int, nargs="+", default=[0],
                   help="SC-DD sets per precision, one per recovery seed; with several, the guard compares the "
                        "precisions over sets and the floor is the spread between the fp32 sets")
    p.add_argument("--steps", type=int, default=3000, help="student optimiser steps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def seeds_tag(seeds: list[int]) -> str:
    """``012`` for seeds 0 1 2: the suffix of folder, log and report names."""
    return "".join(map(str, seeds))


def method_fields(method: str, setup) -> dict:
    """``hf_scdd`` is guarded as a selection (what bf16 changes there: the observer's features k-means reads),
    pinned to the fields its sets were recovered with; its refinement optimises images, which ``auto`` keeps in
    fp32 since the SC-DD guard."""
    return unrefined_medoids(setup) if method == "hf_scdd" else dict(method=method)


def set_dir(work: Path, method: str, variant: str) -> Path:
    return work / f"{method}-{variant}" / "distilled"


def variants(method: str, recovery_seeds: list[int]) -> list[str]:
    """fp32 and bf16 for every method (a selection at recovery seed 0 only: it has no noise draw), and for
    SC-DD one pair per recovery seed, plus the floor's fp32 seed-1 set when there is only one seed."""
    if method != "scdd":
        return list(PRECISIONS)
    names = [variant_name(p, r) for r in recovery_seeds for p in PRECISIONS]
    return names + ([FLOOR] if recovery_seeds == [0] else [])


def recover_all(args, setup, models: Path, work: Path) -> None:
    commands = [
        (f"recover_{method}_{variant}", stage_command(
            "recover", backbone=models / "probe_mocov2", dataset=setup.dataset, ipc=args.ipc,
            output_dir=set_dir(work, method, variant), report_to="none", **method_fields(method, setup),
            **variant_fields(variant)))
        for method in args.methods for variant in variants(method, args.recovery_seeds)
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


def evaluate_dir(work: Path, method: str, variant: str, seeds: list[int]) -> Path:
    """A set's evaluation for some student seeds (the first guard's ``evaluate/`` holds seeds 0 1 2)."""
    return work / f"{method}-{variant}" / ("evaluate" if seeds == [0, 1, 2] else f"evaluate-seeds{seeds_tag(seeds)}")


def evaluate_all(args, setup, models: Path, work: Path, methods: list[str]) -> None:
    """Every set's students for the requested seeds, except sets whose evaluations already hold them all."""
    commands = [
        (f"evaluate_{method}_{variant}_seeds{seeds_tag(args.seeds)}", evaluate_command(
            setup, set_dir(work, method, variant), evaluate_dir(work, method, variant, args.seeds),
            models / "teacher", modes=list(MODES), seeds=args.seeds, steps=args.steps, random_baseline=False))
        for method in methods for variant in variants(method, args.recovery_seeds)
        if not all(set(args.seeds) <= set(per_seed(work, method, variant, mode)) for mode in MODES)
    ]
    run_all(commands, work / "logs", workers=args.workers)


def per_seed(work: Path, method: str, variant: str, mode: str) -> dict[int, float]:
    """Student seed → final top-1 (%), merged over every evaluation of the set (``evaluate*/``)."""
    out = {}
    for folder in sorted((work / f"{method}-{variant}").glob("evaluate*")):
        if (folder / "results.json").exists():
            runs = read_results(folder)["runs"][f"distilled/{mode}"]
            out.update({int(r["seed"]): 100 * r["final_top1"] for r in runs})
    return out


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


def across_sets(work: Path, recovery_seeds: list[int], student_seeds: list[int]) -> list[dict]:
    """Per label mode, over SC-DD's sets: each recovery seed's bf16 − fp32 (mean over the student seeds both
    sets trained), the mean and std of those per-set differences, and the std between the fp32 sets' own
    means, the spread any single comparison of two sets carries."""
    rows = []
    for mode in MODES:
        differences, fp32_means = [], []
        for r in recovery_seeds:
            fp32, bf16 = (per_seed(work, "scdd", variant_name(p, r), mode) for p in PRECISIONS)
            seeds = [s for s in student_seeds if s in fp32 and s in bf16]
            differences.append(statistics.mean(bf16[s] - fp32[s] for s in seeds))
            fp32_means.append(statistics.mean(fp32[s] for s in seeds))
        mean = statistics.mean(differences)
        rows.append(dict(mode=mode, recovery_seeds=recovery_seeds, student_seeds=student_seeds,
                         differences=differences, diff_mean=mean, diff_std=statistics.stdev(differences),
                         fp32_set_means=fp32_means, fp32_set_std=statistics.stdev(fp32_means),
                         holds=abs(mean) <= GUARD))
    return rows


def across_lines(rows: list[dict]) -> list[str]:
    seeds = " / ".join(map(str, rows[0]["recovery_seeds"]))
    lines = [
        "", f"Over SC-DD sets: one set per precision and recovery seed ({seeds}), student seeds "
        f"{rows[0]['student_seeds']}; per set, bf16 − fp32 on the same student seeds.", "",
        f"| labels | bf16 − fp32 per set (recovery seed {seeds}) | mean ± std over sets | fp32 sets' top-1 "
        "(per set) | std between fp32 sets | guard |",
        "|---|---|---:|---|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {mode_label(row['mode'])} | {' / '.join(f'{d:+.2f}' for d in row['differences'])} | "
            f"{row['diff_mean']:+.2f} ± {row['diff_std']:.2f} | {' / '.join(f'{m:.2f}' for m in row['fp32_set_means'])} | "
            f"{row['fp32_set_std']:.2f} | {'holds' if row['holds'] else 'FAILS'} |")
    return lines


def row_line(method: str, row: dict, verdict: str) -> str:
    cells = [" / ".join(f"{v:.2f}" for v in row[p]) for p in ("first", "second")]
    return (f"| {method} | {mode_label(row['mode'])} | {cells[0]} | {cells[1]} | "
            f"{row['diff_mean']:+.2f} ± {row['diff_std']:.2f} | {verdict} |")


def set_note(comparison: dict) -> str:
    if comparison["identical"]:
        return "identical"
    note = f"mean |pixel difference| {comparison['mean_abs_pixel_difference']:.2f} / 255"
    if "shared_selection" in comparison:
        note += f", {100 * comparison['shared_selection']:.0f} % of chosen images shared"
    return note


def report(args, comparisons: dict[str, dict], rows: dict[str, list[dict]], floor: dict | None = None,
           across: list[dict] | None = None) -> str:
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
    if across:
        lines += across_lines(across)
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    setup, models, work = start_benchmark("precision_guard", args)
    recover_all(args, setup, models, work)
    comparisons = {method: compare_sets(work, method) for method in args.methods}
    differing = [m for m in args.methods if not comparisons[m]["identical"]]
    evaluate_all(args, setup, models, work, differing)
    rows = {method: paired_rows(work, method) for method in differing}
    floor = across = None
    if "scdd" in args.methods and len(args.recovery_seeds) > 1:
        across = across_sets(work, args.recovery_seeds, args.seeds)
    elif "scdd" in args.methods:
        pair = ("no", FLOOR)
        floor = {"sets": compare_sets(work, "scdd", pair), "rows": paired_rows(work, "scdd", pair)}
    text = report(args, comparisons, rows, floor, across)
    report_name = work if args.recovery_seeds == [0] else work.with_name(
        f"{work.name}-recovery_seeds{seeds_tag(args.recovery_seeds)}")
    write_report(report_name, text, {"args": vars(args), "sets": comparisons, "rows": rows, "floor": floor,
                              "across_sets": across, "hardware": hardware_line()})


if __name__ == "__main__":
    main()
