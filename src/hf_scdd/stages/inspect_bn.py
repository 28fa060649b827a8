"""``hf-scdd inspect-bn``: compare the BatchNorm running statistics of backbones, layer by layer.

SC-DD's premise is that self-supervised models keep larger, more varied BN statistics than supervised ones,
which gives recovery a stronger matching signal. For each BN layer of each backbone this reports the
across-channel mean and standard deviation of ``running_mean`` and of ``running_var``, as JSON
(``bn_stats.json``) and as a four-panel plot (``bn_stats.png``), one line per model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..configs import Check, ConfigError, StageConfig, check_or_write_config
from ..losses.bn_matching import STATS, bn_layer_stats, summarize_bn_stats
from ..models.loading import load_backbone
from ..training.report import plot_bn_stats
from ..utils import atomic_write_text


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

    def checks(self) -> list[Check]:
        labels = self.labels or list(self.backbones)
        return [
            *super().checks(),
            (bool(self.backbones), "--backbones needs at least one backbone folder or Hub id"),
            (len(labels) == len(self.backbones) and len(set(labels)) == len(labels),
             f"--labels needs {len(self.backbones)} distinct names (one per backbone), got {labels}"),
        ]


def main(config: InspectBNConfig) -> dict:
    """Write ``bn_stats.json`` and ``bn_stats.png`` into ``output_dir``; returns the report."""
    config.validate()
    report: dict = {"statistics": list(STATS), "models": {}}
    for label, name in zip(config.labels or list(config.backbones), config.backbones):
        model = load_backbone(name)  # a squeeze/probe output folder works too
        rows = bn_layer_stats(model)
        if not rows:
            raise ConfigError(f"{name!r} has no BatchNorm layers with running statistics: pass BatchNorm backbones")
        info = getattr(model, "training_info", {}) or {}
        report["models"][label] = {
            "backbone": name,
            "method": info.get("method"),
            "summary": summarize_bn_stats(rows),
            "layers": rows,
        }
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_or_write_config(config, out)
    atomic_write_text(out / "bn_stats.json", json.dumps(report, indent=2) + "\n")
    plot_bn_stats(report, out / "bn_stats.png")
    print(f"[inspect-bn] wrote {out / 'bn_stats.json'} and {out / 'bn_stats.png'}")
    return report

