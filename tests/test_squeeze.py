"""Squeeze and probe stages: MoCo v2 loss, supervised control, frozen-BN probe, multi-process, resume.

All runs use a tiny synthetic image folder (4 classes of 16x16 grey images whose class is the quadrant of a
bright square), so the tests need neither Fashion-MNIST nor more than a few seconds of CPU each.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_same_tensors, bn_backbone, checkpoint_done, kill_when, skip_unless_compile_allowed
from hf_scdd.models import ResNet
from hf_scdd.models.loading import BACKBONE_DIR, MODEL_DIR
from hf_scdd.models.moco import SplitBatchNorm2d
from hf_scdd.stages.probe import ProbeConfig
from hf_scdd.stages.probe import main as probe
from hf_scdd.stages.squeeze import SqueezeConfig
from hf_scdd.stages.squeeze import main as squeeze

TINY = dict(arch="resnet10", width=4, batch_size=32, moco_k=64, moco_dim=16, bn_splits=4, cpu=True, report_to="jsonl")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_image_folder) -> str:
    """An image folder with train (32/class) and test (8/class) splits of 4 classes (tests/conftest.py)."""
    return tiny_image_folder


def _metrics(output_dir: Path) -> list[dict]:
    path = next((output_dir / "logs").glob("*.metrics.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if '"loss"' in line]


# ----------------------------------------------------------------------------------------------------------
# In-process runs
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.both_precisions
def test_mocov2_loss_decreases_and_saves_backbone(tiny_dataset, tmp_path):
    out = tmp_path / "moco"
    config = SqueezeConfig(output_dir=str(out), dataset=tiny_dataset, epochs=8, lr=0.1, **TINY)
    path = squeeze(config)
    losses = [row["loss"] for row in _metrics(out)]
    assert len(losses) == 8 * (128 // 32)
    assert np.mean(losses[-4:]) < np.mean(losses[2:6]) - 0.05, losses  # after the queue is filled (2 steps)
    model = ResNet.from_pretrained(path)
    assert model.num_classes == 0 and model.training_info["method"] == "mocov2"
    assert model.training_info["epochs"] == 8 and model.training_info["config"]["moco_k"] == 64
    assert not any(isinstance(m, SplitBatchNorm2d) for m in model.modules())
    assert not (out / "checkpoints").exists()  # removed once the backbone is written
    assert json.loads((out / "config.json").read_text())["config"]["method"] == "mocov2"
    assert squeeze(config) == path  # a rerun finds the finished output


@pytest.mark.both_precisions
def test_probe_keeps_backbone_bit_identical_and_pushes(tiny_dataset, tmp_path, fake_hub, hub_repo_id):
    # A supervised squeeze (the control) gives a real backbone with non-trivial BN statistics.
    sq = SqueezeConfig(output_dir=str(tmp_path / "sup"), dataset=tiny_dataset, method="supervised", epochs=2, **TINY)
    backbone_dir = squeeze(sq)
    before = ResNet.from_pretrained(backbone_dir).state_dict()
    assert int(before["bn1.num_batches_tracked"]) == 2 * (128 // 32)

    config = ProbeConfig(
        output_dir=str(tmp_path / "probe"), backbone=str(tmp_path / "sup"), dataset=tiny_dataset, epochs=3,
        batch_size=32, cpu=True, push_to_hub=hub_repo_id,
    )
    model_dir = probe(config)
    assert model_dir == tmp_path / "probe" / MODEL_DIR
    after = ResNet.from_pretrained(model_dir)
    state = after.state_dict()
    bn_buffers = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn_buffers) == 3 * after.bn_layer_count()
    for key, value in before.items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), f"{key} changed during probing"
    assert after.num_classes == 4 and after.fc.weight.shape == (4, after.num_features)
    info = after.training_info
    assert info["method"] == "supervised" and info["probe_epochs"] == 3
    assert info["probe_top1"] > 0.4  # chance is 0.25
    assert 0 < info["probe_logit_scale"] and info["probe_head_norm"] == pytest.approx(float(after.fc.weight.norm()), rel=1e-3)
    card = (model_dir / "README.md").read_text()
    assert "linear-probe top-1" in card and "linear-probe logit scale" in card
    files = fake_hub.files(hub_repo_id)
    assert "model.safetensors" in files and "README.md" in files


# ----------------------------------------------------------------------------------------------------------
# Subprocess runs: 2 processes, kill + resume
# ----------------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _squeeze_args(tiny_dataset: str, out: Path, **extra) -> list[str]:
    values = {**TINY, "dataset": tiny_dataset, "output_dir": str(out), **extra}
    values.pop("cpu")
    return [f"--{k}={v}" for k, v in values.items()]


def test_two_process_squeeze(tiny_dataset, tmp_path):
    out = tmp_path / "ddp"
    port = str(29600 + random.randint(0, 2000))
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
        "-m", "hf_scdd", "squeeze", *_squeeze_args(tiny_dataset, out, epochs=2),
    ]
    result = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    model = ResNet.from_pretrained(out / BACKBONE_DIR)
    assert model.training_info["method"] == "mocov2"
    # 128 images, global batch 32 -> 4 steps per epoch whatever the process count.
    assert len(_metrics(out)) == 2 * 4


def test_kill_and_resume(tiny_dataset, tmp_path):
    """kill -9 after a mid-epoch checkpoint of the second epoch, then the same command: the weights are
    bit-identical to an uninterrupted run's (the shuffle order and every RNG state resume, not restart)."""
    out = tmp_path / "resume"
    args = ["squeeze", *_squeeze_args(tiny_dataset, out, epochs=6, checkpoint_steps=1)]
    kill_when(args, lambda: checkpoint_done(out, min_step=6))  # 4 steps per epoch: inside epoch 2
    assert not (out / BACKBONE_DIR).exists(), "the first run finished before it could be killed"

    second = subprocess.run([sys.executable, "-m", "hf_scdd", *args], env=_env(), capture_output=True, text=True,
                            timeout=240)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "resuming from" in log and "step_" in log
    steps = [row["step"] for row in _metrics(out)]
    assert steps[-1] == 6 * 4
    assert steps.count(1) == 1  # the second run continued instead of starting over from step 1
    assert ResNet.from_pretrained(out / BACKBONE_DIR).training_info["epochs"] == 6
    uninterrupted = squeeze(SqueezeConfig(output_dir=str(tmp_path / "whole"), dataset=tiny_dataset, epochs=6,
                                          checkpoint_steps=1, **TINY))
    assert_same_tensors(out / BACKBONE_DIR / "model.safetensors", uninterrupted / "model.safetensors")


