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
from typing import Iterable

import torch

from ..errors import DataError
from ..utils import atomic_save_safetensors, first_line
from .decoding import DecodedRows, Decoder, already_batched, pass_loader, pil_to_tensor, undecoded

logger = logging.getLogger(__name__)

__all__ = [
    "cache_dir", "channel_stats", "decode_images", "denormalize", "load_or_decode", "normalize", "per_class_subset",
    "pil_to_tensor", "run_subset", "save_tensors", "tensor_cache_path", "training_subset",
]


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


def decode_images(ds, channels: int, image_size: int, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ``image``/``label`` dataset into uint8 [N, C, S, S] and int64 [N] tensors, batch by batch
    (in ``num_workers`` DataLoader workers), with the decoder every data source uses.

    Images of another size are resized to ``S``×``S`` (bilinear, aspect ratio not kept), and a log line
    says how many and which sizes, so that mixed sizes are never squashed silently.
    """
    images, labels, note = _decode(ds, channels, image_size, num_workers)
    if note:
        logger.warning(note)
    return images, labels


def _decode(ds, channels: int, image_size: int, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """:func:`decode_images` plus the resize note ('' when every image had the size)."""
    decoder = Decoder(ds.features["image"], channels, image_size)
    rows = DecodedRows(undecoded(ds), decoder)
    images = torch.empty((len(ds), channels, image_size, image_size), dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.int64)
    start = 0
    for x, y in pass_loader(rows, 256, num_workers, collate_fn=already_batched):
        images[start : start + len(y)], labels[start : start + len(y)] = x, y
        start += len(y)
    # counted in this process only; worker processes log their own first resize (Decoder)
    return images, labels, decoder.resize_note(len(ds))


def tensor_cache_path(ds, channels: int, image_size: int) -> Path:
    """The cache file of one split decoded at ``channels`` × ``image_size``²."""
    key = hashlib.sha256(f"{ds._fingerprint}-{channels}-{image_size}-v1".encode()).hexdigest()[:20]
    return cache_dir() / "tensors" / f"{key}.safetensors"


def save_tensors(path: Path, images: torch.Tensor, labels: torch.Tensor, note: str = "") -> None:
    """Cache a decoded split (atomically: concurrent processes may decode the same split), with its resize
    note, so that a cached split reports its conversion as the first decode did."""
    atomic_save_safetensors(path, {"images": images, "labels": labels}, {"note": note} if note else None)


def load_or_decode(ds, channels: int, image_size: int, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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
    images, labels, note = _decode(ds, channels, image_size, num_workers)
    if note:
        logger.warning(note)
    save_tensors(path, images, labels, note)
    return images, labels


def channel_stats(batches: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (unbiased) std in [0, 1] units of uint8 image batches, accumulated batch by batch
    in float64, so a sample of any size needs only one batch in memory."""
    total = total_sq = None
    count = 0
    for images in batches:
        x = images.double() / 255.0
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.numel() // x.shape[1]
    if total is None or count < 2:
        raise DataError("normalisation statistics need at least one image with two pixels")
    mean = total / count
    std = ((total_sq - count * mean * mean) / (count - 1)).clamp_min(0.0).sqrt()
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


def training_subset(n: int, max_samples: int, seed: int) -> torch.Tensor:
    """All indices, or a seeded random subset of ``max_samples`` of them (sorted)."""
    if not max_samples or max_samples >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_samples].sort().values


def run_subset(n: int, max_samples: int, seed: int, runs: int) -> torch.Tensor:
    """A seeded subset of about ``max_samples`` of ``n`` indices made of ``runs`` contiguous runs (sorted).

    For a sample that only needs to be representative (the normalisation statistics): rows read in runs touch
    about their own bytes of a memory-mapped table, where as many scattered rows would each map a whole
    fault-around window (64 KiB) of it into the reader's RSS, growing with the table.
    """
    if not max_samples or max_samples >= n:
        return torch.arange(n)
    length = -(-max_samples // max(1, runs))
    starts = torch.randperm(n // length, generator=torch.Generator().manual_seed(seed))[: max(1, runs)] * length
    return torch.cat([torch.arange(int(s), int(s) + length) for s in starts.sort().values])[:max_samples]
