"""The linear probe: a classifier fitted on frozen, eval-mode backbone features, folded into one ``fc``.

SC-DD's recovery model is a self-supervised backbone plus a linear probe trained with the backbone **kept in
eval mode**, so the BN running statistics recovery matches stay those of pre-training. For CPU speed the probe
trains on features of the un-augmented images extracted once (with eval-mode BN the backbone is unaffected
either way), standardised per feature; the standardisation is folded into the final layer, so the saved model
is a plain backbone + linear layer.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .accelerator import Precision
from .loop import cosine_schedule, index_loader, train


def fold_standardization(
    head: nn.Linear, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights of ``x -> head((x - mean) / std)`` as one linear layer on raw features."""
    weight = head.weight.detach() / std
    bias = head.bias.detach() - weight @ mean
    return weight, bias


def fit_linear_probe(
    accelerator,
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    standardize: bool,
    seed: int,
    output_dir: str | os.PathLike,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD with a cosine schedule on (standardised) features; returns ``(weight, bias)`` on raw features.

    ``batch_size`` is global (split over processes); checkpoints go to ``output_dir`` as in every stage.
    """
    mean, std = torch.zeros_like(feats[0]), torch.ones_like(feats[0])
    if standardize:
        mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)
    feats = (feats - mean) / std

    head = nn.Linear(feats.shape[1], num_classes)
    nn.init.normal_(head.weight, 0.0, 0.01)  # MoCo's probe initialisation
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    local_batch = max(1, batch_size // accelerator.num_processes)
    loader = index_loader(len(feats), local_batch, seed=seed, drop_last=False)
    prepared, optimizer, loader = accelerator.prepare(head, optimizer, loader)
    scheduler = cosine_schedule(optimizer, epochs * len(loader))

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        idx = idx.to(feats.device)
        with precision.autocast():
            logits = prepared(feats[idx]).float()
        top1 = (logits.argmax(1) == labels[idx]).float().mean()
        return {"loss": F.cross_entropy(logits, labels[idx]), "train_top1": top1}

    train(
        accelerator, model=prepared, optimizer=optimizer, scheduler=scheduler, loader=loader, step_fn=step,
        epochs=epochs, output_dir=output_dir, desc="probe", precision=precision,
    )
    return fold_standardization(accelerator.unwrap_model(prepared), mean, std)
