"""Tune recovery by what matters: student top-1 against a random real subset, under the library's protocol.

    python benchmarks/recover_sweep.py --dataset fashion_mnist --ipc 10          # every candidate, one seed
    python benchmarks/recover_sweep.py --dataset fashion_mnist --confirm 2       # + the best 2 with 3 seeds
    python benchmarks/recover_sweep.py --candidates kmeans kmeans_clean_200      # a subset

Each candidate is a set of ``hf-scdd recover`` fields on top of the SSL recovery model (MoCo v2 + calibrated
probe). Its distilled set trains students with hard labels and with online KD from the supervised teacher
(``hf-scdd evaluate``, the library's protocol: a budget of optimiser steps, pad-crop + flip + CutMix, T = 4);
the score is the mean of the two top-1s. The first candidate's evaluation also trains the random real subset
baseline. Candidates starting from real images are compared on the same starting images (the same selection
and seed), so their differences are paired. Models are trained first if missing (benchmarks/common.py), and
everything is resumable. Writes ``benchmarks/results/sweep/<dataset>-ipc<N>.{md,json}``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from hf_scdd.training.post_train import STUDENT_LR

from common import (
    DATASETS, HERE, STUDENT_MODES, evaluate_command, hardware_line, modes_suffix, read_results, run_all,
    stage_command, start_benchmark, write_report,
)


def refined(iterations: int, lr: float, r_bn: float = 0.01) -> dict:
    """The k-means medoids refined for ``iterations`` Adam steps at ``lr`` towards clean-image BN statistics."""
    return dict(init="real", selection="kmeans", iterations=iterations, lr=lr, r_bn=r_bn, bn_targets="clean")


# name -> recover fields (besides backbone, dataset, ipc, seed). "scdd" is the paper's configuration. A value
# "@name" is the benchmark's model folder of that name (e.g. the supervised teacher as the selection observer).
CANDIDATES: dict[str, dict] = {
    "scdd": dict(method="scdd"),
    "random_real": dict(init="real", selection="random", iterations=0),
    "kmeans": dict(init="real", selection="kmeans", iterations=0),
    "strata": dict(init="real", selection="strata", iterations=0),
    "herding": dict(init="real", selection="herding", iterations=0),
    "confident": dict(init="real", selection="confident", iterations=0),
    "kmeans_margin": dict(init="real", selection="kmeans_margin", iterations=0),
    "kcenter": dict(init="real", selection="kcenter", iterations=0),
    "kmeans_teacher": dict(init="real", selection="kmeans", iterations=0, selection_model="@teacher"),
    "kmedoids": dict(init="real", selection="kmedoids", iterations=0),
    "kmedoids_teacher": dict(init="real", selection="kmedoids", iterations=0, selection_model="@teacher"),
    "strata_teacher": dict(init="real", selection="strata", iterations=0, selection_model="@teacher"),
    "kmeans_mosaic2": dict(init="real", selection="kmeans", iterations=0, patches_per_side=2),
    "random_mosaic2": dict(init="real", selection="random", iterations=0, patches_per_side=2),
    "kmeans_running_200": dict(init="real", selection="kmeans", iterations=200, lr=0.05, r_bn=0.01,
                               bn_targets="running"),
    "kmeans_clean_200": refined(200, 0.05),
    "kmeans_clean_100_lr003": refined(100, 0.003),
    "kmeans_clean_100_lr01": refined(100, 0.01),
    "kmeans_class_200": {**refined(200, 0.05), "class_bn_weight": 0.5},
    "kmeans_clean_bn_200": refined(200, 0.02, r_bn=0.1),
    "kmeans_clean_crop_200": {**refined(200, 0.05), "random_crop": True, "crop_scale_min": 0.5, "crop_curriculum": True},
    # How far the light refinement (kmeans_clean_100_lr003) should go, and which of its two terms does the work:
    **{f"kmeans_clean_{steps}_{tag}": refined(steps, lr) for steps, lr, tag in (
        (200, 0.003, "lr003"), (400, 0.003, "lr003"), (200, 0.01, "lr01"), (400, 0.01, "lr01"), (100, 0.03, "lr03"))},
    "kmeans_clean_100_lr003_bn01": refined(100, 0.003, r_bn=0.1),
    "kmeans_ce_100_lr003": dict(init="real", selection="kmeans", iterations=100, lr=0.003, r_bn=0.0),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="seed of the recovery and of the single-seed students")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES))
    p.add_argument("--steps", type=int, default=3000, help="student optimiser steps")
    p.add_argument("--label_modes", nargs="+", default=STUDENT_MODES, choices=STUDENT_MODES,
                   help="student label modes (a screen of one cell can train only its mode; the score is the mean "
                        "of the modes trained)")
    p.add_argument("--confirm", type=int, default=0, help="re-evaluate the best N candidates with 3 seeds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def model_paths(fields: dict, models: Path) -> dict:
    """The candidate's fields with every "@name" value replaced by the model folder ``models/name``."""
    return {k: models / v[1:] if isinstance(v, str) and v.startswith("@") else v for k, v in fields.items()}


