"""Where batches of real images come from: one interface, an in-memory and a streaming implementation.

Every stage that reads real images (squeeze, probe, evaluate's test scoring and baselines, the normalisation
statistics) takes them from an :class:`ImageSource` over one split. A source yields ``(uint8 images
[B, C, S, S], int64 labels [B])`` batches; augmentation happens afterwards, on the device, in whole batches.

* :class:`MemorySource` (``memory``): the split decoded once into uint8 tensors (cached as safetensors,
  :mod:`hf_scdd.data.tensors`); a batch is an index into them. The fast path for small data.
* :class:`DatasetSource` (``stream``): a map-style ``datasets.Dataset`` read per batch: each batch of rows is
  one Arrow take, decoded in DataLoader workers. Rows, sampler and decoder are those of the memory source, so
  for the same seed the two give the same batches, bit for bit, and the same results.
* :class:`IterableSource` (``stream`` with ``--streaming``): a ``datasets.IterableDataset`` (Hub-scale data
  that is never downloaded whole). No random access: training shuffles with a seeded buffer, subsets are the
  first examples of a seeded shuffled stream, per-class subsets are chosen in one pass by a seeded hash of each
  image's bytes (:meth:`IterableSource.per_class_subsets`). Results are reproducible but differ from the other
  two sources, which see rows by index.

:func:`choose_data_source` makes the choice (``--data_source auto|memory|stream``): ``auto`` keeps a split in
memory when its decoded size (rows × channels × side²) is at most :func:`in_memory_max_bytes`
(``$HF_SCDD_IN_MEMORY_MAX_BYTES``, default 2 GiB).

Process sharding: :meth:`ImageSource.batches` is one ordered pass over a rank's part (contiguous rows, or
``split_dataset_by_node`` for a stream) for evaluation and features; training loaders are built from
:meth:`ImageSource.rows` (sharded by ``accelerator.prepare``) or :meth:`IterableSource.training_stream`
(split by node) in :mod:`hf_scdd.training.loaders`.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Iterator

import torch
from torch.utils.data import Dataset, IterableDataset, Subset

from ..errors import ConfigError, DataError
from .decoding import Batch, DecodedRows, DecodedStream, Decoder, TensorRows, already_batched, pass_loader
from .tensors import per_class_subset, run_subset, training_subset

DATA_SOURCES = ("auto", "memory", "stream")
IN_MEMORY_MAX_BYTES_ENV = "HF_SCDD_IN_MEMORY_MAX_BYTES"
DEFAULT_IN_MEMORY_MAX_BYTES = 2 * 1024**3
SHUFFLE_BUFFER = 10_000
"""Examples in the shuffle buffers of a streamed dataset, per process (split between its DataLoader workers).

