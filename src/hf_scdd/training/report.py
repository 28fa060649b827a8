"""Reports: results tables over seeds, the protocol metrics (IOR, HLR), Markdown, and figures.

IOR = distilled − random real subset under the same protocol (per label mode); HLR = full data − distilled,
hard labels; both on the final epoch's top-1. Figures are written atomically like every other output.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..losses.bn_matching import STATS
from ..utils import atomic_path


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (stages run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Save a PNG figure atomically and release it."""
    with atomic_path(path) as tmp:
        fig.tight_layout()
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
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
            "steps": results[0].get("steps"), "num_images": results[0]["num_images"],
            "test_count": results[0]["test_count"],
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


def protocol_checks(table: dict[str, dict[str, Any]]) -> list[str]:
    """Warnings that the protocol itself is not trustworthy, empty when it is.

    A teacher's soft labels carry more than class ids, so on the *same* real images KD must train a student at
    least as well as hard labels; when random + KD falls below random + hard, the students have not converged
    (too few steps, or a temperature/learning rate that starves KD) and no comparison under this protocol means
    anything.
    """
    warnings = []
    hard = table.get("random/hard")
    for mode in ("online", "stored"):
        kd = table.get(f"random/{mode}")
        if hard and kd and kd["final_top1_mean"] < hard["final_top1_mean"]:
            warnings.append(
                f"random + {mode} KD ({100 * kd['final_top1_mean']:.2f} %) is below random + hard labels "
                f"({100 * hard['final_top1_mean']:.2f} %) on the same images: the students have not converged; "
                "raise --steps (or check --temperature and the teacher) before reading this table"
            )
    return warnings


def _cell(row: dict[str, Any] | None) -> str:
    return "–" if row is None else f"{100 * row['final_top1_mean']:.2f} ± {100 * row['final_top1_std']:.2f}"


def markdown_report(
    table: dict[str, dict[str, Any]],
    metrics: dict[str, float],
    title: str,
    *,
    teacher_top1: float | None = None,
    checks: list[str] | None = None,
) -> str:
    """The results as Markdown (percent): one row per set with hard and KD labels side by side, the teacher's
    own test top-1, then the details (best epoch, budget) and the protocol metrics and self-checks."""
    sets = list(dict.fromkeys(key.split("/")[0] for key in table))
    modes = list(dict.fromkeys(key.split("/")[1] for key in table))
    lines = [
        f"# {title}", "",
        "Top-1 (%) on the full real test split at the end of training, mean ± std over seeds.", "",
        "| set | images | " + " | ".join(f"{m} labels" for m in modes) + " |",
        "|---|---:|" + "---:|" * len(modes),
    ]
    if teacher_top1 is not None:
        lines.append(f"| teacher (its own top-1) | – | {100 * teacher_top1:.2f} |" + " |" * (len(modes) - 1))
    for name in sets:
        rows = [table.get(f"{name}/{m}") for m in modes]
        images = next(r["num_images"] for r in rows if r is not None)
        lines.append(f"| {name} | {images} | " + " | ".join(_cell(r) for r in rows) + " |")
    lines += [
        "", "| set | labels | steps | epochs | best evaluated top-1 | seeds |", "|---|---|---:|---:|---:|---|",
    ]
    for key, row in table.items():
        subset, mode = key.split("/")
        lines.append(
            f"| {subset} | {mode} | {row.get('steps') or '–'} | {row['epochs']} | "
            f"{100 * row['best_top1_mean']:.2f} ± {100 * row['best_top1_std']:.2f} | "
            f"{' '.join(map(str, row['seeds']))} |"
        )
    if metrics:
        lines += ["", "| metric | value (points) |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:+.2f} |" for k, v in metrics.items()]
        lines += ["", "IOR = distilled − random real subset (same protocol); HLR = full data − distilled, hard labels."]
    for warning in checks or []:
        lines += ["", f"**Protocol check failed:** {warning}"]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Mean test top-1 against optimiser steps for every run group. A cosine schedule flattens every curve at its
    end, so a flat end is not convergence: a run with twice the budget tells (benchmarks/budget.py)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, results in runs.items():
        steps = [s for s, _ in results[0]["curve"]]
        means = [statistics.fmean(r["curve"][i][1] for r in results) * 100 for i in range(len(steps))]
        ax.plot(steps, means, marker="o", markersize=3, label=key)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_bn_stats(report: dict, path: Path) -> None:
    """Four panels (the statistics in :data:`STATS`) against the BN layer index, one line per model."""
    import matplotlib.ticker

    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, stat in zip(axes.flat, STATS):
        for label, entry in report["models"].items():
            values = [r[stat] for r in entry["layers"]]
            ax.plot(range(len(values)), values, marker="o", markersize=3, label=label)
        ax.set_title(stat.replace("_", " "))
        if stat == "mean_of_running_mean":  # signed
            ax.set_yscale("symlog", linthresh=1e-2)
        else:  # positive: log scale with readable ticks
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False))
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("BN layer (module order)")
    axes[0, 0].legend()
    fig.suptitle("BatchNorm running statistics across channels, per layer")
    save_figure(fig, path)
