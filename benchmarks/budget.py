"""Has the student budget converged? A set and the random real subset, final top-1 against the student budget.

    python benchmarks/fidelity.py --part students --rows hf_scdd --steps 6000 --label_modes online   # students
    python benchmarks/budget.py --dataset fashion_mnist                                              # table + plot

A cosine schedule flattens every training curve at its end, so a flat curve does not show that a student has
converged; training the same students with twice the budget does. This script reads every budget variant of the
fidelity benchmark's evaluations (``evaluate/`` at evaluate's default budget, ``evaluate-<N>steps/``) and, per IPC
and label mode, reports the row's and the random subset's mean ± std over seeds, their gap, and the gap paired by
student seed (the same seed trains both). Writes ``benchmarks/results/fidelity/<dataset>_budget_<row>.{md,png}``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from common import HERE, hardware_line, mode_label
from fidelity import DEFAULT_STEPS, MODES, gap, protocol_suffix, runs_by_seed

from hf_scdd.training.report import mean_std, pyplot, save_figure


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--row", default="hf_scdd", help="the fidelity row compared with the random subset")
    p.add_argument("--ipcs", type=int, nargs="+", default=[10, 50])
    p.add_argument("--root", default=str(HERE / "results"))
    return p.parse_args()


def budgets(work: Path) -> list[int]:
    """Every student budget the default protocol (pad-crop) has evaluations for."""
    found = {DEFAULT_STEPS} if (work / "evaluate").is_dir() else set()
    for folder in work.glob("evaluate-*steps"):
        match = re.fullmatch(r"evaluate-(\d+)steps", folder.name)
        if match:
            found.add(int(match.group(1)))
    return sorted(found)


def finals(runs: dict[str, dict[int, dict]], key: str) -> dict[int, float]:
    """Final top-1 (%) by student seed of one result key (empty when that key was not trained)."""
    return {seed: 100 * result["final_top1"] for seed, result in runs.get(key, {}).items()}


def measure(work: Path, row: str, ipc: int, steps: int) -> dict[str, dict]:
    """Per label mode at one budget: the row's and the random subset's seeds, and their paired gaps."""
    variant = protocol_suffix("pad", steps)
    ours, base = runs_by_seed(work, row, ipc, variant)[1], runs_by_seed(work, "hf_scdd", ipc, variant)[1]
    out = {}
    for mode in MODES:
        a, b = finals(ours, f"distilled/{mode}"), finals(base, f"random/{mode}")
        if a and b:
            paired = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            out[mode] = dict(row=mean_std(list(a.values())), random=mean_std(list(b.values())),
                             paired=mean_std(paired) if paired else None, seeds=len(a), random_seeds=len(b))
    return out


def table_lines(results: dict[tuple[int, int], dict], row: str) -> list[str]:
    lines = [f"| IPC | labels | student steps | {row} | random | gap | paired gap | seeds |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (ipc, steps), by_mode in sorted(results.items()):
        for mode, r in by_mode.items():
            (m, s), (rm, rs) = r["row"], r["random"]
            paired = f"{r['paired'][0]:+.2f} ± {r['paired'][1]:.2f}" if r["paired"] else "–"
            lines.append(f"| {ipc} | {mode_label(mode)} | {steps} | {m:.2f} ± {s:.2f} | {rm:.2f} ± {rs:.2f} | "
                         f"{gap(('', m, s), ('', rm, rs))} | {paired} | {r['seeds']} / {r['random_seeds']} |")
    return lines


def plot(results: dict[tuple[int, int], dict], ipcs: list[int], row: str, path: Path) -> None:
    """One panel per IPC: final top-1 against the budget (log scale), the row and random, each label mode."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ipcs), figsize=(5 * len(ipcs), 3.8), squeeze=False)
    colours, styles = {row: "tab:blue", "random": "tab:red"}, {"online": "-o", "hard": ":s"}
    steps_seen = sorted({steps for _, steps in results})
    for ax, ipc in zip(axes[0], ipcs):
        for mode in MODES:
            for who in (row, "random"):
                points = [(steps, r[mode]["row" if who == row else "random"])
                          for (i, steps), r in sorted(results.items()) if i == ipc and mode in r]
                if points:
                    xs, ys = [p[0] for p in points], [p[1] for p in points]
                    ax.errorbar(xs, [y[0] for y in ys], yerr=[y[1] for y in ys], fmt=styles[mode], capsize=3,
                                markersize=4, color=colours[who], label=f"{who} / {mode_label(mode)}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps_seen, [str(s) for s in steps_seen])
        ax.minorticks_off()
        ax.set_title(f"IPC {ipc}")
        ax.set_xlabel("student optimiser steps (cosine schedule to 0)")
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    args = parse_args()
    work = Path(args.root) / "fidelity" / args.dataset
    results = {(ipc, steps): found for ipc in args.ipcs for steps in budgets(work)
               if (found := measure(work, args.row, ipc, steps))}
    if not results:
        raise SystemExit(f"no evaluations of {args.row} under {work}: run benchmarks/fidelity.py --part students first")
    text = "\n".join([
        f"# Student budget on {args.dataset}: {args.row} vs the random real subset", "",
        f"Machine: {hardware_line()}. Final top-1 (%), mean ± std over student seeds (seeds: row / random); "
        "paired gap: row − random per shared seed. `**`: the gap exceeds two seed stds of both cells. Folders: "
        + ", ".join(f"evaluate{protocol_suffix('pad', s)}/" for s in sorted({s for _, s in results})) + ".", "",
        *table_lines(results, args.row), "",
    ])
    out = Path(args.root) / "fidelity" / f"{args.dataset}_budget_{args.row}"
    out.with_suffix(".md").write_text(text)
    plot(results, sorted({i for i, _ in results}), args.row, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