def test_probe_kill_and_resume_is_bit_identical(tiny_dataset, tmp_path):
    backbone = tmp_path / "backbone"
    bn_backbone(num_classes=0).save_pretrained(backbone)
    values = dict(backbone=str(backbone), dataset=tiny_dataset, epochs=150, batch_size=32, lr=0.5, cpu=True,
                  report_to="none", mixed_precision="no")
    out = tmp_path / "killed"
    kill_when(["probe", *[f"--{k}={v}" for k, v in {**values, "output_dir": out}.items() if k != "cpu"]],
              lambda: checkpoint_done(out))
    assert not (out / MODEL_DIR).exists() and (out / "config.json").exists()
    resumed = probe(ProbeConfig(output_dir=str(out), **values))
    assert not (out / "checkpoints").exists()
    uninterrupted = probe(ProbeConfig(output_dir=str(tmp_path / "whole"), **values))
    assert_same_tensors(resumed / "model.safetensors", uninterrupted / "model.safetensors")


def test_compiled_mocov2_trains_like_the_eager_one(tiny_dataset, tmp_path):
    """--compile runs the squeeze's training forward (MoCo's split-BN query encoder) under torch.compile: the
    same steps and losses as the eager run within rounding, reproducible, and a backbone saved under the plain
    module's names. (The supervised plan wraps its model the same way.)"""
    skip_unless_compile_allowed()
    runs = {}
    for name, compile_model in (("eager", False), ("compiled", True), ("again", True)):
        out = tmp_path / name
        path = squeeze(SqueezeConfig(output_dir=str(out), dataset=tiny_dataset, epochs=2,
                                     mixed_precision="no", compile=compile_model, **TINY))
        runs[name] = (torch.tensor([row["loss"] for row in _metrics(out)]), path)
    (eager, eager_path), (compiled, compiled_path), (again, again_path) = runs["eager"], runs["compiled"], runs["again"]
    assert len(compiled) == len(eager) == 2 * (128 // 32)
    torch.testing.assert_close(compiled, eager, rtol=2e-3, atol=1e-4)
    assert torch.equal(compiled, again)
    assert_same_tensors(compiled_path / "model.safetensors", again_path / "model.safetensors")
    plain, saved = (ResNet.from_pretrained(p).state_dict() for p in (eager_path, compiled_path))
    assert saved.keys() == plain.keys()
