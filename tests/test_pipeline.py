"""End to end: ``examples/distill.py`` under ``accelerate launch`` with 2 CPU processes, on a tiny config."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import write_image_dataset

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "arch": "resnet10",
    "width": 4,
    "ipc": 2,
    "iterations": 6,
    "eval_steps": 4,
    "eval_points": 2,
    "seeds": [0],
    "label_modes": ["online", "stored", "hard"],
    "report_to": "none",
    "squeeze": {"epochs": 1, "batch_size": 16, "moco_k": 32, "moco_dim": 8, "bn_splits": 2},
    "teacher_squeeze": {"epochs": 1, "batch_size": 16},
    "probe": {"epochs": 2, "batch_size": 16},
    "evaluate": {"batch_size": 8},
    "relabel": {"batch_size": 8},
}


def _launch(config_path: Path, *extra: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    port = str(29600 + random.randint(2100, 3900))
    distributed = ["--multi_gpu", "--main_process_port", port] if processes > 1 else ["--cpu"]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", *distributed, "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO / "examples" / "distill.py"), "--config", str(config_path), "--cpu", "true", *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540, cwd=REPO)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    dataset = write_image_dataset(root / "dataset", n_train_per_class=16, n_test_per_class=6, num_classes=3, size=12)
    config = {**TINY, "dataset": str(dataset), "output_dir": str(root / "out")}
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = _launch(config_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root / "out", config_path, result


def test_two_process_pipeline_writes_every_artefact(tiny_run):
    out, _, result = tiny_run
    from hf_scdd.hub import load_distilled

    distilled = load_distilled(out / "distilled")[0]  # load_dataset(folder) caches by folder name
    assert len(distilled) == 3 * 2
    assert sorted(distilled["label"]) == [0, 0, 1, 1, 2, 2]
    assert distilled.features["label"].names == ["c0", "c1", "c2"]
    assert sorted((out / "distilled" / "soft_labels").glob("epoch_*.safetensors"))
    for artefact in ("grid.png", "results.md", "summary.json", "bn_stats/bn_stats.png", "evaluate/curves.png",
                     "evaluate/student/model.safetensors", "probe/model/model.safetensors"):
        assert (out / artefact).exists(), artefact
    report = json.loads((out / "evaluate" / "results.json").read_text())
    assert report["num_processes"] == 2
    for key in ("distilled/online", "distilled/stored", "distilled/hard", "random/online", "random/hard"):
        assert key in report["results"], key
        assert report["results"][key]["test_count"] == 18  # the whole test split, scored once per image
    # the library's set and the paper's configuration, side by side with the random subset, printed last
    results_md = (out / "results.md").read_text()
    for row in ("| hf_scdd | 6 |", "| scdd | 6 |", "| random | 6 |", "IOR/online"):
        assert row in results_md and row in result.stdout, row
    scdd = json.loads((out / "distilled_scdd" / "config.json").read_text())["config"]
    assert scdd["init"] == "noise" and json.loads((out / "distilled" / "config.json").read_text())["config"]["init"] == "real"
    # the paper's arm trains KD students only by default (its protocol), the library's set every asked mode
    assert set(json.loads((out / "evaluate_scdd" / "results.json").read_text())["results"]) == {"distilled/online"}


def test_the_scdd_arm_label_modes_follow_the_main_ones_unless_given():
    from hf_scdd.errors import ConfigError
    from hf_scdd.pipeline import PipelineConfig

    assert PipelineConfig(label_modes=["online", "stored", "hard"]).scdd_label_modes() == ["online"]
    assert PipelineConfig(label_modes=["hard", "stored"]).scdd_label_modes() == ["hard"]
    assert PipelineConfig(compare_label_modes=["online", "hard"]).scdd_label_modes() == ["online", "hard"]
    with pytest.raises(ConfigError, match="compare_label_modes.*without 'stored'"):
        PipelineConfig(label_modes=["online", "stored"], compare_label_modes=["stored"]).validate()


def test_the_scdd_arm_is_planned_only_with_a_label_mode_to_evaluate_it(tmp_path):
    from hf_scdd.pipeline import PipelineConfig, plan

    def stages(**values) -> list[str]:
        return [step.name for step in plan(PipelineConfig(output_dir=str(tmp_path), **values)).steps]

    assert {"recover_scdd", "evaluate_scdd"} <= set(stages(label_modes=["online", "stored"]))
    assert not {"recover_scdd", "evaluate_scdd"} & set(stages(label_modes=["stored"]))  # nothing would use it


def test_rerun_skips_finished_stages(tiny_run):
    out, config_path, _ = tiny_run
    before = {p: p.stat().st_mtime_ns for p in (out / "distilled" / "data").glob("*.parquet")}
    result = _launch(config_path, processes=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "===== recover =====" not in result.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "distilled" / "data").glob("*.parquet")} == before


def test_changed_config_is_refused(tiny_run):
    out, config_path, _ = tiny_run
    result = _launch(config_path, "--ipc", "3", processes=1)
    assert result.returncode != 0
    assert "different config" in (result.stdout + result.stderr)


def test_push_to_hub_namespace_pushes_backbone_set_and_student(tiny_run, fake_hub):
    """``--push_to_hub NAMESPACE``: the three artefacts land on the (loopback) Hub with their stage-written cards."""
    import datasets
    from accelerate import PartialState
    from huggingface_hub import HfApi, ModelCard

    from hf_scdd.models import ResNet
    from hf_scdd.pipeline import PipelineConfig, push_artefacts

    out = tiny_run[0]
    config = PipelineConfig(dataset=str(out.parent / "dataset"), ipc=2, push_to_hub="tester")
    repos = push_artefacts(PartialState(cpu=True), config, out / "probe" / "model", out / "distilled",
                           out / "evaluate" / "student")
    assert set(repos) == {"backbone", "distilled", "student"}
    assert ModelCard.load(repos["backbone"]).data.to_dict()["library_name"] == "hf_scdd"
    assert ResNet.from_pretrained(repos["backbone"]).num_classes == 3
    student_card = ModelCard.load(repos["student"]).data.to_dict()
    assert student_card["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert len(datasets.load_dataset(repos["distilled"])["train"]) == 6
    files = HfApi().list_repo_files(repos["distilled"], repo_type="dataset")
    assert any(f.startswith("soft_labels/epoch_") for f in files)
