"""The linear probe: a classifier fitted on frozen, eval-mode backbone features, folded into one ``fc``.

SC-DD's recovery model is a self-supervised backbone plus a linear probe trained with the backbone **kept in
eval mode**, so the BN running statistics recovery matches stay those of pre-training. For CPU speed the probe
trains on features of the un-augmented images extracted once (with eval-mode BN the backbone is unaffected
either way). The features are scaled for the optimiser and the scaling is folded into the final layer, so the
saved model is a plain backbone + linear layer:

* ``global`` (default): one scalar, the features' RMS. Directions keep their relative scale, like MoCo's probe
  on raw features, whose learning rate (30) only compensates the features' small magnitude.
* ``feature``: per-feature standardisation. Folding 1/std into ``fc`` gives directions that real images hardly
  vary along the largest weights (measured: a head norm of 109 against 7 for a supervised end-to-end head), and
  recovery can then move the logits along them.
* ``none``: raw features.

The probe is then **calibrated**: one temperature, fitted on held-out training features by minimising the
negative log-likelihood, is folded into the head. An uncalibrated probe is over-confident, so recovery's
cross-entropy saturates at once (0.025 against 0.136 for the supervised head) and stops guiding the images;
the fitted logit scale is recorded in the model card.
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


SCALINGS = ("global", "feature", "none")


def feature_scaling(feats: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(shift, scale)`` [D] the probe trains on ``(feats - shift) / scale`` with (see the module docstring)."""
    if how not in SCALINGS:
        raise ValueError(f"standardize must be one of {SCALINGS}, got {how!r}")
    zeros, ones = torch.zeros_like(feats[0]), torch.ones_like(feats[0])
    if how == "feature":
        return feats.mean(0), feats.std(0).clamp_min(1e-6)
    if how == "global":
        return zeros, ones * feats.square().mean().sqrt().clamp_min(1e-6)
    return zeros, ones


def calibrate_head(
    weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, steps: int = 100
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Temperature scaling: the logit scale s minimising the NLL of ``s · (feats @ W.T + b)`` on held-out
    features (LBFGS on log s), folded into the head. Returns ``(s·W, s·b, s)``."""
    logits = (feats.float() @ weight.float().T + bias.float()).detach()
    log_scale = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_scale], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits * log_scale.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    scale = float(log_scale.detach().exp())
    return weight * scale, bias * scale, scale


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
    standardize: str,
    seed: int,
    output_dir: str | os.PathLike,
    precision: Precision,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGD with a cosine schedule on (standardised) features; returns ``(weight, bias)`` on raw features.

    ``batch_size`` is global (split over processes); checkpoints go to ``output_dir`` as in every stage.
    """
    mean, std = feature_scaling(feats, standardize)
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
