"""Evaluation over a whole split: top-1 and pooled features, sharded across processes, every example once.

Both take in-memory uint8 images, split them between processes with ``prepare_data_loader`` and gather with
``gather_for_metrics``, so that every test image counts exactly once whatever the process count (no padded
duplicates, no prefix). Forward passes run under the stage's precision.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.data import DataLoader

from .accelerator import Precision, autocast_of
from .loop import IndexDataset


@torch.no_grad()
def evaluate_top1(
    accelerator,
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 512,
    return_count: bool = False,
    precision: Precision | None = None,
) -> float | tuple[float, int]:
    """Top-1 of ``model`` on in-memory ``images`` (uint8), split across processes, gathered exactly once each.

    With ``return_count`` also returns how many examples were scored, so reports can show the accuracy is
    over the whole split (``count == len(images)``) and not over a prefix or a padded shard.
    """
    model.eval()
    n = len(images)
    loader = accelerator.prepare_data_loader(
        DataLoader(IndexDataset(n), batch_size=batch_size, shuffle=False), device_placement=False
    )
    correct = total = 0
    for idx in loader:
        x = preprocess(images[idx].to(accelerator.device))
        with autocast_of(precision):
            logits = model(x)
        preds = logits.argmax(dim=1)
        preds, refs = accelerator.gather_for_metrics((preds, labels[idx].to(accelerator.device)))
        correct += int((preds == refs).sum())
        total += len(refs)
    accuracy = correct / max(1, total)
    return (accuracy, total) if return_count else accuracy


@torch.no_grad()
def extract_features(
    accelerator,
    backbone: torch.nn.Module,
    images: torch.Tensor,
    preprocess: Callable,
    batch_size: int = 1024,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Pooled features of every image (eval mode, no grad), computed shard-wise and gathered in order."""
    backbone.eval()
    loader = accelerator.prepare_data_loader(
        DataLoader(IndexDataset(len(images)), batch_size=batch_size, shuffle=False), device_placement=False
    )
    feats = torch.zeros(len(images), backbone.num_features, device=accelerator.device)
    for idx in loader:
        with autocast_of(precision):
            f = backbone.forward_features(preprocess(images[idx].to(accelerator.device))).float()
        idx, f = accelerator.gather_for_metrics((idx.to(accelerator.device), f))
        feats[idx] = f
    return feats


def teacher_test_top1(teacher: torch.nn.Module, data, precision: Precision | None = None, batch_size: int = 512) -> float:
    """The teacher's own top-1 on the full test split (with its own normalisation): the ceiling its labels
    set for every KD student, reported next to them. One process scores every image."""
    from ..models.loading import teacher_fn

    logits_of = teacher_fn(teacher, data.mean, data.std)
    images, labels = data.tensors("test")
    correct = 0
    device = next(teacher.parameters()).device
    for start in range(0, len(images), batch_size):
        with autocast_of(precision):
            logits = logits_of(images[start : start + batch_size].to(device).float() / 255.0)
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / len(images)
