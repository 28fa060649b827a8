"""The distilled-set folder format: parquet shards, image codec, unit files, grid.

A distilled set is a folder that ``datasets.load_dataset(folder)`` reads and that uploads unchanged to a Hub
``dataset`` repo::

    README.md                          dataset card: configs, dataset_info, provenance (hf_scdd YAML key),
                                       source licence and citation (hf_scdd.hub.cards)
    config.json                        the full stage config that produced it
    grid.png                           one row per class, one column per IPC index
    data/train-XXXXX-of-YYYYY.parquet  image (PNG/JPEG bytes), label (ClassLabel), ipc_index, unit_seed
    soft_labels/epoch_XXXX.safetensors optional, written by relabel (hf_scdd.formats.soft_labels)
    units/, inputs/, logs/             working files (resumption, recovery inputs, trackers); never uploaded

Images are stored as encoded bytes built in memory, never as file paths (``to_parquet`` keeps paths
otherwise). While recovery runs, each finished unit (one optimisation batch) is its own safetensors file in
``units/`` (uint8 images, labels, seed and final loss terms as metadata), so a rerun skips it; the shards are
assembled from the unit files once all exist.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.tensors import decode_images
from ..errors import DistilledSetError
from ..synthesis.units import Unit, shard_plan
from ..utils import atomic_path, atomic_save_safetensors, first_line

DATA_DIR = "data"
SOFT_LABELS_DIR = "soft_labels"
UNITS_DIR = "units"
INPUTS_DIR = "inputs"
"""Working folder of a recovery run's selected starting images and measured BN targets."""
WORKING_DIRS = (UNITS_DIR, INPUTS_DIR, "logs", "checkpoints")
IMAGE_FORMATS = ("png", "jpeg")
JPEG_QUALITY = 75  # PIL's default, what the reference saved with


# --------------------------------------------------------------------------------------------------------
# Images and shards
# --------------------------------------------------------------------------------------------------------


def encode_image(image: torch.Tensor, image_format: str = "png") -> bytes:
    """uint8 [C, H, W] (C = 1 or 3) → PNG (lossless) or JPEG (quality 75, the reference's) bytes."""
    from PIL import Image

    if image_format not in IMAGE_FORMATS:
        raise DistilledSetError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    array = image.detach().cpu().numpy()
    pil = Image.fromarray(array[0], mode="L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))
    buffer = io.BytesIO()
    if image_format == "png":
        pil.save(buffer, format="PNG")
    else:
        pil.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def shard_name(index: int, count: int, split: str = "train") -> str:
    """The Hub parquet-layout file name of shard ``index`` of ``count``."""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


def distilled_features(class_names: Sequence[str]):
    """The ``datasets.Features`` of a distilled set."""
    import datasets

    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(class_names)),
            "ipc_index": datasets.Value("int32"),
            "unit_seed": datasets.Value("int64"),
        }
    )


def write_shard(
    path: str | os.PathLike,
    images: torch.Tensor,
    labels: Sequence[int],
    ipc_index: Sequence[int],
    unit_seed: Sequence[int],
    class_names: Sequence[str],
    image_format: str = "png",
) -> Path:
    """Write one parquet shard atomically (temp file, then rename) from uint8 images [N, C, H, W]."""
    import datasets

    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": encode_image(img, image_format), "path": None} for img in images],
            "label": [int(v) for v in labels],
            "ipc_index": [int(v) for v in ipc_index],
            "unit_seed": [int(v) for v in unit_seed],
        },
        features=distilled_features(class_names),
    )
    with atomic_path(path) as tmp:
        table.to_parquet(str(tmp))
    return path


def remove_stale_shards(folder: str | os.PathLike, keep: Sequence[str], split: str = "train") -> list[Path]:
    """Delete ``data/<split>-*.parquet`` files not in ``keep`` (a rerun with another shard count)."""
    removed = []
    data = Path(folder) / DATA_DIR
    if data.is_dir():
        for path in data.glob(f"{split}-*.parquet"):
            if path.name not in keep:
                path.unlink()
                removed.append(path)
    return removed


