"""Post-training: the three label modes learn, metrics are honest, 2-process runs score the full test set."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hf_scdd.errors import ConfigError
from hf_scdd.formats.soft_labels import SoftLabelStore
from hf_scdd.losses.distillation import kd_loss
from hf_scdd.models.loading import teacher_fn
from hf_scdd.stages.evaluate import EvaluateConfig, run_evaluation
from hf_scdd.stages.relabel import RelabelConfig, relabel
from hf_scdd.training.post_train import TargetSource, summarize_history
from hf_scdd.training.report import aggregate, protocol_metrics
from hf_scdd.utils import BF16_CPU_KINDS, cpu_info
from helpers import (
    assert_same_tensors, checkpoint_done, kill_when, skip_unless_compile_allowed, synthetic_images, tiny_teacher,
    write_distilled, write_image_dataset,
)


def test_kd_loss_is_sc_dd_kl_batchmean():
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    p = F.softmax(t / T, 1)
    manual = (p * (p.log() - F.log_softmax(s / T, 1))).sum() / 4
    torch.testing.assert_close(kd_loss(s, p, T), manual)
    torch.testing.assert_close(kd_loss(s, p, T, t2=True), manual * T * T)


@pytest.mark.parametrize("mode", ["online", "stored", "hard"])
def test_each_label_mode_lowers_the_loss(tmp_path, mode):
    from hf_scdd.models import ResNet

    images_np, labels_list = synthetic_images(4, 3, 12, seed=5)
    images = torch.stack([torch.from_numpy(x)[None] for x in images_np])
    labels = torch.tensor(labels_list)
    teacher = tiny_teacher(seed=1)
    store = None
    if mode == "stored":
        config = RelabelConfig(distilled="x", teacher="tiny", epochs=1, batch_size=6, temperature=4.0, cpu=True)
        relabel(config, images=images, teacher=teacher, labels_dir=tmp_path / "labels")
        store = SoftLabelStore(tmp_path / "labels", num_images=12, num_classes=3)
    spec = EvaluateConfig(batch_size=6).view_spec()
    source = TargetSource(
        mode, images=images, labels=labels, batch_size=6, view_spec=spec, seed=0, temperature=4.0,
        teacher=teacher_fn(teacher, teacher.mean, teacher.std), store=store,
    )
    torch.manual_seed(0)
    student = ResNet("resnet10", num_classes=3, in_channels=1, width=4, image_size=12)
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    source.start_epoch(0)

    def preprocess(x):
        return (x - 0.2) / 0.3

    losses = []
    for _ in range(25):  # the same recorded batch each step: the loss must fall
        loss = source.loss(student.train(), 0, preprocess, "cpu")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses


def test_final_and_best_are_reported_separately():
    history = [
        {"epoch": 1, "loss": 2.0},
        {"epoch": 2, "loss": 1.5, "top1": 0.60, "test_count": 50},
        {"epoch": 3, "loss": 1.2},
        {"epoch": 4, "loss": 1.0, "top1": 0.55, "test_count": 50},
    ]
    summary = summarize_history(history)
    assert summary["final_top1"] == 0.55 and summary["final_epoch"] == 4
    assert summary["best_top1"] == 0.60 and summary["best_epoch"] == 2
    assert summary["curve"] == [[2, 0.60], [4, 0.55]]
    runs = {
        "distilled/hard": [dict(summary, seed=0, epochs=4, num_images=9), dict(summary, seed=1, final_top1=0.45,
                                                                                epochs=4, num_images=9)],
        "random/hard": [dict(summary, seed=0, final_top1=0.40, epochs=4, num_images=9)],
        "full/hard": [dict(summary, seed=0, final_top1=0.90, epochs=4, num_images=90)],
    }
    table = aggregate(runs)
    assert table["distilled/hard"]["final_top1_mean"] == pytest.approx(0.50)
    assert table["distilled/hard"]["final_top1_std"] == pytest.approx(0.0707, abs=1e-3)
    metrics = protocol_metrics(table, ["hard"])
    assert metrics["IOR/hard"] == pytest.approx(0.10) and metrics["HLR"] == pytest.approx(0.40)


def test_student_card_metadata():
    from hf_scdd.hub.cards import StudentCardData, render_student_card

    card = render_student_card(StudentCardData(
        arch="resnet18", stem="cifar", width=64, num_classes=10, dataset="zalando-datasets/fashion_mnist",
        distilled="me/fmnist-scdd-ipc10", teacher="me/resnet18-fmnist", label_mode="stored", steps=3000, epochs=300,
        temperature=20.0, batch_size=64, mix="cutmix", seeds=[0, 1, 2], lr=0.008, weight_decay=0.01,
        final_top1_mean=0.81, final_top1_std=0.01, best_top1_mean=0.82, best_top1_std=0.01, test_size=10000,
        metrics={"IOR/stored": 0.03},
    ))
    assert card.data.base_model == "me/resnet18-fmnist"
    assert card.data.datasets == ["me/fmnist-scdd-ipc10", "zalando-datasets/fashion_mnist"]
    assert card.data.eval_results[0].metric_value == 0.81
    assert "model-index" in str(card) and "81.00 ± 1.00" in str(card)
    assert "AdamW (lr 0.008, wd 0.01)" in str(card)  # the optimiser it trained with, not a fixed text


@pytest.mark.both_precisions
def test_two_process_evaluate_scores_the_whole_test_set(tmp_path, hub_env, auto_precision):
    real = write_image_dataset(tmp_path / "real", n_train_per_class=8, n_test_per_class=17)  # 51 test images
    distilled = write_distilled(tmp_path / "dist", ipc=3)
    out = tmp_path / "eval"
    env = {**hub_env, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), hub_env.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29600 + random.randint(0, 2000)),
        "-m", "hf_scdd", "evaluate", "--distilled", str(distilled), "--dataset", str(real),
        "--label_modes", "hard", "--arch", "resnet10", "--width", "4", "--epochs", "2", "--eval_points", "2",
        "--batch_size", "4", "--eval_batch_size", "8", "--seeds", "0", "--output_dir", str(out),
        "--report_to", "none",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "results.json").read_text())
    assert report["test_size"] == 51 and report["num_processes"] == 2
    for key in ("distilled/hard", "random/hard"):
        row = report["results"][key]
        assert row["test_count"] == 51, row
        for run in report["runs"][key]:
            assert run["curve"] and len(run["curve"]) == 2
    assert (out / "results.md").exists() and (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["runtime"] == {"precision": auto_precision,
                                                                        "data_source": "memory"}
    student = json.loads((out / "student" / "config.json").read_text())
    assert student["arch"] == "resnet10" and student["training"]["label_mode"] == "hard"
    assert "model-index" in (out / "student" / "README.md").read_text()


def test_step_budget_gives_every_set_size_the_same_number_of_updates():
    from hf_scdd.training.post_train import evaluation_epochs, student_epochs

    # 100 images at batch 64 = 2 batches per epoch; 500 images = 8; the full 60k = 938
    assert student_epochs(100, 64, 3000) == 1500
    assert student_epochs(500, 64, 3000) == 375
    assert student_epochs(60_000, 64, 3000) == 4  # rounded up to whole epochs: 3752 steps
    assert student_epochs(500, 64, 3000, epochs=200) == 200  # an explicit epoch budget wins
    points = evaluation_epochs(1500, 8)
    assert len(points) == 8 and max(points) == 1500 and min(points) == round(1500 / 8)
    assert evaluation_epochs(3, 8) == {1, 2, 3}  # never more points than epochs


def test_protocol_self_check_flags_kd_below_hard_labels_on_random_subsets():
    from hf_scdd.training.report import markdown_report, protocol_checks

    def row(top1):
        return {"final_top1_mean": top1, "final_top1_std": 0.01, "best_top1_mean": top1, "best_top1_std": 0.01,
                "seeds": [0], "epochs": 10, "steps": 20, "num_images": 100, "test_count": 50}

    converged = {"random/hard": row(0.70), "random/online": row(0.85), "distilled/hard": row(0.75)}
    assert protocol_checks(converged) == []
    starved = {"random/hard": row(0.54), "random/online": row(0.23)}
    (warning,) = protocol_checks(starved)
    assert "random + online KD (23.00 %)" in warning and "--steps" in warning
    text = markdown_report(starved, {}, "t", teacher_top1=0.9203, checks=[warning])
    assert "| teacher (its own top-1) | – | 92.03 |" in text
    assert "| random | 100 | 54.00 ± 1.00 | 23.00 ± 1.00 |" in text  # hard and KD side by side
    assert "Protocol check failed" in text


def test_kill_during_the_random_baseline_then_rerun_keeps_the_student(tmp_path):
    """kill -9 while the random-subset baseline trains, then the same command: the results and the student are
    those of an uninterrupted run (the student's run kept its weights before it counted as finished)."""
    real = write_image_dataset(tmp_path / "real", n_train_per_class=8, n_test_per_class=4)
    distilled = write_distilled(tmp_path / "dist", ipc=4)
    values = dict(distilled=str(distilled), dataset=str(real), label_modes=["hard"], arch="resnet10", width=4,
                  epochs=20, eval_points=1, batch_size=4, seeds=[0], report_to="none", mixed_precision="no")
    out = tmp_path / "killed"
    args = [f"--{k}={v}" for k, v in values.items() if k not in ("label_modes", "seeds")]
    kill_when(["evaluate", *args, "--label_modes", "hard", "--seeds", "0", "--output_dir", str(out)],
              lambda: checkpoint_done(out / "runs" / "random-hard" / "seed0"))
    assert (out / "runs" / "distilled-hard" / "seed0" / "result.json").exists() and not (out / "results.json").exists()
    resumed = run_evaluation(EvaluateConfig(output_dir=str(out), cpu=True, **values))
    whole = run_evaluation(EvaluateConfig(output_dir=str(tmp_path / "whole"), cpu=True, **values))
    assert resumed["runs"] == whole["runs"] and resumed["results"] == whole["results"]
    assert_same_tensors(out / "student" / "model.safetensors", tmp_path / "whole" / "student" / "model.safetensors")
    assert json.loads((out / "results.json").read_text())["runs"] == whole["runs"]


def test_full_data_baseline_runs_kd_beside_hard_labels(tmp_path):
    """With online KD among the label modes, the full data gets a KD run too: the ceiling every KD cell is
    read against (no full-data run for stored labels, which belong to one set)."""
    real = write_image_dataset(tmp_path / "real", n_train_per_class=6, n_test_per_class=4)
    tiny_teacher(tmp_path / "teacher")
    report = run_evaluation(EvaluateConfig(
        output_dir=str(tmp_path / "eval"), distilled=str(write_distilled(tmp_path / "dist", ipc=2)),
        dataset=str(real), teacher=str(tmp_path / "teacher"), label_modes=["hard", "online"], arch="resnet10",
        width=4, steps=4, full_data_baseline=True, full_data_steps=5, eval_points=1, batch_size=4, seeds=[0],
        report_to="none", cpu=True, mixed_precision="no", save_student=False,
    ))
    assert set(report["results"]) == {f"{s}/{m}" for s in ("distilled", "random", "full") for m in ("hard", "online")}
    for mode in ("hard", "online"):
        run = report["runs"][f"full/{mode}"][0]
        assert run["num_images"] == 18 and run["mode"] == mode and run["steps"] == 5 and run["test_count"] == 12
    # the same views and seed, other targets: the KD run's losses are the teacher's, not the labels'
    assert report["runs"]["full/online"][0]["loss"] != report["runs"]["full/hard"][0]["loss"]


def _compiled_evaluation(folder: Path, real: Path, distilled: Path, teacher: Path, compile_model: bool) -> dict:
    return run_evaluation(EvaluateConfig(
        output_dir=str(folder), distilled=str(distilled), dataset=str(real), teacher=str(teacher),
        label_modes=["hard", "online"], arch="resnet10", width=4, steps=12, eval_points=1, batch_size=4, seeds=[0],
        random_baseline=False, report_to="none", cpu=True, mixed_precision="no", compile=compile_model,
    ))


def test_compiled_students_train_like_eager_ones_and_save_the_same_model(tmp_path):
    """--compile trains the student's forward under torch.compile: reproducible, within rounding of the eager
    run (the same views, targets and optimiser steps), and the saved student is the plain module's files."""
    skip_unless_compile_allowed()
    real = write_image_dataset(tmp_path / "real", n_train_per_class=6, n_test_per_class=4)
    tiny_teacher(tmp_path / "teacher")
    distilled = write_distilled(tmp_path / "dist", ipc=3)  # 9 images at batch 4: a full and a partial batch shape
    eager = _compiled_evaluation(tmp_path / "eager", real, distilled, tmp_path / "teacher", False)
    compiled = _compiled_evaluation(tmp_path / "compiled", real, distilled, tmp_path / "teacher", True)
    again = _compiled_evaluation(tmp_path / "again", real, distilled, tmp_path / "teacher", True)
    assert compiled["runs"] == again["runs"]
    assert_same_tensors(tmp_path / "compiled" / "student" / "model.safetensors",
                        tmp_path / "again" / "student" / "model.safetensors")
    for key in ("distilled/hard", "distilled/online"):
        (run_eager,), (run_compiled,) = eager["runs"][key], compiled["runs"][key]
        assert run_compiled["steps"] == run_eager["steps"] == 12
        losses_eager, losses_compiled = (torch.tensor([loss for _, loss in run["loss"]]) for run in (run_eager, run_compiled))
        torch.testing.assert_close(losses_compiled, losses_eager, rtol=1e-3, atol=1e-5)
    from safetensors.torch import load_file

    plain = load_file(tmp_path / "eager" / "student" / "model.safetensors")
    saved = load_file(tmp_path / "compiled" / "student" / "model.safetensors")
    assert saved.keys() == plain.keys() and not any("_orig_mod" in k for k in saved)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"]["compile"] is True


@pytest.mark.skipif(cpu_info()["cpu_kind"] not in BF16_CPU_KINDS,
                    reason="the refusal is for CPUs with bf16 units capped below them")
def test_compile_under_a_onednn_cap_below_the_cpu_is_one_clear_line(tmp_path, monkeypatch):
    real = write_image_dataset(tmp_path / "real", n_train_per_class=2, n_test_per_class=2)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    with pytest.raises(ConfigError, match="compile: true with ONEDNN_MAX_CPU_ISA=AVX2 below this CPU"):
        _compiled_evaluation(tmp_path / "eval", real, write_distilled(tmp_path / "dist", ipc=1), tmp_path / "t", True)
    assert not (tmp_path / "eval").exists()


def test_compile_without_a_cxx_compiler_is_one_clear_line(tmp_path, monkeypatch):
    real = write_image_dataset(tmp_path / "real", n_train_per_class=2, n_test_per_class=2)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="compile: true needs a C\\+\\+ compiler"):
        _compiled_evaluation(tmp_path / "eval", real, write_distilled(tmp_path / "dist", ipc=1), tmp_path / "t", True)
    assert not (tmp_path / "eval").exists()
