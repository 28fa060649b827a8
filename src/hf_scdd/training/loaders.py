"""Training loaders over an :class:`~hf_scdd.data.sources.ImageSource`, sharded across processes.

* A random-access source (in-memory tensors, or a map-style ``datasets.Dataset``) becomes one
  ``torch.utils.data.DataLoader`` over its rows, shuffled by :class:`EpochSampler` (a function of (seed, epoch)) and ``accelerator.prepare``-d:
  Accelerate shards its batches between processes and places them on the device. Both sources give the same
  sampler the same rows, so the same batches.
* A streamed source (``--streaming``) becomes a :class:`StreamEpochs`: each rank reads its own shards
  (``datasets.distributed.split_dataset_by_node``), shuffled with a seeded buffer re-seeded every epoch
  (``set_epoch``), decoded in DataLoader workers, and yields exactly ``len(source) // global batch`` batches per
  epoch on every rank, so that DDP ranks always take the same number of steps.

Either way :func:`hf_scdd.training.loop.train` sees an object with ``len``, ``set_epoch`` and batches of
``(uint8 images, int64 labels)`` on the device.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from ..augment.views import epoch_seed
from ..data.decoding import Batch, already_batched, pass_loader
from ..data.sources import ImageSource
from ..errors import ConfigError


class EpochSampler(Sampler[int]):
    """The indices 0..n-1 in an order that is a function of ``(seed, epoch)`` only (``set_epoch``, which
    accelerate's prepared loader forwards), so a resumed run shuffles exactly as an uninterrupted one, on
    every process alike (accelerate then shards the batches)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream="shuffle"))
        return iter(torch.randperm(self.n, generator=generator).tolist())


def training_loader(accelerator, source: ImageSource, batch_size: int, *, seed: int, drop_last: bool = True):
    """Shuffled batches of ``batch_size`` examples per process over ``source``, on the device."""
    if source.random_access:
        rows = source.rows()
        loader = DataLoader(
            rows, batch_size=batch_size, sampler=EpochSampler(len(rows), seed), drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed), num_workers=source.num_workers,
            collate_fn=already_batched,
        )
        return accelerator.prepare(loader)
    steps = len(source) // (batch_size * accelerator.num_processes)
    if steps < 1:
        raise ConfigError(f"{len(source)} streamed examples are fewer than one global batch of "
                          f"{batch_size * accelerator.num_processes}")
    return StreamEpochs(source, batch_size, seed=seed, steps=steps, accelerator=accelerator)


class StreamEpochs:
    """Epochs of exactly ``steps`` batches from this rank's shuffled share of a streamed source.

    A rank whose share runs out early (shards of unequal length) continues from a fresh pass of its stream
    (the next re-seed), so every rank yields ``steps`` batches and no DDP collective waits forever.
    """

    def __init__(self, source, batch_size: int, *, seed: int, steps: int, accelerator):
        from accelerate.utils import send_to_device

        self.steps, self.epoch, self.device, self._send = steps, 0, accelerator.device, send_to_device
        stream, self._datasets, workers = source.training_stream(
            seed, accelerator.process_index, accelerator.num_processes
        )
        self._loader = pass_loader(stream, batch_size, workers, drop_last=True, persistent_workers=workers > 0)

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        """Re-seed the shuffle (shard order and buffer) for ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:
        produced, refill = 0, 0
        while produced < self.steps:
            # distinct datasets epochs for refills: epoch e uses e, e + 10007, e + 2 * 10007, ...
            self._datasets.set_epoch(self.epoch + 10007 * refill)
            for batch in self._loader:
                yield self._send(batch, self.device)
                produced += 1
                if produced == self.steps:
                    return
            refill += 1


def gather_rows(accelerator, rows: torch.Tensor) -> torch.Tensor:
    """Every rank's ``rows`` (any number, possibly 0) concatenated in rank order on every rank."""
    if accelerator.num_processes == 1:
        return rows
    counts = accelerator.gather(torch.tensor([len(rows)], device=rows.device))
    padded = accelerator.pad_across_processes(rows, dim=0)
    gathered = accelerator.gather(padded)
    width = padded.shape[0]
    return torch.cat([gathered[r * width : r * width + int(c)] for r, c in enumerate(counts.tolist())])
