"""inspect-bn: per-layer BN statistics of several backbones as JSON + PNG."""

from __future__ import annotations

import json

import pytest
import torch

from hf_scdd.losses.bn_matching import STATS, bn_layer_stats
from hf_scdd.stages.inspect_bn import InspectBNConfig
from hf_scdd.stages.inspect_bn import main as inspect_bn
from hf_scdd.configs import ConfigError
from hf_scdd.models import ResNet


def _backbone(folder, scale: float, method: str):
    torch.manual_seed(0)
    model = ResNet("resnet10", num_classes=0, in_channels=1, width=4, image_size=16, training={"method": method})
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0.0, scale)
            module.running_var.uniform_(0.5, 0.5 + scale)
    model.save_pretrained(folder)
    return model


def test_bn_layer_stats_values():
    model = ResNet("resnet10", num_classes=0, in_channels=1, width=4)
    model.bn1.running_mean.copy_(torch.tensor([1.0, 3.0, 1.0, 3.0]))
    model.bn1.running_var.copy_(torch.tensor([2.0, 2.0, 2.0, 2.0]))
    first = bn_layer_stats(model)[0]
    assert first["layer"] == "bn1" and first["channels"] == 4
    assert first["mean_of_running_mean"] == pytest.approx(2.0) and first["std_of_running_mean"] == pytest.approx(1.0)
    assert first["mean_of_running_var"] == pytest.approx(2.0) and first["std_of_running_var"] == pytest.approx(0.0)


def test_inspect_bn_writes_json_and_png(tmp_path):
    ssl = _backbone(tmp_path / "ssl", 5.0, "mocov2")
    _backbone(tmp_path / "sup", 0.1, "supervised")
    out = tmp_path / "report"
    config = InspectBNConfig(
        output_dir=str(out), backbones=[str(tmp_path / "ssl"), str(tmp_path / "sup")], labels=["ssl", "supervised"]
    )
    inspect_bn(config)
    report = json.loads((out / "bn_stats.json").read_text())
    assert set(report["models"]) == {"ssl", "supervised"}
    for label, method in (("ssl", "mocov2"), ("supervised", "supervised")):
        entry = report["models"][label]
        assert entry["method"] == method
        assert len(entry["layers"]) == ssl.bn_layer_count()  # one entry per BN layer
        assert set(STATS) <= set(entry["layers"][0]) and set(entry["summary"]) == set(STATS)
    summary = {k: v["summary"] for k, v in report["models"].items()}
    assert summary["ssl"]["std_of_running_var"] > summary["supervised"]["std_of_running_var"]
    assert (out / "bn_stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "config.json").exists()


def test_inspect_bn_rejects_mismatched_labels(tmp_path):
    _backbone(tmp_path / "a", 1.0, "mocov2")
    config = InspectBNConfig(output_dir=str(tmp_path / "r"), backbones=[str(tmp_path / "a")], labels=["x", "y"])
    with pytest.raises(ConfigError, match="distinct names"):
        inspect_bn(config)
