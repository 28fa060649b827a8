"""Decoding stored images into uint8 tensors: the one function every data path uses.

Both data sources (in-memory tensors and streaming, :mod:`hf_scdd.data.sources`) read the image column with
``decode=False`` and decode each value here: the dataset's own ``datasets.Image`` feature opens it (bytes, a
local path or a remote file), then :func:`pil_to_tensor` converts the mode explicitly and resizes. One decoder
for every path is what makes the two sources give the same pixels for the same rows.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(uint8 images [B, C, S, S], int64 labels [B])``: what every source yields."""


def image_mode(channels: int) -> str:
    """The PIL mode images are converted to for ``channels`` (1 → ``L``, 3 → ``RGB``)."""
    return "L" if channels == 1 else "RGB"


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


class Decoder:
    """Stored image value (``{"bytes", "path"}``) → uint8 [C, S, S], with the dataset's own Image feature.

    Picklable, so DataLoader workers decode with it. It counts the images it had to resize (per process), and
    logs the first image of each other size, so that mixed sizes are never squashed silently.
    """

    def __init__(self, feature: Any, channels: int, image_size: int):
        import datasets

        self.feature = datasets.Image(mode=getattr(feature, "mode", None), decode=True)
        self.mode, self.image_size = image_mode(channels), int(image_size)
        self.resized: dict[tuple[int, int], int] = {}

    def __call__(self, value: Any) -> torch.Tensor:
        image = self.feature.decode_example(value)
        if image.size != (self.image_size, self.image_size):
            self._count_resize(image.size)
        return pil_to_tensor(image, self.mode, self.image_size)

    def _count_resize(self, size: tuple[int, int]) -> None:
        if size not in self.resized:
            logger.info("an image of %dx%d is resized to %dx%d", *size, self.image_size, self.image_size)
        self.resized[size] = self.resized.get(size, 0) + 1

    def resize_note(self, total: int) -> str:
        """One line saying how many of ``total`` decoded images were resized, and from which sizes ('' if none)."""
        if not self.resized:
            return ""
        s = self.image_size
        sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(self.resized.items(), key=lambda kv: -kv[1])[:5])
        return (f"{sum(self.resized.values())} of {total} images are not {s}x{s} ({sizes}): resized to {s}x{s} "
                "(the first training image's size), aspect ratio not kept")

    def batch(self, values: list[Any], labels: list[int]) -> Batch:
        """Decode a list of values into one batch."""
        return torch.stack([self(v) for v in values]), torch.as_tensor(labels, dtype=torch.int64)


def undecoded(dataset: Any) -> Any:
    """The dataset (map-style or iterable) with its image column left encoded, for :class:`Decoder`."""
    import datasets

    feature = dataset.features["image"]
    return dataset.cast_column("image", datasets.Image(mode=getattr(feature, "mode", None), decode=False))


def pass_loader(dataset: Dataset | IterableDataset, batch_size: int, num_workers: int, **kwargs) -> DataLoader:
    """An ordered DataLoader for one pass over ``dataset``, with its own generator: a DataLoader without one
    draws its workers' base seed from the global torch RNG, which would make model initialisation and
    augmentation depend on whether (and how often) data were read through workers."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator(), **kwargs)


def already_batched(batch: Batch) -> Batch:
    """The collate function of row datasets whose ``__getitems__`` returns a whole batch."""
    return batch


class DecodedRows(Dataset):
    """A map-style ``datasets.Dataset`` (image column undecoded) as decoded rows; ``__getitems__`` reads a
    batch of rows in one Arrow take and decodes them (in a DataLoader worker when there are workers)."""

    def __init__(self, dataset: Any, decoder: Decoder):
        self.dataset, self.decoder = dataset, decoder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Batch:
        images, labels = self.__getitems__([i])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> Batch:
        rows = self.dataset[[int(i) for i in indices]]
        return self.decoder.batch(rows["image"], rows["label"])


class TensorRows(Dataset):
    """In-memory uint8 images and labels as rows; ``__getitems__`` gathers a batch by indexing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Batch:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


class DecodedStream(IterableDataset):
    """A ``datasets.IterableDataset`` (image column undecoded) as decoded ``(image, label)`` examples.

    Inside DataLoader workers, iterating the wrapped dataset gives each worker its own shards (datasets splits
    them by worker), so decoding is spread over the workers.
    """

    def __init__(self, dataset: Any, decoder: Decoder):
        self.dataset, self.decoder = dataset, decoder

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for example in self.dataset:
            yield self.decoder(example["image"]), torch.tensor(int(example["label"]))
