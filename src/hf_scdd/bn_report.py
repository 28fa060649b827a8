"""``hf-scdd inspect-bn``: compare the BatchNorm running statistics of backbones, layer by layer.

SC-DD's premise (method.md §1.5) is that self-supervised models keep larger, more varied BN statistics than
supervised ones, which gives recovery a stronger matching signal. For each BN layer of each backbone this
reports the across-channel mean and standard deviation of ``running_mean`` and of ``running_var``, as JSON
(``bn_stats.json``) and as a four-panel plot (``bn_stats.png``), one line per model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .configs import ConfigError, StageConfig, atomic_write_text, check_or_write_config

STATS = ("mean_of_running_mean", "std_of_running_mean", "mean_of_running_var", "std_of_running_var")


@dataclass
class InspectBNConfig(StageConfig):
    """``hf-scdd inspect-bn --backbones A B --labels ssl supervised``."""

    output_dir: str = field(default="outputs/bn_stats", metadata={"help": "Folder for bn_stats.json/.png."})
    backbones: list[str] = field(
        default_factory=list, metadata={"help": "Backbone folders (or squeeze/probe output dirs) or Hub ids."}
    )
    labels: list[str] | None = field(
        default=None, metadata={"help": "One display name per backbone (default: the paths)."}
    )


def bn_layer_stats(model: nn.Module) -> list[dict]:
    """Per BN layer (in module order): name, channel count and the across-channel mean/std of its buffers."""
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            rm, rv = module.running_mean.detach().double(), module.running_var.detach().double()
            rows.append(
                {
                    "layer": name,
                    "channels": int(rm.numel()),
                    "mean_of_running_mean": float(rm.mean()),
                    "std_of_running_mean": float(rm.std(unbiased=False)),
                    "mean_of_running_var": float(rv.mean()),
                    "std_of_running_var": float(rv.std(unbiased=False)),
                }
            )
    return rows


def summarize(rows: list[dict]) -> dict:
    """Averages over layers of each statistic: one number per statistic to compare models at a glance."""
    return {k: float(torch.tensor([r[k] for r in rows], dtype=torch.float64).mean()) for k in STATS} if rows else {}


def plot_bn_stats(report: dict, path: Path) -> None:
    """Four panels (the statistics in :data:`STATS`) against the BN layer index, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (used via matplotlib.ticker)

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
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def inspect_bn(config: InspectBNConfig) -> dict:
    """Write ``bn_stats.json`` and ``bn_stats.png`` into ``output_dir``; returns the report."""
    from .models import load_backbone
    from .squeeze import resolve_backbone_path

    if not config.backbones:
        raise ConfigError("--backbones needs at least one backbone folder or Hub id")
    labels = config.labels or list(config.backbones)
    if len(labels) != len(config.backbones) or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels needs {len(config.backbones)} distinct names (one per backbone), got {labels}")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_config(config, out)
    report: dict = {"statistics": list(STATS), "models": {}}
    for label, name in zip(labels, config.backbones):
        model = load_backbone(resolve_backbone_path(name))
        rows = bn_layer_stats(model)
        if not rows:
            raise ConfigError(f"{name!r} has no BatchNorm layers with running statistics")
        info = getattr(model, "training_info", {}) or {}
        report["models"][label] = {
            "backbone": name,
            "method": info.get("method"),
            "summary": summarize(rows),
            "layers": rows,
        }
    atomic_write_text(out / "bn_stats.json", json.dumps(report, indent=2) + "\n")
    plot_bn_stats(report, out / "bn_stats.png")
    print(f"[inspect-bn] wrote {out / 'bn_stats.json'} and {out / 'bn_stats.png'}")
    return report


def main(config: InspectBNConfig) -> dict:
    return inspect_bn(config)