The buffer is filled from one shard at a time (in a seeded shard order), not from datasets' default of 10
interleaved shards: measured on parquet shards (benchmarks/memory.py), interleaving held memory that grew with
the number of files per reader (+290 MiB from 10 to 40 files) and cost a 5 s wait for its reader threads at the
end of every pass. Data whose shards are sorted by class need shuffled shards (or a larger buffer) to mix
classes within a batch."""
SUBSET_BUFFER = 1000
"""The shuffle buffer a subset of a stream (statistics sample, probe subset) is drawn through: a one-off pass,
read in the main process, so a small buffer (datasets' default)."""


def in_memory_max_bytes() -> int:
    """The largest decoded split (bytes of uint8 pixels) that ``--data_source auto`` keeps in memory."""
    value = os.environ.get(IN_MEMORY_MAX_BYTES_ENV)
    if value is None:
        return DEFAULT_IN_MEMORY_MAX_BYTES
    try:
        return int(float(value))
    except ValueError:
        raise ConfigError(f"${IN_MEMORY_MAX_BYTES_ENV} must be a number of bytes, got {value!r}") from None


def choose_data_source(requested: str, *, streaming: bool, rows: int | None, channels: int, image_size: int) -> str:
    """``memory`` or ``stream`` for a split of ``rows`` images: the one place the choice is made."""
    if requested not in DATA_SOURCES:
        raise ConfigError(f"--data_source must be one of {DATA_SOURCES}, got {requested!r}")
    if streaming:
        if requested == "memory":
            raise ConfigError("--data_source memory needs random access to the rows: drop --streaming")
        return "stream"
    if requested != "auto":
        return requested
    return "memory" if int(rows) * channels * image_size * image_size <= in_memory_max_bytes() else "stream"


def default_num_workers() -> int:
    """DataLoader workers per process: the CPUs of this process's share, one left for the training loop."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min(8, (os.cpu_count() or 2) // max(1, local) - 1))


def rank_part(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous part of ``n`` rows (parts differ by at most one row; no padding)."""
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def _content_key(value: Any, seed: int) -> int:
    """A seeded 64-bit hash of an image's stored bytes (or path): an order-free random key."""
    content = value.get("bytes") or str(value.get("path")).encode()
    return int.from_bytes(hashlib.blake2b(content, digest_size=8, key=str(seed).encode()).digest(), "little")


class ImageSource:
    """One split as batches of ``(uint8 images, int64 labels)``; see the module docstring.

    Attributes:
        kind: ``memory`` or ``stream`` (what ``--data_source`` chose; recorded in the stage's config).
        random_access: whether rows can be read by index (``labels``, ``take``, ``rows``).
        channels, image_size: what images are converted and resized to.
        num_workers: DataLoader workers that decode (0 for in-memory tensors).
    """

    kind: ClassVar[str]
    random_access: ClassVar[bool]
    channels: int
    image_size: int
    num_workers: int

    def __len__(self) -> int:
        raise NotImplementedError

    def subset(self, max_samples: int, seed: int, runs: int = 0) -> "ImageSource":
        """A seeded subset of at most ``max_samples`` rows (0 = all): random rows, or with ``runs`` > 0 that many
        contiguous runs of rows (:func:`~hf_scdd.data.tensors.run_subset`; a stream is read in order anyway)."""
        raise NotImplementedError

    def batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One pass, in order, over rank ``rank``'s part of the rows (every row in exactly one part)."""
        raise NotImplementedError

    def per_class_subsets(self, per_class: int, seeds: list[int], num_classes: int) -> dict[int, Batch]:
        """For every seed, ``per_class`` random rows of every class, decoded (the random-real baseline)."""
        raise NotImplementedError

    # random access only -----------------------------------------------------------------------------
    def rows(self) -> Dataset:
        """The rows as a map-style torch Dataset whose ``__getitems__`` returns a whole :data:`Batch`."""
        raise DataError(f"a {type(self).__name__} has no random access to its rows")

    def labels(self) -> torch.Tensor:
        """All labels (int64), read without decoding an image."""
        raise DataError(f"a {type(self).__name__} has no random access to its rows")

    def take(self, indices: torch.Tensor) -> Batch:
        """The rows at ``indices`` (positions in this source), decoded."""
        raise DataError(f"a {type(self).__name__} has no random access to its rows")

    def indexed_images(self) -> Any:
        """The images, indexable like a uint8 tensor (``images[idx]`` for a LongTensor of positions): the
        tensor itself in memory, rows decoded on demand otherwise (code written for tensors reads a source)."""
        return IndexedImages(self)


class IndexedImages:
    """A random-access source's images behind ``images[idx]`` and ``len(images)``."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.source.take(torch.as_tensor(idx).reshape(-1))[0]


@dataclass
class _RowSource(ImageSource):
    """What the two random-access sources share: a row subset (``indices``) and batching over it."""

    random_access: ClassVar[bool] = True
    indices: torch.Tensor | None = None

    def _base_rows(self) -> Dataset:
        raise NotImplementedError

    def _base_len(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self._base_len() if self.indices is None else len(self.indices)

    def rows(self) -> Dataset:
        rows = self._base_rows()
        return rows if self.indices is None else Subset(rows, self.indices.tolist())

    def subset(self, max_samples: int, seed: int, runs: int = 0) -> "_RowSource":
        chosen = run_subset(len(self), max_samples, seed, runs) if runs else training_subset(len(self), max_samples, seed)
        if len(chosen) == len(self):
            return self
        return replace(self, indices=chosen if self.indices is None else self.indices[chosen])

    def take(self, indices: torch.Tensor) -> Batch:
        return self.rows().__getitems__(torch.as_tensor(indices).tolist())

    def batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        part = list(rank_part(len(self), rank, world_size))
        yield from pass_loader(Subset(self.rows(), part), batch_size, self.num_workers, collate_fn=already_batched)

    def per_class_subsets(self, per_class: int, seeds: list[int], num_classes: int) -> dict[int, Batch]:
        labels = self.labels()
        return {seed: self.take(per_class_subset(labels, per_class, seed, num_classes)) for seed in seeds}


@dataclass
class MemorySource(_RowSource):
    """A split decoded into in-memory uint8 tensors (the fast path for small data)."""

    kind: ClassVar[str] = "memory"
    images: torch.Tensor = None
    all_labels: torch.Tensor = None
    num_workers: int = 0

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def _base_rows(self) -> Dataset:
        return TensorRows(self.images, self.all_labels)

    def _base_len(self) -> int:
        return len(self.all_labels)

    def labels(self) -> torch.Tensor:
        return self.all_labels if self.indices is None else self.all_labels[self.indices]

    def indexed_images(self) -> Any:
        return self.images if self.indices is None else IndexedImages(self)

    def batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        part = rank_part(len(self), rank, world_size)  # slices of the tensors: no DataLoader needed
        for start in range(part.start, part.stop, batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, part.stop)))


class _Decoding:
    """What the sources that decode stored images share: their channels and size are the decoder's."""

    decoder: Decoder

    @property
    def channels(self) -> int:
        return 1 if self.decoder.mode == "L" else 3

    @property
    def image_size(self) -> int:
        return self.decoder.image_size


@dataclass
class DatasetSource(_Decoding, _RowSource):
    """A map-style ``datasets.Dataset`` (image column undecoded) read and decoded per batch, in workers."""

    kind: ClassVar[str] = "stream"
    dataset: Any = None
    decoder: Decoder = None
    num_workers: int = 1

    def _base_rows(self) -> Dataset:
        return DecodedRows(self.dataset, self.decoder)

    def _base_len(self) -> int:
        return len(self.dataset)

    def labels(self) -> torch.Tensor:
        labels = torch.as_tensor(list(self.dataset["label"]), dtype=torch.int64)  # the label column only
        return labels if self.indices is None else labels[self.indices]


@dataclass
class IterableSource(_Decoding, ImageSource):
    """A ``datasets.IterableDataset`` (image column undecoded): Hub-scale data, read in one direction only.

    ``limit``/``shuffle_seed`` describe a subset: the first ``limit`` examples of the stream shuffled with
    ``shuffle_seed`` (a :data:`SUBSET_BUFFER` buffer after a seeded shard order). Such subsets are read without
    workers and split between processes example by example, so they are the same on any process count.
    """

    kind: ClassVar[str] = "stream"
    random_access: ClassVar[bool] = False
    dataset: Any = None
    decoder: Decoder = None
    num_rows: int = 0
    num_workers: int = 1
    limit: int | None = None
    shuffle_seed: int | None = None

    def __len__(self) -> int:
        return self.num_rows if self.limit is None else min(self.num_rows, self.limit)

    def subset(self, max_samples: int, seed: int, runs: int = 0) -> "IterableSource":
        if not max_samples or max_samples >= len(self):
            return self
        return replace(self, limit=int(max_samples), shuffle_seed=seed)

    def _stream(self):
        ds = self.dataset
        if self.shuffle_seed is not None:
            ds = ds.shuffle(seed=self.shuffle_seed, buffer_size=SUBSET_BUFFER, max_buffer_input_shards=1)
        return ds.take(self.limit) if self.limit is not None else ds

    def _workers(self, ds) -> int:
        return min(self.num_workers, ds.num_shards)

    def batches(self, batch_size: int, *, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        from datasets.distributed import split_dataset_by_node

        ds, fixed = self._stream(), self.limit is not None
        if world_size > 1:
            ds = split_dataset_by_node(ds, rank, world_size, strategy="examples" if fixed else "auto")
        workers = 0 if fixed else self._workers(ds)
        yield from pass_loader(DecodedStream(ds, self.decoder), batch_size, workers)

    def training_stream(self, seed: int, rank: int, world_size: int) -> tuple[IterableDataset, Any, int]:
        """``(decoded examples of this rank's shuffled shards, the datasets object to set_epoch on, workers)``."""
        from datasets.distributed import split_dataset_by_node

        workers = self._workers(split_dataset_by_node(self.dataset, rank, world_size) if world_size > 1 else self.dataset)
        buffer = max(1000, SHUFFLE_BUFFER // max(1, workers))  # every worker shuffles its own shards
        ds = self.dataset.shuffle(seed=seed, buffer_size=buffer, max_buffer_input_shards=1)
        if world_size > 1:
            ds = split_dataset_by_node(ds, rank, world_size)
        return DecodedStream(ds, self.decoder), ds, workers

    def per_class_subsets(self, per_class: int, seeds: list[int], num_classes: int) -> dict[int, Batch]:
        """One pass over the stream: for every seed and class, the ``per_class`` examples with the smallest
        seeded hash of their stored bytes (a uniform random subset, independent of order, shards and process
        count); only the chosen images are decoded."""
        kept: dict[tuple[int, int], list] = {(s, c): [] for s in seeds for c in range(num_classes)}
        for n, example in enumerate(self._stream()):
            label, value = int(example["label"]), example["image"]
            for seed in seeds:
                heap, key = kept[(seed, label)], _content_key(value, seed)
                if len(heap) < per_class:
                    heapq.heappush(heap, (-key, n, value))
                elif -heap[0][0] > key:
                    heapq.heapreplace(heap, (-key, n, value))
        subsets = {}
        for seed in seeds:
            values, labels = [], []
            for c in range(num_classes):
                if len(kept[(seed, c)]) < per_class:
                    raise DataError(
                        f"class {c} has only {len(kept[(seed, c)])} examples, fewer than the {per_class} requested"
                    )
                values += [v for _, _, v in sorted(kept[(seed, c)], key=lambda e: (-e[0], e[1]))]
                labels += [c] * per_class
            subsets[seed] = self.decoder.batch(values, labels)
        return subsets


def make_source(kind: str, *, dataset: Any, channels: int, image_size: int, num_workers: int | None,
                num_rows: int | None = None, tensors=None) -> ImageSource:
    """The source of one split: ``memory`` from its decoded ``tensors()``, else a streaming source."""
    from .decoding import undecoded

    if kind == "memory":
        images, labels = tensors()
        return MemorySource(images=images, all_labels=labels)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    decoder = Decoder(dataset.features["image"], channels, image_size)
    import datasets

    if isinstance(dataset, datasets.Dataset):
        return DatasetSource(dataset=undecoded(dataset), decoder=decoder, num_workers=workers)
    return IterableSource(dataset=undecoded(dataset), decoder=decoder, num_rows=int(num_rows), num_workers=workers)
