"""MoCo v2's parts: split/shuffle BatchNorm, the projection encoder, the momentum key state, InfoNCE.

MoCo v2 as in the official CIFAR demo that SC-DD's CIFAR recipe matches: query encoder = backbone + 2-layer MLP
head, momentum key encoder, a queue of negative keys, InfoNCE at temperature ``T``.

Batch-norm and MoCo (why keys are shuffled): a query and its positive key computed with the *same* batch
statistics let the network "cheat" by recognising its sub-batch instead of learning content. What runs:

* **within a process, always**: SplitBatchNorm, both encoders normalise ``bn_splits / num_processes``
  interleaved groups of the local batch separately (:class:`SplitBatchNorm2d`; the MoCo CIFAR demo), and the
  key batch is permuted before the key encoder and un-permuted after, so a key never shares its BN group with
  its query;
* **across processes, when there are several**: shuffle-BN (MoCo's ``batch_shuffle_ddp``), the key views of
  all processes are gathered, permuted with a permutation broadcast from process 0, each process encodes its
  slice (again in split groups), and the keys are gathered back and un-permuted.

The trained backbone is saved as a plain :class:`~hf_scdd.models.resnet.ResNet` (SplitBatchNorm has
BatchNorm2d's state).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SqueezeError
from ..training.accelerator import Precision, autocast_of
from .resnet import ResNet


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d normalising ``num_splits`` interleaved groups of the batch separately in training mode.

    Sample ``n`` belongs to group ``n % num_splits`` (the MoCo CIFAR demo's layout). Running statistics are
    updated with each group's statistics and averaged over groups; in eval mode it is a plain BatchNorm2d.
    State-dict keys equal BatchNorm2d's, so the weights load into a plain :class:`ResNet`.
    """

    def __init__(self, num_features: int, num_splits: int = 1, **kwargs: Any):
        super().__init__(num_features, **kwargs)
        self.num_splits = num_splits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise SqueezeError(f"batch of {n} does not split into {s} BN groups; make it a multiple of {s}")
        mean_split = self.running_mean.repeat(s)
        var_split = self.running_var.repeat(s)
        momentum = 0.1 if self.momentum is None else self.momentum
        out = F.batch_norm(
            x.reshape(n // s, c * s, h, w), mean_split, var_split,
            self.weight.repeat(s), self.bias.repeat(s), True, momentum, self.eps,
        ).view(n, c, h, w)
        with torch.no_grad():
            self.running_mean.copy_(mean_split.view(s, c).mean(dim=0))
            self.running_var.copy_(var_split.view(s, c).mean(dim=0))
            self.num_batches_tracked.add_(1)
        return out


def use_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace (in place) every BatchNorm2d in ``module`` by a :class:`SplitBatchNorm2d` with its state."""
    for name, child in module.named_children():
        if isinstance(child, SplitBatchNorm2d):
            child.num_splits = num_splits
        elif isinstance(child, nn.BatchNorm2d):
            split = SplitBatchNorm2d(child.num_features, num_splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split.to(child.weight.device))
        else:
            use_split_batchnorm(child, num_splits)
    return module


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``perm``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


@torch.no_grad()
def shuffled_keys(
    accelerator,
    encoder: nn.Module,
    views: torch.Tensor,
    generator: torch.Generator | None = None,
    precision: Precision | None = None,
) -> torch.Tensor:
    """Key embeddings of this process's ``views`` computed in shuffled BN groups (see the module docstring).

    One process: permute the batch, encode (SplitBatchNorm groups the permuted batch), un-permute.
    Several: gather all processes' views, permute them with process 0's permutation, encode this
    process's slice, gather the keys, un-permute, return this process's rows.
    """
    world, rank, b = accelerator.num_processes, accelerator.process_index, len(views)
    all_views = accelerator.gather(views.contiguous()) if world > 1 else views
    perm = torch.randperm(len(all_views), generator=generator).to(views.device)
    if world > 1:
        from accelerate.utils import broadcast

        perm = broadcast(perm, from_process=0)
    mine = perm[rank * b : (rank + 1) * b]
    with autocast_of(precision):
        keys = encoder(all_views[mine]).float()
    all_keys = accelerator.gather(keys.contiguous()) if world > 1 else keys
    return all_keys[inverse_permutation(perm)][rank * b : (rank + 1) * b]


# --------------------------------------------------------------------------------------------------------
# Encoders, queue, loss
# --------------------------------------------------------------------------------------------------------


class ProjectionEncoder(nn.Module):
    """Backbone features -> 2-layer MLP -> L2-normalised embedding (the head is not saved)."""

    def __init__(self, backbone: ResNet, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or backbone.num_features
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Linear(backbone.num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone.forward_features(x)), dim=1)


class MoCoKeyState(nn.Module):
    """The momentum key encoder and the queue of negative keys: everything MoCo keeps outside the optimiser.

    An ``nn.Module`` so that ``state_dict``/``load_state_dict`` checkpoint it through ``train(extra_state=)``.
    """

    def __init__(self, query_encoder: ProjectionEncoder, dim: int, queue_size: int):
        super().__init__()
        self.encoder = copy.deepcopy(query_encoder)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def momentum_update(self, query_encoder: nn.Module, m: float) -> None:
        for pk, pq in zip(self.encoder.parameters(), query_encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrite the oldest ``len(keys)`` entries (``keys``: the global batch, same on every rank)."""
        k, ptr = self.queue.shape[1], int(self.queue_ptr)
        if k % len(keys):
            raise SqueezeError(f"moco_k={k} must be a multiple of the global batch size {len(keys)}")
        self.queue[:, ptr : ptr + len(keys)] = keys.T.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % k)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE: the positive logit first, then the queue's negatives; returns (loss, contrastive top-1)."""
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.clone().detach()
    logits = torch.cat([l_pos, l_neg], dim=1).float() / temperature
    target = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target), (logits.argmax(dim=1) == 0).float().mean()
