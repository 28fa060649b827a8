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
            "num_images": results[0]["num_images"], "test_count": results[0]["test_count"],
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


def markdown_report(table: dict[str, dict[str, Any]], metrics: dict[str, float], title: str) -> str:
    """The results table (and IOR/HLR) as Markdown, in percent."""
    lines = [
        f"# {title}", "",
        "Top-1 (%) on the full real test split; mean ± std over seeds. *final* = last epoch (headline), "
        "*best* = best evaluated epoch (secondary).", "",
        "| set | labels | images | epochs | final top-1 | best top-1 | seeds |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, row in table.items():
        subset, mode = key.split("/")
        lines.append(
            f"| {subset} | {mode} | {row['num_images']} | {row['epochs']} | "
            f"{100 * row['final_top1_mean']:.2f} ± {100 * row['final_top1_std']:.2f} | "
            f"{100 * row['best_top1_mean']:.2f} ± {100 * row['best_top1_std']:.2f} | "
            f"{' '.join(map(str, row['seeds']))} |"
        )
    if metrics:
        lines += ["", "| metric | value (points) |", "|---|---:|"]
        lines += [f"| {k} | {100 * v:+.2f} |" for k, v in metrics.items()]
        lines += ["", "IOR = distilled − random real subset (same protocol); HLR = full data − distilled, hard labels."]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict[str, list[dict]], path: Path) -> None:
    """Mean test top-1 per evaluated epoch for every run group (matplotlib, Agg backend)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, results in runs.items():
        epochs = [e for e, _ in results[0]["curve"]]
        means = [statistics.fmean(r["curve"][i][1] for r in results) * 100 for i in range(len(epochs))]
        ax.plot(epochs, means, marker="o", markersize=3, label=key)
    ax.set_xlabel("epoch")
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
