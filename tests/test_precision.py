"""Per-stage precision: ``auto`` resolution and its override, autocast scope, and stages of different
precisions in one process (no process-global ``AcceleratorState`` precision)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hf_scdd.errors import ConfigError
from hf_scdd.models import ResNet
from hf_scdd.stages.squeeze import SqueezeConfig
from hf_scdd.stages.squeeze import main as squeeze
from hf_scdd.training import accelerator
from hf_scdd.training.accelerator import Precision
from hf_scdd.utils import bf16_units_usable, onednn_isa_cap

TINY = dict(arch="resnet10", width=4, batch_size=32, method="supervised", epochs=1, cpu=True, report_to="none")


def test_auto_follows_the_override_and_the_cpu_flags(monkeypatch):
    monkeypatch.setenv("HF_SCDD_AUTO_PRECISION", "bf16")
    assert Precision.resolve("auto", "cpu") == Precision("bf16", "cpu")
    monkeypatch.setenv("HF_SCDD_AUTO_PRECISION", "no")
    assert Precision.resolve("auto", "cpu").name == "no"
    monkeypatch.setenv("HF_SCDD_AUTO_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="HF_SCDD_AUTO_PRECISION must be 'bf16' or 'no'"):
        Precision.resolve("auto", "cpu")
    monkeypatch.delenv("HF_SCDD_AUTO_PRECISION")
    for fast in (True, False):
        monkeypatch.setattr(accelerator, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert Precision.resolve("auto", "cpu").name == ("bf16" if fast else "no")
    assert Precision.resolve("no", "cpu").dtype == torch.float32  # explicit choices pass through
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        Precision.resolve("fp16", "cpu")
    with pytest.raises(ConfigError, match="must be one of"):
        Precision.resolve("half", "cpu")


def test_bf16_units_count_only_where_onednn_may_use_them():
    assert bf16_units_usable("amx_bf16", None) and bf16_units_usable("avx512_bf16", None)
    assert not bf16_units_usable("avx2", None) and not bf16_units_usable("other", None)
    assert bf16_units_usable("amx_bf16", "AVX512_CORE_AMX") and bf16_units_usable("avx512_bf16", "AVX10_1_512_AMX")
    assert bf16_units_usable("avx512_bf16", "AVX512_CORE_BF16")
    for cap in ("AVX2", "AVX512_CORE", "AVX512_CORE_VNNI"):  # emulated bf16: many times slower than fp32
        assert not bf16_units_usable("amx_bf16", cap) and not bf16_units_usable("avx512_bf16", cap)
    assert not bf16_units_usable("amx_bf16", "AVX512_CORE_BF16")  # AMX CPU without AMX: no gain measured


def test_auto_is_fp32_where_onednn_is_capped_below_the_bf16_units(monkeypatch):
    monkeypatch.delenv("HF_SCDD_AUTO_PRECISION", raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert onednn_isa_cap() == "AVX2"
    assert Precision.resolve("auto", "cpu").name == "no"  # whatever /proc/cpuinfo lists
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "all")
    assert onednn_isa_cap() is None


def test_autocast_scope():
    conv, x = nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8)
    with Precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
        with Precision("no", "cpu").autocast():  # 'no' switches an enclosing autocast off
            assert conv(x).dtype == torch.float32
    assert conv(x).dtype == torch.float32  # nothing leaks out of the stage's context
    assert Precision("bf16", "cpu").grad_scaler() is None  # only fp16 scales the loss


@pytest.mark.parametrize("order", [("no", "bf16"), ("bf16", "no")], ids=["fp32-then-bf16", "bf16-then-fp32"])
def test_stages_of_different_precisions_in_one_process(tiny_image_folder, tmp_path, order):
    weights = {}
    for precision in order:
        out = tmp_path / precision
        config = SqueezeConfig(output_dir=str(out), dataset=tiny_image_folder, mixed_precision=precision, **TINY)
        weights[precision] = ResNet.from_pretrained(squeeze(config)).state_dict()
        recorded = json.loads((out / "config.json").read_text())
        assert recorded["runtime"] == {"precision": precision, "data_source": "memory"}
        assert recorded["config"]["mixed_precision"] == precision
    # the same seed and data: only the precision differs, and it did change the arithmetic
    assert not torch.equal(weights["no"]["conv1.weight"], weights["bf16"]["conv1.weight"])
    torch.testing.assert_close(weights["no"]["conv1.weight"], weights["bf16"]["conv1.weight"], atol=0.05, rtol=0.1)


def test_resumed_run_under_another_auto_answer_keeps_its_folder(tiny_image_folder, tmp_path, monkeypatch):
    out = Path(tmp_path / "auto")
    config = SqueezeConfig(output_dir=str(out), dataset=tiny_image_folder, mixed_precision="auto", **TINY)
    monkeypatch.setenv("HF_SCDD_AUTO_PRECISION", "no")
    path = squeeze(config)
    monkeypatch.setenv("HF_SCDD_AUTO_PRECISION", "bf16")
    assert squeeze(config) == path  # the same config: accepted, nothing redone
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["runtime"] == {"precision": "bf16", "data_source": "memory"}
    assert recorded["runtime_earlier"] == [{"precision": "no", "data_source": "memory"}]
