"""Fidelity: do distilled sets beat a random real subset of the same size, under one protocol you can trust?

    python benchmarks/fidelity.py --dataset fashion_mnist              # the whole table for one dataset
    python benchmarks/fidelity.py --dataset cifar10                    # needs ../shared/data/cifar10
    python benchmarks/fidelity.py --dataset cifar10 --part models      # named parts: models, sets, students, table

Rows, each named by the recover config it ran (all on the same dataset, students and protocol):

* **SC-DD (paper)**: MoCo v2 backbone + calibrated linear probe, ``--method scdd`` (noise, running statistics,
  the dataset preset's SC-DD hyper-parameters);
* **SRe²L, probe head**: the supervised backbone of the same architecture and budget + the same kind of probe,
  the same recover settings (the head is the only other difference from SC-DD, so the comparison is fair);
* **SRe²L, end-to-end head**: the supervised model as trained (SRe²L's own recovery model);
* **hf_scdd**: the library's method on the SSL recovery model as it runs on 28×28 grey data (``--method
  hf_scdd`` there: real images chosen by k-means on the SSL features, kept unrefined);
* **hf_scdd_strata**: the same k-means clusters, a seeded random member of each instead of the medoid (coverage
  of the modes without the preference for the most typical image);
* **hf_scdd_cifar**: the same medoids refined as ``--method hf_scdd`` does on CIFAR-size data
  (``synthesis.presets.LIGHT_REFINEMENT``: Adam steps towards BN statistics of clean training images), and
  **hf_scdd_refined**, session 7's shorter refinement, kept for the paired comparisons below the table;
* **hf_scdd_observers**: hf_scdd_cifar's refinement with the supervised teacher as a second observer
  (``--observers``: the images match both models' clean-image BN statistics and their mean logits);
* **random real subset** (a new draw per seed) and the **full training set**, trained the same way.

Students follow the library's protocol (``hf-scdd evaluate`` defaults: a budget of optimiser steps, pad-crop +
flip + CutMix, KD at T = 4 from the supervised teacher); hard labels and KD side by side, mean ± std over 3
seeds, final top-1 on the full test split. The noise-initialised IPC-10 sets are the first 10 IPC indices of
their IPC-50 sets (units are seeded by (seed, ipc, chunk): the same images an IPC-10 run makes). Everything is
an ``hf-scdd`` stage in its own folder under ``benchmarks/results/fidelity/<dataset>/``, run two single-threaded
processes at a time; a rerun skips what is finished. Writes ``benchmarks/results/fidelity/<dataset>.{md,json}``.

``--redraw`` makes the comparison with the random subset symmetric: the random subset is a new draw per student
seed, a row's set one selection draw (recovery seed 0) under every student seed, so its spread holds no
draw-to-draw part. With ``--redraw`` student seed s of a real-image row trains on the row's set recovered with
seed s (the row ``<row>_redraw``; seed 0's set and student are the row's own), and the table adds those rows and
their paired difference from the fixed draw.

Other student protocols keep their own folders and table: ``--protocol rrc`` (RandomResizedCrop) and any
``--steps`` other than evaluate's default budget, e.g. ``--steps 6000 --label_modes online`` (KD students at
twice the budget: ``evaluate-6000steps/``, ``<dataset>-6000steps.md``), which tests whether the default budget
has converged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from hf_scdd.stages.evaluate import EvaluateConfig
from hf_scdd.synthesis.presets import LIGHT_REFINEMENT
from hf_scdd.training.post_train import STUDENT_LR

from common import (
    DATASETS, FIRST_LIGHT_REFINEMENT, HERE, benchmark_setup, evaluate_command, hardware_line, read_results, run_all,
    STUDENT_MODES, modes_suffix, stage_command, mode_label, supervised_dir, train_models, unrefined_medoids,
)

PARTS = ("models", "sets", "students", "table")
# Student protocols: evaluate's fields on top of its defaults. "pad" is the default protocol (pad-crop + flip +
# CutMix); "rrc" swaps the pad-crop for RandomResizedCrop (area 0.25-1, the soft-label protocols' crop of
# SRe²L / SC-DD / RDED, with a floor that keeps a 28-pixel object recognisable). Each protocol has its own
# evaluation folders and table.
PROTOCOLS: dict[str, dict] = {"pad": {}, "rrc": dict(crop="rrc", crop_scale_min=0.25)}
PROTOCOL_TEXT = {"pad": "pad-crop (4 px)", "rrc": "RandomResizedCrop (area 0.25-1)"}
ROWS = ("scdd", "sre2l_probe", "sre2l_e2e", "hf_scdd", "hf_scdd_strata", "hf_scdd_strata_core", "hf_scdd_teacher",
        "hf_scdd_teacher_kmedoids", "hf_scdd_teacher_logits", "hf_scdd_joint", "hf_scdd_joint_cifar", "hf_scdd_refined", "hf_scdd_cifar", "hf_scdd_observers")
MODES = STUDENT_MODES
# evaluate's default budget: its folders and table keep the plain names
DEFAULT_STEPS: int = next(f.default for f in dataclasses.fields(EvaluateConfig) if f.name == "steps")
# Paired sections of the table (row − base per student seed): what each refinement adds to its medoids
PAIRS = (("hf_scdd_refined", "hf_scdd"), ("hf_scdd_cifar", "hf_scdd"), ("hf_scdd_cifar", "hf_scdd_refined"),
         ("hf_scdd_strata", "hf_scdd"), ("hf_scdd_strata_core", "hf_scdd"), ("hf_scdd_teacher", "hf_scdd"),
         ("hf_scdd_teacher_kmedoids", "hf_scdd_teacher"), ("hf_scdd_teacher_logits", "hf_scdd_teacher"), ("hf_scdd_joint", "hf_scdd"),
         ("hf_scdd_joint", "hf_scdd_teacher"),
         ("hf_scdd_joint_cifar", "hf_scdd_cifar"), ("hf_scdd_joint_cifar", "hf_scdd_joint"),
         ("hf_scdd_observers", "hf_scdd_cifar"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--part", default="all", choices=("all", *PARTS))
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS),
                   help="distilled-set rows to recover and evaluate (the random and full-data baselines ride with "
                        "hf_scdd); the table shows, per row, the evaluation with the most seeds")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help="student optimiser steps (the protocol's budget); another budget than evaluate's default "
                        "has its own folders and table (e.g. evaluate-6000steps/, fashion_mnist-6000steps.md)")
    p.add_argument("--label_modes", nargs="+", default=MODES, choices=MODES,
                   help="student label modes (a longer budget can run the KD students alone; the table shows – "
                        "for the other)")
    p.add_argument("--protocol", default="pad", choices=list(PROTOCOLS),
                   help="student augmentation: pad (evaluate's default) or rrc; each has its own folders and table")
    p.add_argument("--full_data", action=argparse.BooleanOptionalAction, default=True,
                   help="train the full-data baseline with the smallest IPC's hf_scdd evaluation (--no-full_data: "
                        "skip it, e.g. for extra seeds when one full-data seed is all the budget allows)")
    p.add_argument("--redraw", action="store_true",
                   help="also recover each real-image row with seed s for student seed s (rows <row>_redraw): a new "
                        "selection draw per seed, as the random subset has")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    args = p.parse_args()
    args.variant = protocol_suffix(args.protocol, args.steps)
    return args


def set_specs(models: Path, setup) -> dict[str, dict]:
    """Row name → (recovery model, recover fields, whether IPC 10 is the IPC-50 set's prefix)."""
    return {
        "scdd": dict(title="SC-DD (paper): MoCo v2 + probe, noise, running statistics",
                     backbone=models / "probe_mocov2", fields=dict(method="scdd"), prefix=True),
        "sre2l_probe": dict(title="SRe²L, probe head: supervised + probe, same recover settings",
                            backbone=models / "probe_supervised", fields=dict(method="scdd"), prefix=True),
        "sre2l_e2e": dict(title="SRe²L, end-to-end head: the supervised model as trained",
                          backbone=supervised_dir(setup, models), fields=dict(method="scdd"), prefix=True),
        "hf_scdd": dict(title="k-means medoids of MoCo v2 + probe features, unrefined (hf_scdd on 28×28 grey data)",
                        backbone=models / "probe_mocov2", fields=unrefined_medoids(setup), prefix=False),
        # the same clusters, a seeded random member of each: the lr-8e-3 sweep's best KD candidate (one seed)
        "hf_scdd_strata": dict(title="a random member of each k-means cluster of the same features (strata), "
                                     "unrefined", backbone=models / "probe_mocov2",
                               fields={**unrefined_medoids(setup), "selection": "strata"}, prefix=False),
        "hf_scdd_strata_core": dict(title="a random member of the inner half of each k-means cluster (strata_core), "
                                          "unrefined", backbone=models / "probe_mocov2",
                                    fields={**unrefined_medoids(setup), "selection": "strata_core"}, prefix=False),
        # the same selection on the KD teacher's features (session 12's CIFAR-10 IPC-50 KD screen: 69.42 against
        # 66.03 for the SSL medoids and 64.30 for the random subset, one seed)
        "hf_scdd_teacher": dict(title="k-means medoids of the supervised teacher's features, unrefined",
                                backbone=models / "probe_mocov2",
                                fields={**unrefined_medoids(setup), "selection_model": models / "teacher"},
                                prefix=False),
        # the same features, the k-medoids that k-means medoids approximate (session 17: greedy facility location
        # + Voronoi iteration, deterministic)
        "hf_scdd_teacher_kmedoids": dict(title="k-medoids of the supervised teacher's features, unrefined",
                                         backbone=models / "probe_mocov2",
                                         fields={**unrefined_medoids(setup), "selection": "kmedoids",
                                                 "selection_model": models / "teacher"},
                                         prefix=False),
        # the teacher's soft-label shapes (session 15): clusters of centred logits, not of pooled features
        "hf_scdd_teacher_logits": dict(title="k-means medoids of the supervised teacher's centred logits, unrefined",
                                       backbone=models / "probe_mocov2",
                                       fields={**unrefined_medoids(setup), "selection_model": models / "teacher",
                                               "selection_features": "logits"},
                                       prefix=False),
        # both views at once (session 14): the SSL medoids lead with hard labels, the teacher's with KD at IPC 50
        "hf_scdd_joint": dict(title="k-means medoids of the MoCo v2 and teacher features side by side, unrefined",
                              backbone=models / "probe_mocov2",
                              fields={**unrefined_medoids(setup), "selection_model": models / "teacher",
                                      "selection_features": "joint"},
                              prefix=False),
        "hf_scdd_joint_cifar": dict(title=f"the joint medoids + {LIGHT_REFINEMENT['iterations']} steps at lr "
                                          f"{LIGHT_REFINEMENT['lr']} to clean statistics",
                                    backbone=models / "probe_mocov2",
                                    fields=dict(method="hf_scdd", **LIGHT_REFINEMENT,
                                                selection_model=models / "teacher", selection_features="joint"),
                                    prefix=False),
        # --method hf_scdd on CIFAR-size presets in session 7 (the sweep's kmeans_clean_100_lr003)
        "hf_scdd_refined": dict(title="the same medoids + 100 steps at lr 0.003 to clean statistics (hf_scdd on "
                                      "CIFAR-size data in session 7)",
                                backbone=models / "probe_mocov2", fields=FIRST_LIGHT_REFINEMENT, prefix=False),
        # --method hf_scdd on CIFAR-size presets since session 8 (the CIFAR-10 sweep's best): the library's set
        "hf_scdd_cifar": dict(title=f"the same medoids + {LIGHT_REFINEMENT['iterations']} steps at lr "
                                    f"{LIGHT_REFINEMENT['lr']} to clean statistics (hf_scdd on CIFAR-size data)",
                              backbone=models / "probe_mocov2", fields=dict(method="hf_scdd", **LIGHT_REFINEMENT),
                              prefix=False),
        # the same refinement with the supervised teacher as a second observer (G-VBSM / CV-DD style)
        "hf_scdd_observers": dict(title="the same refinement against the MoCo v2 model and the supervised teacher "
                                        "together (two observers: their BN statistics and mean logits)",
                                  backbone=models / "probe_mocov2",
                                  fields=dict(method="hf_scdd", **LIGHT_REFINEMENT, observers=[models / "teacher"]),
                                  prefix=False),
    }


def distilled_dir(work: Path, name: str, ipc: int, seed: int = 0) -> Path:
    """A row's set; with a recovery ``seed`` other than 0, the set of that selection draw (``--redraw``)."""
    return work / "sets" / (f"{name}-ipc{ipc}" + (f"-seed{seed}" if seed else ""))


REDRAW = "_redraw"
"""Suffix of the rows whose student seed s trains on the set recovered with seed s (``--redraw``)."""


def recovery_seeds(args, spec: dict) -> list[int]:
    """The recovery seeds of a row's sets: 0, and with ``--redraw`` every student seed of a real-image row."""
    return sorted({0, *args.seeds}) if args.redraw and not spec["prefix"] else [0]


def protocol_suffix(protocol: str, steps: int) -> str:
    """The folder and file-name suffix of one student protocol: its augmentation unless it is the default pad-crop,
    its budget unless it is evaluate's default (``""``, ``-rrc``, ``-6000steps``, ``-rrc-6000steps``), so
    students of different protocols never share a folder."""
    parts = ([] if protocol == "pad" else [protocol]) + ([] if steps == DEFAULT_STEPS else [f"{steps}steps"])
    return "".join(f"-{part}" for part in parts)


def evaluations(work: Path, variant: str) -> Path:
    """The folder of one protocol's evaluations (``evaluate/`` for the default, ``evaluate<suffix>/``)."""
    return work / f"evaluate{variant}"


def evaluation_dir(work: Path, name: str, ipc: int, seeds: list[int], variant: str = "",
                   modes: list[str] = MODES) -> Path:
    """One evaluation folder per (row, IPC, seeds, label modes): a row evaluated with fewer seeds or modes first
    keeps its folder, and the table merges them by seed."""
    only = modes_suffix(modes)
    return evaluations(work, variant) / f"{name}-ipc{ipc}-seeds{''.join(map(str, seeds))}{only}"


def runs_by_seed(work: Path, name: str, ipc: int, variant: str = "") -> tuple[list[dict], dict[str, dict[int, dict]]]:
    """Every finished evaluation report of (row, IPC), and its runs by result key and student seed (the first
    folder holding a seed wins: a seed is never counted twice)."""
    found = [read_results(p) for p in sorted(evaluations(work, variant).glob(f"{name}-ipc{ipc}-seeds*"))
             if (p / "results.json").exists()]
    runs: dict[str, dict[int, dict]] = {}
    for report in found:
        for key, results in report["runs"].items():
            for result in results:
                runs.setdefault(key, {}).setdefault(result["seed"], result)
    if name.endswith(REDRAW) and found:  # seed 0 trains on the row's own set: its seed-0 run is this row's too
        for key, by_seed in runs_by_seed(work, name[: -len(REDRAW)], ipc, variant)[1].items():
            if key.startswith("distilled/") and 0 in by_seed:
                runs.setdefault(key, {}).setdefault(0, by_seed[0])
    return found, runs


def best_evaluation(work: Path, name: str, ipc: int, variant: str = "") -> dict | None:
    """Every finished evaluation of (row, IPC) merged: the runs of distinct seeds from all its folders (a row
    first evaluated with seed 0, then with seeds 1 2, counts as three seeds), aggregated again; None if none."""
    from hf_scdd.training.report import aggregate

    found, runs = runs_by_seed(work, name, ipc, variant)
    if not found:
        return None
    merged = max(found, key=lambda r: len(r["config"]["seeds"]))
    return {**merged, "results": aggregate({k: [v[s] for s in sorted(v)] for k, v in runs.items()})}


def paired_lines(work: Path, ipcs: list[int], variant: str, row: str, base: str,
                 exclude: frozenset[int] = frozenset()) -> list[str]:
    """``row − base`` per student seed they share (the same seed trains both: paired) but ``exclude``, mean ± std
    per IPC and label mode: the do-no-harm check of a refinement against the images it starts from."""
    lines = []
    for ipc in ipcs:
        ours, theirs = runs_by_seed(work, row, ipc, variant)[1], runs_by_seed(work, base, ipc, variant)[1]
        for mode in MODES:
            a, b = ours.get(f"distilled/{mode}", {}), theirs.get(f"distilled/{mode}", {})
            diffs = [100 * (a[s]["final_top1"] - b[s]["final_top1"]) for s in sorted(set(a) & set(b) - exclude)]
            if diffs:
                std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                lines.append(f"| {ipc} | {mode_label(mode)} | {statistics.fmean(diffs):+.2f} ± "
                             f"{std:.2f} | {len(diffs)} |")
    if not lines:
        return []
    return ["", f"Paired by student seed, {row} − {base} (points):", "",
            "| IPC | labels | difference | seeds |", "|---:|---|---:|---:|", *lines]


def chosen_specs(args, models: Path, setup) -> dict[str, dict]:
    return {k: v for k, v in set_specs(models, setup).items() if k in args.rows}


def recover_commands(args, setup, models: Path, work: Path) -> list[tuple[str, list[str]]]:
    commands = []
    for name, spec in chosen_specs(args, models, setup).items():
        ipcs = [max(args.ipcs)] if spec["prefix"] else args.ipcs
        for ipc in ipcs:
            for seed in recovery_seeds(args, spec):
                commands.append((f"recover_{name}_ipc{ipc}" + (f"_seed{seed}" if seed else ""), stage_command(
                    "recover", backbone=spec["backbone"], dataset=setup.dataset, ipc=ipc, seed=seed,
                    output_dir=distilled_dir(work, name, ipc, seed), report_to="none", **spec["fields"])))
    return commands


def write_prefix_sets(args, setup, models: Path, work: Path) -> None:
    """The IPC-k sets of the noise-initialised rows: the first k IPC indices of their largest-IPC set."""
    import datasets

    from hf_scdd.utils import atomic_path

    top = max(args.ipcs)
    for name, spec in chosen_specs(args, models, setup).items():
        if not spec["prefix"]:
            continue
        source = datasets.load_dataset(str(distilled_dir(work, name, top)), split="train")
        for ipc in args.ipcs:
            target = distilled_dir(work, name, ipc) / "data" / "train-00000-of-00001.parquet"
            if ipc == top or target.exists():
                continue
            with atomic_path(target) as tmp:
                source.filter(lambda row: row["ipc_index"] < ipc).to_parquet(str(tmp))


def student_commands(args, setup, models: Path, work: Path) -> list[tuple[str, list[str]]]:
    """One evaluate per (row, IPC); the random baseline rides with hf_scdd's, the full data with its IPC 10."""
    commands = []

    def add(distilled: Path, out: Path, seeds: list[int], baseline: bool = False, full_data: bool = False) -> None:
        commands.append((f"evaluate_{out.name}", evaluate_command(
            setup, distilled, out, models / "teacher", modes=args.label_modes, seeds=seeds, steps=args.steps,
            random_baseline=baseline, full_data_baseline=str(full_data).lower(), **PROTOCOLS[args.protocol])))

    for name, spec in chosen_specs(args, models, setup).items():
        for ipc in args.ipcs:
            for seed in recovery_seeds(args, spec)[1:]:  # seed 0's redraw student is the row's own seed-0 student
                add(distilled_dir(work, name, ipc, seed),
                    evaluation_dir(work, name + REDRAW, ipc, [seed], args.variant, args.label_modes), [seed])
            baseline = name == "hf_scdd"
            full_data = baseline and args.full_data and ipc == min(args.ipcs)
            if not full_data and already_trained(work, name, ipc, args, baseline):
                continue  # every wanted (label mode, seed) finished in the row's other folders
            add(distilled_dir(work, name, ipc), evaluation_dir(work, name, ipc, args.seeds, args.variant,
                                                                args.label_modes), args.seeds, baseline, full_data)
    return commands


def already_trained(work: Path, name: str, ipc: int, args, baseline: bool) -> bool:
    """Whether every student the command would train (each label mode and seed of the row, and of the random
    subset when it rides along) has finished in some folder of the row: a rerun with another split of seeds or
    modes (``--redraw --seeds 1 2`` after ``--label_modes hard``) then trains nothing twice."""
    runs = runs_by_seed(work, name, ipc, args.variant)[1]
    keys = [f"{kind}/{mode}" for kind in ("distilled", *(["random"] if baseline else [])) for mode in args.label_modes]
    return all(seed in runs.get(key, {}) for key in keys for seed in args.seeds)


def cell(row: dict | None) -> tuple[str, float, float]:
    """``mean ± std`` of a result row (with its seed count when it is not 3), and the two numbers."""
    if row is None:
        return "–", float("nan"), float("nan")
    mean, std = 100 * row["final_top1_mean"], 100 * row["final_top1_std"]
    seeds = len(row.get("seeds", [0, 1, 2]))
    return f"{mean:.2f} ± {std:.2f}" + (f" (n = {seeds})" if seeds != 3 else ""), mean, std


def gap(row: tuple[str, float, float], random: tuple[str, float, float]) -> str:
    """Row − random, with ``**`` when it exceeds two seed standard deviations of both (the issue's bar)."""
    diff = row[1] - random[1]
    if diff != diff:  # NaN: a cell is missing
        return "–"
    clear = clears_bar(row[1:], random[1:]) or clears_bar(random[1:], row[1:])  # either way round
    return f"{diff:+.2f}" + (" **" if clear else "")


def table(args, setup, models: Path, work: Path) -> tuple[str, dict]:
    specs = set_specs(models, setup)
    teacher = json.loads((models / "teacher" / "backbone" / "config.json").read_text())
    ssl_probe = json.loads((models / "probe_mocov2" / "probe_results.json").read_text())
    lines = [
        f"# Fidelity on {args.dataset}", "",
        f"Machine: {hardware_line()}. Students: {setup.student['arch']} width {setup.student['width']}, "
        f"{args.steps} AdamW steps at lr {STUDENT_LR}, {PROTOCOL_TEXT[args.protocol]} + flip + CutMix, hard labels "
        "and online KD "
        "(T = 4) from the supervised teacher, final "
        f"top-1 (%) on the full test split, mean ± std over 3 seeds unless a cell says n. "
        f"MoCo v2 probe top-1: {100 * ssl_probe['probe_top1']:.2f} %. `**`: the difference from the random "
        "subset exceeds two seed standard deviations of both cells.", "",
        "| IPC | set | hard labels | KD | hard − random | KD − random |", "|---:|---|---:|---:|---:|---:|",
    ]
    data: dict = {"rows": []}
    not_run: dict[str, list[int]] = {}
    for ipc in args.ipcs:
        base = best_evaluation(work, "hf_scdd", ipc, args.variant) or {"results": {}}
        random_hard, random_kd = cell(base["results"].get("random/hard")), cell(base["results"].get("random/online"))
        for name, spec in specs.items():
            results = (best_evaluation(work, name, ipc, args.variant) or {"results": {}})["results"]
            hard, kd = cell(results.get("distilled/hard")), cell(results.get("distilled/online"))
            if not results:  # not evaluated under this protocol: named below the table, not a row of dashes
                not_run.setdefault(spec["title"], []).append(ipc)
                continue
            lines.append(f"| {ipc} | {spec['title']} | {hard[0]} | {kd[0]} | {gap(hard, random_hard)} | "
                         f"{gap(kd, random_kd)} |")
            data["rows"].append(dict(ipc=ipc, set=name, hard=hard[1:], kd=kd[1:]))
            redrawn = (best_evaluation(work, name + REDRAW, ipc, args.variant) or {"results": {}})["results"]
            if redrawn:
                hard, kd = cell(redrawn.get("distilled/hard")), cell(redrawn.get("distilled/online"))
                lines.append(f"| {ipc} | the same, a new selection draw per student seed (recovery seed = student "
                             f"seed) | {hard[0]} | {kd[0]} | {gap(hard, random_hard)} | {gap(kd, random_kd)} |")
                data["rows"].append(dict(ipc=ipc, set=name + REDRAW, hard=hard[1:], kd=kd[1:]))
        lines.append(f"| {ipc} | random real subset (a new draw per seed) | {random_hard[0]} | {random_kd[0]} | | |")
        data["rows"].append(dict(ipc=ipc, set="random", hard=random_hard[1:], kd=random_kd[1:]))
        if "full/hard" in base["results"]:
            full, full_kd = cell(base["results"]["full/hard"]), cell(base["results"].get("full/online"))
            lines.append(f"| all | full training set | {full[0]} | {full_kd[0]} | | |")
            data["full"], data["full_kd"] = full[1:], full_kd[1:]
        data.setdefault("teacher_top1", base.get("teacher_top1"))
        for warning in base.get("checks", []):
            lines.append(f"\n**Protocol check failed at IPC {ipc}:** {warning}")
    if not_run:
        named = [f"{title} (IPC {', '.join(map(str, ipcs))})" for title, ipcs in sorted(not_run.items())]
        lines += ["", "Not evaluated under this protocol (other tables may have them): " + "; ".join(named) + "."]
    for row, base in PAIRS:
        lines += paired_lines(work, args.ipcs, args.variant, row, base)
    for name in specs:  # another draw against the fixed one (seed 0 is the same run in both: left out)
        lines += paired_lines(work, args.ipcs, args.variant, name + REDRAW, name, exclude=frozenset({0}))
    lines += ["", f"Teacher (supervised {teacher['arch']} width {teacher['width']}) test top-1: "
              f"{100 * data['teacher_top1']:.2f} %." if data.get("teacher_top1") else ""]
    return "\n".join(lines) + "\n", data


def clears_bar(row: tuple[float, float], random: tuple[float, float]) -> bool:
    """The issue's bar: ``row`` beats ``random`` by more than two seed standard deviations of both cells."""
    return row[0] - random[0] > 2 * max(row[1], random[1]) and row[1] > 0 and random[1] > 0


def plot_gaps(data: dict, path: Path) -> None:
    """One panel per (IPC, labels): every row's distance from the random subset, its ±2 seed-std bar, and the
    random subset's own ±2 std band; a row that clears the issue's bar is green. What the table says, at a
    glance: which cells a set wins, and by how much more than the seeds' noise."""
    from hf_scdd.training.report import pyplot, save_figure

    ipcs = sorted({r["ipc"] for r in data["rows"]})
    plt = pyplot()
    fig, axes = plt.subplots(len(ipcs), 2, figsize=(11, 0.45 * len(data["rows"]) + 2), squeeze=False)
    for i, ipc in enumerate(ipcs):
        rows = [r for r in data["rows"] if r["ipc"] == ipc and r["set"] != "random"]
        random = next(r for r in data["rows"] if r["ipc"] == ipc and r["set"] == "random")
        for j, (mode, label) in enumerate((("hard", "hard labels"), ("kd", "KD"))):
            ax, (r_mean, r_std) = axes[i][j], random[mode]
            shown = [r for r in rows if r[mode][0] == r[mode][0]]  # NaN: not evaluated in this mode
            ax.axvspan(-2 * r_std, 2 * r_std, color="0.85")
            ax.axvline(0, color="0.4", lw=0.8)
            for y, r in enumerate(shown):
                colour = "tab:green" if clears_bar(r[mode], random[mode]) else "tab:red"
                ax.errorbar(r[mode][0] - r_mean, y, xerr=2 * r[mode][1], fmt="o", color=colour, capsize=3)
            ax.set_yticks(range(len(shown)), [r["set"] for r in shown], fontsize=8)
            ax.set_title(f"IPC {ipc}, {label} (random {r_mean:.1f} %)", fontsize=9)
            ax.set_xlabel("top-1 − random subset (points), ± 2 seed std", fontsize=8)
            ax.invert_yaxis()
    fig.suptitle("grey: the random subset ± 2 seed std; green: beats it by more than two seed stds of both",
                 fontsize=9)
    save_figure(fig, path)


def main() -> None:
    args = parse_args()
    setup, models = benchmark_setup(args.dataset, args.root)
    work = Path(args.root) / "fidelity" / args.dataset
    parts = PARTS if args.part == "all" else (args.part,)
    print(f"[fidelity] {args.dataset}: {hardware_line()}", flush=True)
    timings = {}
    for part in parts:
        start = time.time()
        if part == "models":
            train_models(setup, models, args.workers)
        elif part == "sets":
            run_all(recover_commands(args, setup, models, work), work / "logs", workers=args.workers)
            write_prefix_sets(args, setup, models, work)
        elif part == "students":
            logs = work / f"logs{args.variant}"  # the same command names in every variant
            run_all(student_commands(args, setup, models, work), logs, workers=args.workers)
        else:
            text, data = table(args, setup, models, work)
            out = Path(args.root) / "fidelity"
            stem = f"{args.dataset}{args.variant}"
            (out / f"{stem}.md").write_text(text)
            (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), **data}, indent=2))
            plot_gaps(data, out / f"{stem}_gaps.png")
            print(text)
        timings[part] = round(time.time() - start)
        print(f"[fidelity] part {part}: {timings[part]} s", flush=True)


if __name__ == "__main__":
    main()
