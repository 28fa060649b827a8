"""Tiny on-disk datasets and models shared by the tests (recover, relabel, evaluate, Hub round trips), and a
real ``kill -9`` of a running stage."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def synthetic_images(n_per_class: int, num_classes: int = 3, size: int = 12, seed: int = 0):
    """Learnable grey images: class c has a bright square in a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        for _ in range(n_per_class):
            img = rng.integers(0, 60, size=(size, size)).astype(np.uint8)
            r0 = (c * size // num_classes) % (size - 4)
            c0 = rng.integers(0, size - 4)
            img[r0 : r0 + 4, c0 : c0 + 4] = 230
            images.append(img)
            labels.append(c)
    return images, labels


def _png(array) -> dict:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _dataset(images, labels, num_classes: int, extra: dict | None = None, class_names=None):
    import datasets

    names = class_names or [f"c{i}" for i in range(num_classes)]
    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    columns = {"image": [_png(x) for x in images], "label": labels}
    for name, values in (extra or {}).items():
        features[name] = datasets.Value("int64")
        columns[name] = values
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def write_image_dataset(folder: Path, n_train_per_class: int = 20, n_test_per_class: int = 10,
                        num_classes: int = 3, size: int = 12) -> Path:
    """A real-data stand-in in the Hub parquet layout (train + test splits)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train_per_class, 1), ("test", n_test_per_class, 2)):
        images, labels = synthetic_images(n, num_classes, size, seed)
        _dataset(images, labels, num_classes).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def write_distilled(folder: Path, ipc: int = 4, num_classes: int = 3, size: int = 12, seed: int = 7,
                    class_names=None) -> Path:
    """A distilled-set-like folder: data/train-*.parquet with image, label, ipc_index, unit_seed."""
    images, labels = synthetic_images(ipc, num_classes, size, seed)
    ipc_index = [i % ipc for i in range(len(labels))]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    extra = {"ipc_index": ipc_index, "unit_seed": ipc_index}
    _dataset(images, labels, num_classes, extra, class_names).to_parquet(
        str(folder / "data" / "train-00000-of-00001.parquet")
    )
    return folder


def tiny_teacher(folder: Path | None = None, num_classes: int = 3, size: int = 12, seed: int = 0):
    """An untrained resnet10 (width 4) teacher, saved with save_pretrained when ``folder`` is given."""
    import torch

    from hf_scdd.models import ResNet

    torch.manual_seed(seed)
    model = ResNet("resnet10", num_classes=num_classes, in_channels=1, width=4, image_size=size,
                   mean=[0.2], std=[0.3], class_names=[f"c{i}" for i in range(num_classes)]).eval()
    if folder is not None:
        model.save_pretrained(folder)
    return model


def bn_backbone(num_classes: int = 4, seed: int = 0, size: int = 16, class_names=None, **training):
    """A resnet10 (width 8, grey ``size``² input) whose BN running statistics are non-trivial (three
    train-mode passes over shifted noise), in eval mode: a recovery model for the tests."""
    import torch

    from hf_scdd.models import ResNet

    torch.manual_seed(seed)
    model = ResNet("resnet10", num_classes=num_classes, in_channels=1, width=8, image_size=size, mean=[0.4],
                   std=[0.3], class_names=class_names, training=training or None)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, size, size) * 1.5 + 0.3)
    return model.eval()


def write_random_dataset(folder: Path, class_names: list[str], size: int = 16, per_split: int = 8) -> Path:
    """A grey dataset of uniform-noise images (train/test, ``per_split`` each, labels cycling through the
    classes) in the Hub parquet layout: what recovery needs of real data is only its class names."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})
    rng = np.random.default_rng(0)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ds = datasets.Dataset.from_dict(
            {"image": [_png(rng.integers(0, 256, (size, size), dtype=np.uint8)) for _ in range(per_split)],
             "label": [i % len(class_names) for i in range(per_split)]},
            features=features,
        )
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def stage_env(**extra: str) -> dict[str, str]:
    """The environment of a stage subprocess: this checkout's sources, CPU, one thread, unbuffered output."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def kill_when(args: list[str], ready: Callable[[], bool], *, timeout: float = 240, env: dict | None = None) -> None:
    """Run ``python -m hf_scdd <args>`` and SIGKILL it (a real ``kill -9``) as soon as ``ready()`` holds.

    Fails when the process ends first or ``ready()`` never holds: the test would then not test a resumption.
    """
    process = subprocess.Popen([sys.executable, "-m", "hf_scdd", *args], env=env or stage_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + timeout
    try:
        while not ready():
            if process.poll() is not None:
                raise AssertionError("the run ended before it could be killed:\n" + process.stdout.read()[-3000:])
            if time.time() > deadline:
                raise AssertionError(f"the kill condition did not hold within {timeout} s")
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.communicate()


def checkpoint_done(folder: Path, min_step: int = 1) -> bool:
    """Whether a training stage in ``folder`` has finished a ``save_state`` checkpoint at ``min_step`` or later."""
    return any(int(p.parent.name.split("_")[1]) >= min_step for p in (folder / "checkpoints").glob("step_*/DONE"))


def tensors_of(path: Path) -> tuple[dict, dict]:
    """A safetensors file's tensors and header metadata."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def assert_same_tensors(a: Path, b: Path) -> None:
    """Two safetensors files hold bit-identical tensors (and the same header)."""
    import torch

    (ta, ma), (tb, mb) = tensors_of(a), tensors_of(b)
    assert ta.keys() == tb.keys() and ma == mb, (a, b)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"{key} differs between {a} and {b}"


def tiny_transformers_classifier(labels: list[str], seed: int = 0, channels: int = 3):
    """A tiny transformers ResNetForImageClassification with non-trivial BN running statistics (eval mode)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
        num_labels=len(labels), num_channels=channels, id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    model = transformers.ResNetForImageClassification(config)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial BN running statistics, so eval logits depend on them
            model(pixel_values=torch.randn(6, channels, 32, 32) * 2 + 1)
    return model.eval()


def quadrant_images(per_class: int, seed, size: int = 16):
    """Grey images whose class (0-3) is the quadrant of a bright square: learnable in a few steps. ``seed`` is
    an int or a numpy Generator (to continue one stream over several splits)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(4):
        for _ in range(per_class):
            img = rng.integers(0, 60, (size, size)).astype(np.uint8)
            r, q = divmod(c, 2)
            top, left = size // 2 * r + int(rng.integers(0, 3)), size // 2 * q + int(rng.integers(0, 3))
            img[top : top + 5, left : left + 5] = 255
            images.append(img)
            labels.append(c)
    return images, labels


def write_sharded_parquet(folder: Path, train_shards=(72, 56), test_rows: int = 32) -> Path:
    """Quadrant images in the Hub parquet layout with several (unequal) train shards, so that a streamed
    split gives DataLoader workers and processes shards of different lengths."""
    images, labels = quadrant_images(sum(train_shards) // 4, seed=3)
    order = np.random.default_rng(4).permutation(len(labels))  # classes mixed across shards
    (folder / "data").mkdir(parents=True, exist_ok=True)
    start = 0
    for i, rows in enumerate(train_shards):
        part = order[start : start + rows]
        start += rows
        _dataset([images[j] for j in part], [labels[j] for j in part], 4).to_parquet(
            str(folder / "data" / f"train-{i:05d}-of-{len(train_shards):05d}.parquet"))
    test_images, test_labels = quadrant_images(test_rows // 4, seed=5)
    _dataset(test_images, test_labels, 4).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    return folder


def skip_unless_compile_allowed() -> None:
    """Skip a compiled-training test where ``check_compile`` refuses on purpose (``ONEDNN_MAX_CPU_ISA`` below the
    CPU's bf16 units, as set to emulate an AVX2-only machine: compiled steps aborted the process there)."""
    import pytest

    from hf_scdd.training.accelerator import cpu_capped_below_itself

    pytest.importorskip("torch._inductor")
    if cpu_capped_below_itself():
        pytest.skip("torch.compile is refused under a oneDNN cap below this CPU's bf16 units (check_compile)")
