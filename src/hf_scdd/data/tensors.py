"""Decoded images as in-memory tensors: decoding, the on-disk tensor cache, normalisation, subsets.

Small datasets (Fashion-MNIST, CIFAR) are trained on as in-memory ``uint8`` tensors: decoding once and
augmenting whole batches with kornia is far faster on a CPU than a per-image PIL pipeline. A decoded split is
cached as safetensors, keyed by the dataset's fingerprint, channel count and size, so later runs skip decoding.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils import atomic_save_safetensors, first_line

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where decoded tensors and the converted built-in dataset are cached (``$HF_SCDD_CACHE``)."""
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hf_scdd"
    return Path(os.environ.get("HF_SCDD_CACHE", default))


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Scale to [0, 1] if uint8, then ``(x - mean) / std`` per channel."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to the valid [0, 1] pixel range."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


def pil_to_tensor(image, mode: str, image_size: int) -> torch.Tensor:
    """One PIL image → uint8 [C, S, S], converting the mode explicitly (grey↔RGB, RGBA dropped alpha)."""
    from PIL import Image

    if image.mode == "RGBA" and mode == "RGB":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    image = image.convert(mode)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_images(ds, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ``image``/``label`` dataset into uint8 [N, C, S, S] and int64 [N] tensors.

    Images of another size are resized to ``S``×``S`` (bilinear, aspect ratio not kept), and a log line
    says how many and which sizes, so that mixed sizes are never squashed silently.
    """
    images, labels, note = _decode(ds, channels, image_size)
    if note:
        logger.warning(note)
    return images, labels


def _decode(ds, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`decode_images` plus the resize note ('' when every image had the size)."""
    mode = "L" if channels == 1 else "RGB"
    n = len(ds)
    images = torch.empty((n, channels, image_size, image_size), dtype=torch.uint8)
    labels = torch.as_tensor(ds["label"], dtype=torch.int64)
    resized: dict[tuple[int, int], int] = {}
    for i, example in enumerate(ds.select_columns(["image"])):
        image = example["image"]
        if image.size != (image_size, image_size):
            resized[image.size] = resized.get(image.size, 0) + 1
        images[i] = pil_to_tensor(image, mode, image_size)
    if not resized:
        return images, labels, ""
    sizes = ", ".join(f"{w}x{h}: {count}" for (w, h), count in sorted(resized.items(), key=lambda kv: -kv[1])[:5])
    note = (f"{sum(resized.values())} of {n} images are not {image_size}x{image_size} ({sizes}): resized to "
            f"{image_size}x{image_size} (the first training image's size), aspect ratio not kept")
    return images, labels, note


def tensor_cache_path(ds, channels: int, image_size: int) -> Path:
    """The cache file of one split decoded at ``channels`` × ``image_size``²."""
    key = hashlib.sha256(f"{ds._fingerprint}-{channels}-{image_size}-v1".encode()).hexdigest()[:20]
    return cache_dir() / "tensors" / f"{key}.safetensors"


def save_tensors(path: Path, images: torch.Tensor, labels: torch.Tensor, note: str = "") -> None:
    """Cache a decoded split (atomically: concurrent processes may decode the same split), with its resize
    note, so that a cached split reports its conversion as the first decode did."""
    atomic_save_safetensors(path, {"images": images, "labels": labels}, {"note": note} if note else None)


def load_or_decode(ds, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's tensors from the cache, decoding (and caching) them the first time; a resize note is
    logged either way."""
    from safetensors import SafetensorError, safe_open

    path = tensor_cache_path(ds, channels, image_size)
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                note = (f.metadata() or {}).get("note", "")
                images, labels = f.get_tensor("images"), f.get_tensor("labels")
            if note:
                logger.warning(note)
            return images, labels
        except (SafetensorError, OSError, KeyError) as err:  # a damaged cache entry is only a cache miss
            logger.warning("tensor cache %s is damaged (%s); decoding again", path, first_line(err))
    images, labels, note = _decode(ds, channels, image_size)
    if note:
        logger.warning(note)
    save_tensors(path, images, labels, note)
    return images, labels


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images in [0, 1] units (from at most ~200k evenly spaced images)."""
    sample = images[:: max(1, len(images) // 200_000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3))
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist())


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """Indices of ``per_class`` random examples of every class (the random-real-subset baseline)."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} examples, fewer than the {per_class} requested")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(chosen)
