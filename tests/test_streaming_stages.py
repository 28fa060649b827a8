"""Squeeze, probe and evaluate on streamed data (issue 14's acceptance): on a generated ImageFolder larger than
the in-memory threshold (so ``--data_source auto`` streams it) with the same results as the in-memory path,
and on a parquet folder loaded with ``streaming=True``, in one process and in two (``accelerate launch``).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_scdd.configs import ConfigError
from hf_scdd.data import load_image_dataset
from hf_scdd.data.sources import IN_MEMORY_MAX_BYTES_ENV
from hf_scdd.data.tensors import normalize
from hf_scdd.models import ResNet
from hf_scdd.models.loading import BACKBONE_DIR, MODEL_DIR
from hf_scdd.stages.evaluate import EvaluateConfig, run_evaluation
from hf_scdd.stages.probe import ProbeConfig
from hf_scdd.stages.probe import main as probe
from hf_scdd.stages.squeeze import SqueezeConfig
from hf_scdd.stages.squeeze import main as squeeze
from hf_scdd.training.accelerator import make_accelerator
from hf_scdd.training.evaluation import evaluate_top1

from helpers import write_distilled, write_sharded_parquet

TINY = dict(arch="resnet10", width=4, batch_size=32, moco_k=64, moco_dim=16, bn_splits=4, cpu=True, report_to="jsonl")
EVAL = dict(label_modes=["hard"], arch="resnet10", width=4, epochs=2, eval_points=2, batch_size=8, seeds=[0],
            cpu=True, report_to="none")


def _runtime(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["runtime"]


def _steps(folder: Path) -> int:
    path = next((folder / "logs").glob("*.metrics.jsonl"))
    return sum('"loss"' in line for line in path.read_text().splitlines())


def _memory_top1(model_dir: Path, dataset: str, tmp_path: Path) -> float:
    """The saved model's top-1 on the test split read through the in-memory source (the reference count)."""
    model = ResNet.from_pretrained(model_dir)
    accelerator = make_accelerator(tmp_path / "score", cpu=True, report_to="none")
    source = load_image_dataset(dataset, data_source="memory").source("test")
    return evaluate_top1(accelerator, model, source, lambda x: normalize(x, model.mean, model.std))


@pytest.fixture(scope="module")
def streamed_folder(tmp_path_factory) -> str:
    """A parquet folder: 128 train rows in two unequal shards (72 + 56), 32 test rows, 4 classes (c0..c3)."""
    return str(write_sharded_parquet(tmp_path_factory.mktemp("streamed")))


def _run_stages(dataset: str, out: Path, distilled: Path, **data_fields) -> dict:
    """squeeze (MoCo v2, 2 epochs) → probe → evaluate (hard labels, random and full-data baselines)."""
    squeeze(SqueezeConfig(output_dir=str(out / "squeeze"), dataset=dataset, epochs=2, lr=0.1, **TINY, **data_fields))
    probe(ProbeConfig(output_dir=str(out / "probe"), backbone=str(out / "squeeze"), dataset=dataset, epochs=3,
                      batch_size=32, cpu=True, report_to="none", **data_fields))
    full = {} if data_fields.get("streaming") else dict(full_data_baseline=True, full_data_steps=6)
    report = run_evaluation(EvaluateConfig(output_dir=str(out / "eval"), distilled=str(distilled), dataset=dataset,
                                           **EVAL, **full, **data_fields))
    return {
        "backbone": ResNet.from_pretrained(out / "squeeze" / BACKBONE_DIR).state_dict(),
        "probe": ResNet.from_pretrained(out / "probe" / MODEL_DIR).state_dict(),
        "probe_top1": json.loads((out / "probe" / "probe_results.json").read_text())["probe_top1"],
        "report": report,
    }


