"""What a recovery run needs besides its units: the real starting images and the measured BN targets.

Both are computed once, on the main process, before any unit runs, and stored next to the output
in ``inputs/`` (``init_images.safetensors``: the chosen images and their training-split indices;
``bn_targets.safetensors``: per-layer global and per-class statistics of clean training images). Every rank and
every rerun then reads the same files, so a unit's result stays independent of the process count and a resumed
run continues from identical inputs. ``inputs/`` is a working folder like ``units/``: never uploaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.loading import ImageData
from ..data.tensors import normalize
from ..formats.distilled_set import INPUTS_DIR
from ..losses.bn_matching import BNTargets, measure_bn_targets
from ..training.accelerator import Precision
from ..utils import atomic_save_safetensors
from .selection import class_seed, select_real_images

INIT_FILE = "init_images.safetensors"
TARGETS_FILE = "bn_targets.safetensors"


def recovery_inputs(
    accelerator,
    config: Any,
    model: nn.Module,
    data: ImageData,
    folder: Path,
    *,
    observer: nn.Module | None,
    precision: Precision,
) -> tuple[BNTargets | None, torch.Tensor | None]:
    """``(BN targets or None for the running statistics, uint8 starting images [K, IPC, C, H, W] or None for
    noise)`` for a resolved recover ``config``; made on the main process if missing, then read by every rank."""
    targets_path, init_path = folder / INPUTS_DIR / TARGETS_FILE, folder / INPUTS_DIR / INIT_FILE
    if accelerator.is_main_process:
        if config.bn_targets == "clean" and not targets_path.exists():
            targets = clean_bn_targets(model, data, config.bn_target_samples, config.seed, precision)
            atomic_save_safetensors(targets_path, targets.tensors(), {"source": targets.source})
        if config.init == "real" and not init_path.exists():
            indices = select_real_images(
                observer, *data.tensors("train"), num_classes=data.num_classes, ipc=config.ipc,
                how=config.selection, seed=config.seed, pool=config.selection_pool, precision=precision,
            )
            train_images = data.tensors("train")[0]
            images = train_images[indices.flatten()].view(*indices.shape, *train_images.shape[1:])
            atomic_save_safetensors(init_path, {"images": images.contiguous(), "train_indices": indices},
                                    {"selection": str(config.selection)})
    accelerator.wait_for_everyone()
    targets = _load(targets_path) if config.bn_targets == "clean" else None
    init = _load(init_path)["images"] if config.init == "real" else None
    return (BNTargets.from_tensors(targets, "clean") if targets is not None else None), init


def clean_bn_targets(
    model: nn.Module, data: ImageData, samples: int, seed: int, precision: Precision | None, batch_size: int = 500
) -> BNTargets:
    """BN targets measured on a seeded sample of ``samples`` clean training images (no augmentation), in the
    model's eval mode and with its normalisation."""
    images, labels = data.tensors("train")
    generator = torch.Generator().manual_seed(class_seed(seed, 1 << 30))  # apart from every class's draw
    chosen = torch.randperm(len(images), generator=generator)[: min(samples, len(images))]
    device = next(model.parameters()).device

    def batches():
        for start in range(0, len(chosen), batch_size):
            idx = chosen[start : start + batch_size]
            yield normalize(images[idx].to(device), model.mean, model.std), labels[idx]

    return measure_bn_targets(model, batches(), data.num_classes, precision)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