def write_grid(
    path: str | os.PathLike,
    images: torch.Tensor,
    labels: Sequence[int],
    ipc_index: Sequence[int],
    *,
    max_classes: int = 100,
    max_columns: int = 10,
    max_tile: int = 64,
) -> Path:
    """An image grid PNG: one row per class (first ``max_classes``), one column per IPC index."""
    from PIL import Image

    labels, ipc_index = list(map(int, labels)), list(map(int, ipc_index))
    channels, height, width = images.shape[1:]
    scale = min(1.0, max_tile / max(height, width))
    tile_h, tile_w = max(1, round(height * scale)), max(1, round(width * scale))
    rows = min(max_classes, max(labels) + 1 if labels else 0)
    cols = min(max_columns, max(ipc_index) + 1 if ipc_index else 0)
    mode = "L" if channels == 1 else "RGB"
    pad = 2
    grid = Image.new(mode, (cols * (tile_w + pad) + pad, rows * (tile_h + pad) + pad), color=255 if mode == "L" else (255, 255, 255))
    for img, label, ipc in zip(images, labels, ipc_index):
        if label >= rows or ipc >= cols:
            continue
        array = img.cpu().numpy()
        tile = Image.fromarray(array[0], "L") if channels == 1 else Image.fromarray(array.transpose(1, 2, 0))
        if (tile_w, tile_h) != (width, height):
            tile = tile.resize((tile_w, tile_h), Image.BILINEAR)
        grid.paste(tile, (pad + ipc * (tile_w + pad), pad + label * (tile_h + pad)))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return Path(path)


# --------------------------------------------------------------------------------------------------------
# Unit files
# --------------------------------------------------------------------------------------------------------


def unit_path(output_dir: str | os.PathLike, unit: Unit) -> Path:
    """Where a finished unit is kept until the shards are written (its existence marks the unit done)."""
    return Path(output_dir) / UNITS_DIR / f"{unit.name}.safetensors"


def save_unit(output_dir: str | os.PathLike, unit: Unit, images: torch.Tensor, ce: float, bn: float) -> Path:
    """Write a finished unit atomically: uint8 images [B, C, H, W], labels, and its seed/loss as metadata."""
    path = unit_path(output_dir, unit)
    tensors = {"images": images.cpu(), "labels": torch.tensor(unit.classes, dtype=torch.int64)}
    metadata = {"ipc": str(unit.ipc), "chunk": str(unit.chunk), "seed": str(unit.seed), "ce": repr(ce), "bn": repr(bn)}
    atomic_save_safetensors(path, tensors, metadata)
    return path


def load_unit(output_dir: str | os.PathLike, unit: Unit) -> tuple[torch.Tensor, dict[str, str]]:
    """A finished unit's uint8 images and its metadata (seed, final CE and BN term)."""
    from safetensors import SafetensorError, safe_open

    path = unit_path(output_dir, unit)
    try:
        with safe_open(str(path), "pt") as f:
            return f.get_tensor("images"), f.metadata()
    except (SafetensorError, OSError) as err:
        raise DistilledSetError(
            f"{path} is truncated or not a safetensors file ({first_line(err)}): delete it and rerun the same "
            "`hf-scdd recover` command (the unit is redone)"
        ) from err


def gather_units(out: Path, units: Sequence[Unit]) -> tuple[torch.Tensor, list[int], list[int], list[int]]:
    """The units' images (in unit order) with their labels, IPC indices and unit seeds, row by row."""
    images, labels, ipcs, seeds = [], [], [], []
    for unit in units:
        pixels, _ = load_unit(out, unit)
        images.append(pixels)
        labels += list(unit.classes)
        ipcs += [unit.ipc] * len(unit.classes)
        seeds += [unit.seed] * len(unit.classes)
    return torch.cat(images), labels, ipcs, seeds


def write_shards(accelerator, units: Sequence[Unit], folder: Path, class_names: Sequence[str], image_format: str) -> int:
    """The parquet shards of ``folder`` from its finished unit files; returns the shard count.

    Every process writes its own shards (rank r writes shards r, r+N, ...); stale shards of an earlier run
    with another shard count are removed first.
    """
    missing = [u.name for u in units if not unit_path(folder, u).exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} unit(s) were not produced (e.g. {missing[:3]}); rerun to finish them")
    shards = shard_plan(units, accelerator.num_processes)
    names = [shard_name(k, len(shards)) for k in range(len(shards))]
    if accelerator.is_main_process:
        remove_stale_shards(folder, names)
    accelerator.wait_for_everyone()
    for k in range(accelerator.process_index, len(shards), accelerator.num_processes):
        images, labels, ipcs, seeds = gather_units(folder, shards[k])
        write_shard(folder / DATA_DIR / names[k], images, labels, ipcs, seeds, class_names, image_format)
    accelerator.wait_for_everyone()
    return len(shards)


# --------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------


def distilled_images(dataset, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a distilled ``datasets.Dataset`` (image + ClassLabel) to uint8 [N, C, S, S] and int64 [N]."""
    return decode_images(dataset.select_columns(["image", "label"]), channels, image_size)


def image_nbytes(dataset) -> int:
    """Bytes of the encoded images (PNG/JPEG) of a distilled set, the denominator of the labels' cost."""
    import datasets

    raw = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    return sum(len(x["image"]["bytes"] or b"") for x in raw)
