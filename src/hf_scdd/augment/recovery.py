"""Recovery augmentation for synthesis: differentiable circular-roll jitter, batch-shared crop and flip.

SC-DD/SRe²L synthesis augmentation: x̃ = roll(flip(RRC(x)), (δ1, δ2)) with ONE crop box and ONE flip decision
shared by the whole batch at each step (the reference applies torchvision v1 transforms to the batched
tensor), δ ~ U{0..jitter} (inclusive, like random.randint). CIFAR-style data use the roll only. All random
draws of a unit come up front from the unit's own generator, so a unit's augmentation does not depend on which
other units share its forward pass (grouped recovery) or on global RNG state. The resize is kornia's bilinear
``crop_and_resize`` without antialiasing (= torchvision 0.15's tensor default that the reference ran with),
and it is differentiable like the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from kornia.geometry.transform import crop_and_resize


@dataclass
class RecoveryAugmentPlan:
    """The augmentation of every step of one recovery unit.

    Attributes:
        shifts: ``[(dy, dx)] * iterations`` circular-roll offsets (python ints: no device sync to read them).
        boxes: float32 ``[iterations, 4]`` crop boxes ``(top, left, height, width)`` in pixels, or None.
        flips: bool ``[iterations]`` horizontal-flip decisions, or None.
    """

    shifts: list[tuple[int, int]]
    boxes: torch.Tensor | None = None
    flips: torch.Tensor | None = None


def sample_recovery_plan(
    generator: torch.Generator,
    iterations: int,
    image_size: tuple[int, int],
    *,
    jitter: int,
    random_crop: bool = False,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    crop_curriculum: bool = False,
) -> RecoveryAugmentPlan:
    """Draw one unit's augmentation for ``iterations`` steps from ``generator`` (CPU).

    With ``crop_curriculum`` (CDA's easy-to-hard schedule) the crop's smallest area share anneals from the
    whole image at the first step to ``crop_scale[0]`` at the last, along a cosine.
    """
    height, width = image_size
    shifts = torch.randint(0, jitter + 1, (iterations, 2), generator=generator).tolist()
    plan = RecoveryAugmentPlan(shifts=[(int(a), int(b)) for a, b in shifts])
    if random_crop:
        scale = curriculum_scales(iterations, crop_scale) if crop_curriculum else crop_scale
        plan.boxes = sample_resized_crop_boxes(generator, iterations, height, width, scale, crop_ratio)
        plan.flips = torch.rand(iterations, generator=generator) < 0.5
    return plan


def curriculum_scales(iterations: int, crop_scale: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """Per-step ``(smallest area share [T], largest)``: cosine from ``crop_scale[1]`` down to ``crop_scale[0]``."""
    low, high = crop_scale
    progress = torch.arange(iterations, dtype=torch.float64) / max(1, iterations - 1)
    lows = low + (high - low) * 0.5 * (1.0 + torch.cos(math.pi * progress))
    return lows.float(), high


def sample_resized_crop_boxes(
    generator: torch.Generator,
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes ``(top, left, h, w)`` by torchvision's rule (10 tries, then centre crop).

    ``scale[0]`` may be a ``[n]`` tensor of per-box lower bounds (the crop curriculum).
    """
    area = height * width
    if torch.is_tensor(scale[0]):
        unit = torch.empty(n, attempts).uniform_(0.0, 1.0, generator=generator)
        target = (scale[0][:, None] + unit * (scale[1] - scale[0][:, None])) * area
    else:
        target = torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator) * area
    log_ratio = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = valid.float().argmax(dim=1, keepdim=True)
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    position = torch.rand(n, 2, generator=generator)
    top = (position[:, 0] * (height - h + 1)).floor()
    left = (position[:, 1] * (width - w + 1)).floor()
    # fallback: the largest centred crop with an aspect ratio inside ``ratio``
    in_ratio = width / height
    fw, fh = float(width), float(height)
    if in_ratio < min(ratio):
        fh = float(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw = float(round(height * max(ratio)))
    ok = valid.any(dim=1)
    h = torch.where(ok, h, torch.full_like(h, fh))
    w = torch.where(ok, w, torch.full_like(w, fw))
    top = torch.where(ok, top, torch.full_like(top, (height - fh) // 2))
    left = torch.where(ok, left, torch.full_like(left, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).float()


def boxes_to_corners(boxes: torch.Tensor) -> torch.Tensor:
    """``(top, left, h, w)`` [..., 4] → kornia corner points [..., 4, 2] (x, y), clockwise from top-left."""
    top, left, h, w = boxes.unbind(-1)
    right, bottom = left + w - 1, top + h - 1
    xs = torch.stack([left, right, right, left], dim=-1)
    ys = torch.stack([top, top, bottom, bottom], dim=-1)
    return torch.stack([xs, ys], dim=-1)


def apply_recovery_augmentation(
    x: torch.Tensor,
    step: int,
    shifts: list[list[tuple[int, int]]],
    corners: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
) -> torch.Tensor:
    """Augment ``G`` stacked batches ``x`` [G, B, C, H, W] at ``step``; returns [G*B, C, H, W].

    ``shifts[g]`` is unit g's plan; ``corners`` [G, T, 4, 2] and ``flips`` [G, T] are the units' stacked crop
    corners and flips already on ``x``'s device (None when the data are not ImageNet-style).
    """
    groups, batch = x.shape[0], x.shape[1]
    flat = x.reshape(groups * batch, *x.shape[2:])
    if corners is not None:
        step_corners = corners[:, step].repeat_interleave(batch, dim=0)
        flat = crop_and_resize(flat, step_corners, (x.shape[-2], x.shape[-1]), mode="bilinear")
        flip = flips[:, step].repeat_interleave(batch).view(-1, 1, 1, 1)
        flat = torch.where(flip, flat.flip(-1), flat)
    parts = flat.split(batch)
    return torch.cat([torch.roll(part, shifts=shifts[g][step], dims=(-2, -1)) for g, part in enumerate(parts)])