def test_imagefolder_over_the_threshold_streams_with_the_results_of_the_memory_path(
    tiny_image_folder, tmp_path, monkeypatch
):
    # 128 train images of 16x16 decode to 32 KB, over a 20 KB threshold: auto streams them (the probe's
    # 128 x 32 features, 16 KB, still fit). A private cache shows that nothing is decoded whole.
    monkeypatch.setenv(IN_MEMORY_MAX_BYTES_ENV, "20000")
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_SCDD_CACHE", str(cache))
    distilled = write_distilled(tmp_path / "distilled", ipc=3, num_classes=4, size=16,
                                class_names=[f"class{i}" for i in range(4)])
    streamed = _run_stages(tiny_image_folder, tmp_path / "auto", distilled, num_workers=1)
    for stage in ("squeeze", "probe", "eval"):
        assert _runtime(tmp_path / "auto" / stage)["data_source"] == "stream"
    assert not (cache / "tensors").exists()  # no split was decoded into tensors
    in_memory = _run_stages(tiny_image_folder, tmp_path / "memory", distilled, data_source="memory")
    assert _runtime(tmp_path / "memory" / "squeeze")["data_source"] == "memory" and (cache / "tensors").exists()

    # the same rows in the same order through the same decoder: the same numbers, bit for bit
    for key in ("backbone", "probe"):
        assert streamed[key].keys() == in_memory[key].keys()
        assert all(torch.equal(streamed[key][k], in_memory[key][k]) for k in streamed[key]), key
    assert streamed["probe_top1"] == in_memory["probe_top1"] > 0.25
    results = {name: streamed["report"]["results"][name] for name in ("distilled/hard", "random/hard", "full/hard")}
    for name, row in results.items():
        assert row["test_count"] == 32, name
        assert row["final_top1_mean"] == in_memory["report"]["results"][name]["final_top1_mean"], name
    assert streamed["report"]["runs"]["full/hard"][0]["num_images"] == 128


def test_squeeze_probe_and_evaluate_on_a_streaming_dataset(streamed_folder, tmp_path):
    out = tmp_path / "run"
    distilled = write_distilled(tmp_path / "distilled", ipc=3, num_classes=4, size=16)
    result = _run_stages(streamed_folder, out, distilled, streaming=True, num_workers=2)
    for stage in ("squeeze", "probe", "eval"):
        assert _runtime(out / stage)["data_source"] == "stream"
        assert json.loads((out / stage / "config.json").read_text())["config"]["streaming"] is True
    # 128 streamed rows at a global batch of 32: 4 steps per epoch from shards of 72 and 56 rows
    assert _steps(out / "squeeze") == 2 * 4
    backbone = ResNet.from_pretrained(out / "squeeze" / BACKBONE_DIR)
    assert backbone.training_info["train_samples"] == 128
    # the probe scored every streamed test image once: the in-memory count of the same model agrees
    assert result["probe_top1"] == pytest.approx(_memory_top1(out / "probe" / MODEL_DIR, streamed_folder, tmp_path))
    report = result["report"]
    assert report["test_size"] == 32
    for name in ("distilled/hard", "random/hard"):
        assert report["results"][name]["test_count"] == 32
    assert report["runs"]["random/hard"][0]["num_images"] == 3 * 4  # IPC 3 per class, chosen in one pass
    # a protocol that needs random access is refused before anything is written
    with pytest.raises(ConfigError, match="full_data_baseline"):
        run_evaluation(EvaluateConfig(output_dir=str(tmp_path / "full"), distilled=str(distilled),
                                      dataset=streamed_folder, streaming=True, full_data_baseline=True, **EVAL))
    assert not (tmp_path / "full").exists()


