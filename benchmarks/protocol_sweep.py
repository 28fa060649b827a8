"""Tune the student protocol for convergence, judged on the baselines: which optimiser settings bring students
closest to where a much longer budget takes them, at the default budget's cost?

    python benchmarks/protocol_sweep.py --dataset fashion_mnist --candidates lr1e-3 lr2e-3 lr4e-3 --seeds 0
    python benchmarks/protocol_sweep.py --candidates lr1e-3 lr4e-3 --label_modes hard online --seeds 0 1 2

A cosine schedule ends every curve flat, so only a longer budget shows whether a student has converged
(``budget.py``); KD students at evaluate's default (3000 AdamW steps at lr 1e-3) had not. Each candidate is a set
of ``hf-scdd evaluate`` fields (learning rate, budget, temperature, batch size) on top of the defaults; it trains
students on the fidelity benchmark's hf_scdd set *and* on a random real subset (a new draw per seed), so the
choice can be made on the random subset alone (the baseline, which no set-specific tuning favours) and its
effect on the set's lead read beside it. Sets and models are the fidelity benchmark's (made first if missing);
every evaluation is resumable. Writes ``benchmarks/results/protocol/<dataset>.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from types import SimpleNamespace

from common import DATASETS, HERE, benchmark_setup, evaluate_command, hardware_line, mode_label, run_all, train_models
from fidelity import MODES, distilled_dir, gap, recover_commands, runs_by_seed

# name -> evaluate fields on top of its defaults (3000 steps, T = 4, batch 64); every candidate names its lr, so
# a change of evaluate's default (SC-DD's 1e-3 until this sweep chose STUDENT_LR) does not change what it means
CANDIDATES: dict[str, dict] = {
    "lr1e-3": dict(lr=0.001),
    "lr2e-3": dict(lr=0.002),
    "lr4e-3": dict(lr=0.004),
    "lr8e-3": dict(lr=0.008),
    "lr1e-3_12000": dict(lr=0.001, steps=12000),
    "lr4e-3_6000": dict(lr=0.004, steps=6000),
    "lr4e-3_12000": dict(lr=0.004, steps=12000),
    "lr8e-3_6000": dict(lr=0.008, steps=6000),
    "lr8e-3_t2": dict(lr=0.008, temperature=2.0),
    "lr8e-3_t1": dict(lr=0.008, temperature=1.0),
    "lr4e-3_t2": dict(lr=0.004, temperature=2.0),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist", choices=sorted(DATASETS))
    p.add_argument("--candidates", nargs="+", default=["lr1e-3", "lr2e-3", "lr4e-3", "lr8e-3"],
                   choices=list(CANDIDATES))
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--label_modes", nargs="+", default=["online"], choices=MODES)
    p.add_argument("--table_only", action="store_true", help="write the table from the finished evaluations")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def evaluation_dir(work: Path, name: str, ipc: int, seeds: list[int], modes: list[str]) -> Path:
    """One folder per (candidate, IPC, seeds, modes), named like the fidelity benchmark's so its readers apply."""
    return work / f"evaluate-{name}" / f"hf_scdd-ipc{ipc}-seeds{''.join(map(str, seeds))}-{'-'.join(modes)}"


def student_commands(args, setup, models: Path, sets: Path, work: Path) -> list[tuple[str, list[str]]]:
    commands = []
    for name in args.candidates:
        fields = {"steps": 3000, **CANDIDATES[name]}
        for ipc in args.ipcs:
            out = evaluation_dir(work, name, ipc, args.seeds, args.label_modes)
            commands.append((f"{name}-{out.name}", evaluate_command(
                setup, distilled_dir(sets, "hf_scdd", ipc), out, models / "teacher", modes=args.label_modes,
                seeds=args.seeds, random_baseline=True, **fields)))
    return commands


def cell(values: dict[int, dict]) -> tuple[str, float, float]:
    """``mean ± std (n)`` of final top-1 over seeds, and the two numbers."""
    finals = [100 * r["final_top1"] for _, r in sorted(values.items())]
    if not finals:
        return "–", float("nan"), float("nan")
    std = statistics.stdev(finals) if len(finals) > 1 else 0.0
    return f"{statistics.fmean(finals):.2f} ± {std:.2f} ({len(finals)})", statistics.fmean(finals), std


def table(args, work: Path) -> tuple[str, list[dict]]:
    lines = [
        f"# Student protocol sweep on {args.dataset}", "",
        f"Machine: {hardware_line()}. Final top-1 (%) on the full test split, mean ± std (seeds). Every candidate "
        "trains the same hf_scdd set and a random real subset (a new draw per seed); fields on top of evaluate's "
        "defaults (3000 AdamW steps, batch 64, T = 4, pad-crop + flip + CutMix). `**`: the gap exceeds "
        "two seed stds of both cells.", "",
        "| candidate | fields | IPC | labels | hf_scdd | random | gap |", "|---|---|---:|---|---:|---:|---:|",
    ]
    rows = []
    for name in CANDIDATES:
        fields = ", ".join(f"{k}={v}" for k, v in CANDIDATES[name].items())
        for ipc in args.ipcs:
            runs = runs_by_seed(work, "hf_scdd", ipc, f"-{name}")[1]
            for mode in MODES:
                ours, base = cell(runs.get(f"distilled/{mode}", {})), cell(runs.get(f"random/{mode}", {}))
                if ours[0] == "–" and base[0] == "–":
                    continue
                lines.append(f"| {name} | {fields} | {ipc} | {mode_label(mode)} | {ours[0]} | {base[0]} | "
                             f"{gap(ours, base)} |")
                rows.append(dict(candidate=name, ipc=ipc, mode=mode, hf_scdd=ours[1:], random=base[1:]))
    return "\n".join(lines) + "\n", rows


def main() -> None:
    args = parse_args()
    setup, models = benchmark_setup(args.dataset, args.root)
    sets = Path(args.root) / "fidelity" / args.dataset
    work = Path(args.root) / "protocol" / args.dataset
    print(f"[protocol] {args.dataset}: {hardware_line()}", flush=True)
    if not args.table_only:
        train_models(setup, models, args.workers)
        run_all(recover_commands(SimpleNamespace(rows=["hf_scdd"], ipcs=args.ipcs), setup, models, sets),
                sets / "logs", workers=args.workers)
        run_all(student_commands(args, setup, models, sets, work), work / "logs", workers=args.workers)
    text, rows = table(args, work)
    out = Path(args.root) / "protocol"
    (out / f"{args.dataset}.md").write_text(text)
    (out / f"{args.dataset}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