def evaluate_candidates(args, setup, models: Path, work: Path, names: list[str], seeds: list[int], tag: str) -> None:
    """Recover every candidate's set, then evaluate them (the first one with the random baseline)."""
    recover = [
        (f"recover_{name}", stage_command("recover", backbone=models / "probe_mocov2", dataset=setup.dataset,
                                          ipc=args.ipc, seed=args.seed, output_dir=work / name / "distilled",
                                          report_to="none", **model_paths(CANDIDATES[name], models)))
        for name in names
    ]
    run_all(recover, work / "logs", workers=args.workers)
    evaluate = [
        (f"evaluate_{name}_{tag}", evaluate_command(
            setup, work / name / "distilled", work / name / f"evaluate_{tag}", models / "teacher",
            modes=args.label_modes, seeds=seeds, steps=args.steps, random_baseline=(i == 0)))
        for i, name in enumerate(names)
    ]
    run_all(evaluate, work / "logs", workers=args.workers)


def score(results: dict, key: str) -> tuple[float, float, float]:
    """(hard, KD, the mean of those trained) final top-1 in percent of one set in an evaluation; NaN for a label
    mode the evaluation did not train."""
    found = {mode: 100 * results["results"][f"{key}/{mode}"]["final_top1_mean"]
             for mode in ("hard", "online") if f"{key}/{mode}" in results["results"]}
    return found.get("hard", math.nan), found.get("online", math.nan), sum(found.values()) / len(found)


def percent(value: float) -> str:
    """A top-1 cell: two decimals, or – for a label mode not trained."""
    return "–" if math.isnan(value) else f"{value:.2f}"


def table(args, work: Path, names: list[str], tag: str) -> tuple[str, list[dict]]:
    first = read_results(work / names[0] / f"evaluate_{tag}")
    rows = [dict(name="random real subset (evaluate's baseline)", config={}, scores=score(first, "random"))]
    for name in names:
        rows.append(dict(name=name, config=CANDIDATES[name], scores=score(read_results(work / name / f"evaluate_{tag}"), "distilled")))
    base = rows[0]["scores"]
    lines = [
        f"{args.dataset}, IPC {args.ipc}, recovery seed {args.seed}, students: {tag}, {args.steps} steps at AdamW "
        f"lr {STUDENT_LR}; "
        f"machine: {hardware_line()}", "",
        "| candidate | hard | KD | mean | mean − random | recover fields |", "|---|---:|---:|---:|---:|---|",
    ]
    for row in sorted(rows, key=lambda r: -r["scores"][2]):
        hard, kd, mean = row["scores"]
        fields = ", ".join(f"{k}={v}" for k, v in row["config"].items())
        lines.append(f"| {row['name']} | {percent(hard)} | {percent(kd)} | {mean:.2f} | {mean - base[2]:+.2f} | {fields} |")
    return "\n".join(lines) + "\n", rows


def main() -> None:
    args = parse_args()
    setup, models, work = start_benchmark("sweep", args)
    only = modes_suffix(args.label_modes)
    tag = f"seed{args.seed}{only}"
    evaluate_candidates(args, setup, models, work, args.candidates, [args.seed], tag)
    text, rows = table(args, work, args.candidates, tag)
    if args.confirm:
        best = [r["name"] for r in sorted(rows[1:], key=lambda r: -r["scores"][2])[: args.confirm]]
        evaluate_candidates(args, setup, models, work, best, [0, 1, 2], f"seeds012{only}")
        text += "\n" + table(args, work, best, f"seeds012{only}")[0]
    write_report(work, text, {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