def test_two_process_squeeze_and_probe_on_a_streaming_dataset(streamed_folder, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    common = [f"--dataset={streamed_folder}", "--streaming=true", "--num_workers=1", "--report_to=jsonl"]
    tiny = {k: v for k, v in TINY.items() if k != "cpu"}
    stages = [
        ["squeeze", f"--output_dir={tmp_path / 'squeeze'}", "--epochs=1", *[f"--{k}={v}" for k, v in tiny.items()]],
        ["probe", f"--output_dir={tmp_path / 'probe'}", f"--backbone={tmp_path / 'squeeze'}", "--epochs=2",
         "--batch_size=32", "--feature_batch_size=16"],
    ]
    for stage in stages:
        port = str(29600 + random.randint(0, 2000))
        proc = subprocess.run([*launch, "--main_process_port", port, "-m", "hf_scdd", *stage, *common], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # each rank read its own shard (72 or 56 rows) and both took the same 4 steps of 16
    assert _steps(tmp_path / "squeeze") == 4
    top1 = json.loads((tmp_path / "probe" / "probe_results.json").read_text())["probe_top1"]
    assert top1 == pytest.approx(_memory_top1(tmp_path / "probe" / MODEL_DIR, streamed_folder, tmp_path))


def test_the_imagenet_config_describes_a_streamed_run():
    """configs/imagenet1k.yaml: every stage the pipeline builds from it streams 224 px images, and evaluate's
    protocol is one a stream can do (no full-data baseline)."""
    from hf_scdd.configs import parse_config
    from hf_scdd.pipeline import PipelineConfig, stage_config
    from hf_scdd.stages.recover import RecoverConfig
    from hf_scdd.training.post_train import full_data_check

    config = parse_config(PipelineConfig, ["--config", str(Path(__file__).parents[1] / "configs" / "imagenet1k.yaml")])
    evaluate = stage_config(config, EvaluateConfig, "evaluate", {}, Path("out"))
    recover = stage_config(config, RecoverConfig, "recover", {}, Path("out"))
    for stage in (evaluate, recover):
        assert stage.streaming and stage.image_size == 224 and stage.data_source in ("auto", "stream")
    assert full_data_check(evaluate.full_data_baseline, evaluate.streaming)[0]
    assert evaluate.epochs == 300 and evaluate.stem == "imagenet"


def test_recover_chooses_real_starting_images_through_every_source(streamed_folder, tmp_path):
    """Real-image initialisation (``--method hf_scdd``: k-means on the recovery model's features) and BN targets
    from clean images read the training split through its source: the same images by index in memory and
    streamed, and images of the right class from a one-pass pool of a ``streaming=True`` dataset."""
    from safetensors.torch import load_file

    from hf_scdd.stages.recover import RecoverConfig
    from hf_scdd.stages.recover import main as recover

    from helpers import bn_backbone

    bn_backbone(class_names=[f"c{i}" for i in range(4)]).save_pretrained(tmp_path / "backbone")
    inputs = {}
    for name, fields in (("memory", {"data_source": "memory"}), ("stream", {"data_source": "stream"}),
                         ("streaming", {"streaming": True})):
        out = recover(RecoverConfig(
            output_dir=str(tmp_path / name), backbone=str(tmp_path / "backbone"), dataset=streamed_folder, ipc=2,
            method="hf_scdd", selection_pool=8, bn_targets="clean", bn_target_samples=64, iterations=0, group_size=4, cpu=True,
            mixed_precision="no", report_to="none", num_workers=1, **fields))
        inputs[name] = {**load_file(str(out / "inputs" / "init_images.safetensors")),
                        **load_file(str(out / "inputs" / "bn_targets.safetensors"))}
    assert inputs["memory"].keys() == inputs["stream"].keys()
    assert all(torch.equal(inputs["memory"][k], inputs["stream"][k]) for k in inputs["memory"])
    images, labels = load_image_dataset(streamed_folder, data_source="memory").tensors("train")
    by_content = {bytes(image.numpy()): int(label) for image, label in zip(images, labels)}
    streamed = inputs["streaming"]["images"]  # [classes, IPC, C, H, W], chosen among 8 per class
    assert streamed.shape == (4, 2, 1, 16, 16)
    assert [[by_content[bytes(image.numpy())] for image in row] for row in streamed] == [[c, c] for c in range(4)]
