"""What a recovery run needs besides its units: the real starting images and the measured BN targets.

Both are computed once, on the main process, before any unit runs, and stored next to the output
in ``inputs/`` (``init_images.safetensors``: the chosen images and their indices, into the training split or,
for a streamed dataset, into the per-class pool read from it (metadata ``indices_into``);
``bn_targets.safetensors``: per-layer global and per-class statistics of clean training images). Every rank and
every rerun then reads the same files, so a unit's result stays independent of the process count and a resumed
run continues from identical inputs. ``inputs/`` is a working folder like ``units/``: never uploaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loading import ImageData
from ..data.tensors import normalize
from ..formats.distilled_set import INPUTS_DIR
from ..losses.bn_matching import BNTargets, measure_bn_targets
from ..training.accelerator import Precision
from ..utils import atomic_save_safetensors
from .selection import class_seed, select_real_images

STREAM_POOL_PER_IPC = 10
"""On a stream (no random access), real starting images are chosen among this many candidates per image per
class (with ``--selection_pool 0``), read in one pass."""
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
            images, indices, among = real_starting_images(observer, config, data, precision)
            atomic_save_safetensors(init_path, {"images": images.contiguous(), "train_indices": indices},
                                    {"selection": str(config.selection), "indices_into": among})
    accelerator.wait_for_everyone()
    targets = _load(targets_path) if config.bn_targets == "clean" else None
    init = _load(init_path)["images"] if config.init == "real" else None
    return (BNTargets.from_tensors(targets, "clean") if targets is not None else None), init


def real_starting_images(
    observer: nn.Module | None, config: Any, data: ImageData, precision: Precision | None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(uint8 images [K, IPC, C, H, W], their indices [K, IPC·n²], what the indices index)`` (n² real images
    tiled into each starting image with ``--patches_per_side n``; see :func:`tile_mosaics`), read through the
    training split's data source: by index when it has random access (``train``: training-split rows), else
    from a seeded per-class pool read in one pass of the stream (``pool``: positions in that pool, whose size is
    ``--selection_pool``, or :data:`STREAM_POOL_PER_IPC` × IPC when that is 0 = all)."""
    source, per_class = data.source("train"), config.ipc * config.patches_per_side**2
    if source.random_access:
        images, labels, pool, among = source.indexed_images(), source.labels(), config.selection_pool, "train"
    else:
        size = max(config.selection_pool or STREAM_POOL_PER_IPC * per_class, per_class)
        images, labels = source.per_class_subsets(size, [config.seed], data.num_classes)[config.seed]
        pool, among = 0, "pool"
    indices = select_real_images(observer, images, labels, num_classes=data.num_classes, ipc=per_class,
                                 how=config.selection, seed=config.seed, pool=pool, precision=precision)
    chosen = images[indices.flatten()]
    chosen = chosen.view(*indices.shape, *chosen.shape[1:])
    if config.patches_per_side > 1:
        chosen = tile_mosaics(chosen, config.patches_per_side)
    return chosen, indices, among


def tile_mosaics(images: torch.Tensor, per_side: int) -> torch.Tensor:
    """RDED-style real-patch images: uint8 ``[K, IPC·n², C, H, W]`` → ``[K, IPC, C, H, W]``, each image an
    n×n grid of area-downscaled real images of its class (n = ``per_side``). Image ``j`` takes the chosen
    images ``j, j + IPC, j + 2·IPC, …``: the selections order their picks by cluster size, so every mosaic
    mixes large and small clusters instead of one mosaic holding the class's most typical modes."""
    k, m, c, h, w = images.shape
    tiles, ipc = per_side**2, m // per_side**2
    rows = [h * i // per_side for i in range(per_side + 1)]
    cols = [w * i // per_side for i in range(per_side + 1)]
    out = torch.empty((k, ipc, c, h, w), dtype=torch.uint8)
    for t in range(tiles):
        r, q = divmod(t, per_side)
        size = (rows[r + 1] - rows[r], cols[q + 1] - cols[q])
        part = images[:, t * ipc : (t + 1) * ipc].reshape(k * ipc, c, h, w).float()
        small = F.interpolate(part, size=size, mode="area").round().clamp(0, 255).to(torch.uint8)
        out[:, :, :, rows[r] : rows[r + 1], cols[q] : cols[q + 1]] = small.view(k, ipc, c, *size)
    return out


def clean_bn_targets(
    model: nn.Module, data: ImageData, samples: int, seed: int, precision: Precision | None, batch_size: int = 500
) -> BNTargets:
    """BN targets measured on a seeded sample of ``samples`` clean training images (no augmentation), in the
    model's eval mode and with its normalisation, read through the training split's data source (a stream: the
    first ``samples`` of its seeded shuffle)."""
    source = data.source("train")
    seed = class_seed(seed, 1 << 30)  # apart from every class's draw
    device = next(model.parameters()).device

    def batches():
        if source.random_access:
            chosen = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:samples]
            parts = (source.take(chosen[start : start + batch_size]) for start in range(0, len(chosen), batch_size))
        else:
            parts = source.subset(samples, seed).batches(batch_size)
        for images, labels in parts:
            yield normalize(images.to(device), model.mean, model.std), labels

    return measure_bn_targets(model, batches(), data.num_classes, precision)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))
