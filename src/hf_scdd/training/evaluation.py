"""Evaluation over a whole split: top-1 and pooled features, sharded across processes, every example once.

Both read an :class:`~hf_scdd.data.sources.ImageSource` (in memory or streamed): each process makes one pass
over its own part (:meth:`~hf_scdd.data.sources.ImageSource.batches`: contiguous rows, or its shards of a
stream; parts may differ in length and nothing is padded), then one collective combines the parts: a sum of
correct/total counts for top-1, the rows in rank order for features. So every test image counts exactly once,
whatever the process count, and no rank waits inside the loop for another. Forward passes run under the
stage's precision, on the unwrapped model (no DDP collective in a forward pass).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..data.decoding import Batch
from ..data.sources import ImageSource
from .accelerator import Precision, autocast_of
from .loaders import gather_rows


def _rank_batches(accelerator, source: ImageSource, batch_size: int) -> Iterable[Batch]:
    return source.batches(batch_size, rank=accelerator.process_index, world_size=accelerator.num_processes)


def count_correct(logits_of: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[Batch], device,
                  precision: Precision | None = None) -> tuple[int, int]:
    """``(correct, total)`` top-1 counts of ``logits_of(uint8 images on device)`` over ``batches``."""
    correct = total = 0
    for images, labels in batches:
        with autocast_of(precision):
            logits = logits_of(images.to(device))
        correct += int((logits.argmax(1).cpu() == labels).sum())
        total += len(labels)
    return correct, total


@torch.no_grad()
def evaluate_top1(
    accelerator,
    model: torch.nn.Module,
    source: ImageSource,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
    return_count: bool = False,
    precision: Precision | None = None,
) -> float | tuple[float, int]:
    """Top-1 of ``model`` on every example of ``source``, each process scoring its own part.

    With ``return_count`` also returns how many examples were scored, so reports can show the accuracy is
    over the whole split (``count == len(source)``) and not over a prefix or a padded shard.
    """
    model = accelerator.unwrap_model(model).eval()
    correct, total = count_correct(lambda x: model(preprocess(x)), _rank_batches(accelerator, source, batch_size),
                                   accelerator.device, precision)
    counts = torch.tensor([correct, total], dtype=torch.long, device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.reduce(counts, reduction="sum")
    correct, total = (int(v) for v in counts.tolist())
    accuracy = correct / max(1, total)
    return (accuracy, total) if return_count else accuracy


@torch.no_grad()
def extract_features(
    accelerator,
    backbone: torch.nn.Module,
    source: ImageSource,
    preprocess: Callable,
    batch_size: int = 1024,
    precision: Precision | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled features [N, F], labels [N])`` of every example of ``source`` (eval mode, no grad), on every
    process: each process extracts its part, then the parts are gathered in rank order (for a random-access
    source that is the source's own row order)."""
    backbone.eval()
    feats, labels = [torch.zeros(0, backbone.num_features, device=accelerator.device)], [torch.zeros(0, dtype=torch.long)]
    for images, y in _rank_batches(accelerator, source, batch_size):
        with autocast_of(precision):
            feats.append(backbone.forward_features(preprocess(images.to(accelerator.device))).float())
        labels.append(y)
    local_labels = torch.cat(labels).to(accelerator.device)
    return gather_rows(accelerator, torch.cat(feats)), gather_rows(accelerator, local_labels)


@torch.no_grad()
def teacher_test_top1(teacher: torch.nn.Module, data, precision: Precision | None = None, batch_size: int = 512) -> float:
    """The teacher's own top-1 on the full test split (with its own normalisation): the ceiling its labels
    set for every KD student, reported next to them. One process scores every image."""
    from ..models.loading import teacher_fn

    logits_of = teacher_fn(teacher, data.mean, data.std)
    device = next(teacher.parameters()).device
    correct, total = count_correct(lambda x: logits_of(x.float() / 255.0), data.source("test").batches(batch_size),
                                   device, precision)
    return correct / max(1, total)
