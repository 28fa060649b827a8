"""Batched, on-device augmentation (kornia / pure torch) for every stage.

Three families, one per consumer:

* SSL views for MoCo v2 pre-training (two random views per image);
* recovery augmentation for synthesis (differentiable: circular-roll jitter, batch-shared crop and flip);
* post-training views with *recorded parameters* (crop box, flip, mix partner, lambda, box), so that
  relabelling can store them and post-training can replay exactly the same views.
"""

from __future__ import annotations

import torch

# === SSL views (squeeze) ===================================================================================

# Owner: squeeze. MoCo v2 "aug-plus" views (method.md §1.1), applied to whole uint8 batches on the device:
# RandomResizedCrop(scale 0.2-1) -> flip -> ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8) -> grayscale (p=0.2) ->
# Gaussian blur (p=0.5, only for images >= 64 px: the MoCo CIFAR recipe has none at 32 px). One-channel
# images get brightness/contrast jitter only (saturation and hue do not exist for them) and no grayscale.


def ssl_view_augmentation(
    channels: int,
    image_size: int,
    *,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    jitter_strength: float = 0.4,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur: bool | None = None,
    blur_p: float = 0.5,
) -> torch.nn.Module:
    """The random view pipeline of MoCo v2 for ``[N, C, H, W]`` float images in [0, 1].

    ``blur=None`` enables blur for ``image_size >= 64`` (MoCo v2 blurs ImageNet views; its CIFAR demo does
    not). Returns a kornia ``AugmentationSequential`` drawing independent parameters per image.
    """
    import kornia.augmentation as K

    ops: list[torch.nn.Module] = [
        K.RandomResizedCrop((image_size, image_size), scale=crop_scale),
        K.RandomHorizontalFlip(),
    ]
    s = jitter_strength
    if channels == 3:
        ops.append(K.ColorJitter(s, s, s, s / 4, p=jitter_p))
        ops.append(K.RandomGrayscale(p=grayscale_p))
    else:
        ops.append(K.ColorJitter(brightness=s, contrast=s, p=jitter_p))
    if blur if blur is not None else image_size >= 64:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
    return K.AugmentationSequential(*ops)


def supervised_view_augmentation(image_size: int, *, padding: int | None = None) -> torch.nn.Module:
    """The supervised (SRe²L ``squeeze_cifar``) views: RandomCrop with zero padding (4 px at 32 px) + flip."""
    import kornia.augmentation as K

    pad = padding if padding is not None else max(1, round(image_size / 8))
    return K.AugmentationSequential(
        K.RandomCrop((image_size, image_size), padding=pad), K.RandomHorizontalFlip()
    )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]; float images are assumed to be in [0, 1] already."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def two_views(augmentation: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views (in [0, 1]) of each image: MoCo's query and key inputs."""
    x = to_unit_float(images)
    return augmentation(x).clamp_(0.0, 1.0), augmentation(x).clamp_(0.0, 1.0)


# === recovery augmentation (recover) =======================================================================

# Owner: recover. SC-DD/SRe²L synthesis augmentation (method.md §2.4): x̃ = roll(flip(RRC(x)), (δ1, δ2)) with
# ONE crop box and ONE flip decision shared by the whole batch at each step (the reference applies torchvision
# v1 transforms to the batched tensor), δ ~ U{0..jitter} (inclusive, like random.randint). CIFAR-style data use
# the roll only. All random draws of a unit come up front from the unit's own generator, so a unit's
# augmentation does not depend on which other units share its forward pass (grouped recovery) or on global
# RNG state. The resize is kornia's bilinear ``crop_and_resize`` without antialiasing (= torchvision 0.15's
# tensor default that the reference ran with), and it is differentiable like the reference's.


from dataclasses import dataclass as _recovery_dataclass  # noqa: E402


@_recovery_dataclass
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
) -> RecoveryAugmentPlan:
    """Draw one unit's augmentation for ``iterations`` steps from ``generator`` (CPU)."""
    height, width = image_size
    shifts = torch.randint(0, jitter + 1, (iterations, 2), generator=generator).tolist()
    plan = RecoveryAugmentPlan(shifts=[(int(a), int(b)) for a, b in shifts])
    if random_crop:
        plan.boxes = sample_resized_crop_boxes(generator, iterations, height, width, crop_scale, crop_ratio)
        plan.flips = torch.rand(iterations, generator=generator) < 0.5
    return plan


def sample_resized_crop_boxes(
    generator: torch.Generator,
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    attempts: int = 10,
) -> torch.Tensor:
    """``n`` RandomResizedCrop boxes ``(top, left, h, w)`` by torchvision's rule (10 tries, then centre crop)."""
    import math

    area = height * width
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
        from kornia.geometry.transform import crop_and_resize

        step_corners = corners[:, step].repeat_interleave(batch, dim=0)
        flat = crop_and_resize(flat, step_corners, (x.shape[-2], x.shape[-1]), mode="bilinear")
        flip = flips[:, step].repeat_interleave(batch).view(-1, 1, 1, 1)
        flat = torch.where(flip, flat.flip(-1), flat)
    parts = flat.split(batch)
    return torch.cat([torch.roll(part, shifts=shifts[g][step], dims=(-2, -1)) for g, part in enumerate(parts)])


# === post-training views with recorded parameters (relabel / evaluate) ====================================
#
# One epoch of post-training is described by an :class:`EpochPlan`: the image at each slot of the epoch, its
# random-resized-crop box and flip, and per batch the mix partner, lambda and (CutMix) box. The plan depends
# on ``(seed, epoch)`` only, so it is the same on 1 or N processes. Relabelling stores the plan next to the
# teacher's logits; post-training re-renders exactly the same views from it with :func:`render_batch`.
# Everything is plain torch (``affine_grid``/``grid_sample``), deterministic, and runs on the batch's device.

import hashlib as _hashlib
from dataclasses import dataclass as _dataclass

import numpy as _np
import torch.nn.functional as _F

CROP_MODES = ("rrc", "pad", "none")
MIX_TYPES = ("cutmix", "mixup", "none")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's plan: a function of ``(seed, epoch)`` only, never of the process count."""
    digest = _hashlib.sha256(f"hf_scdd/post-train/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@_dataclass(frozen=True)
class ViewSpec:
    """How post-training views are drawn (SC-DD: RRC(0.08-1)+flip+CutMix(1.0) on ImageNet,
    RandomCrop(pad 4)+flip+Mixup(0.8) on CIFAR)."""

    crop: str = "rrc"
    scale_min: float = 0.08
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4
    flip: bool = True
    mix: str = "cutmix"
    mix_alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.crop not in CROP_MODES:
            raise ValueError(f"crop must be one of {CROP_MODES}, got {self.crop!r}")
        if self.mix not in MIX_TYPES:
            raise ValueError(f"mix must be one of {MIX_TYPES}, got {self.mix!r}")
        if not 0.0 < self.scale_min <= 1.0:
            raise ValueError(f"scale_min must be in (0, 1], got {self.scale_min}")
        if self.mix != "none" and self.mix_alpha <= 0:
            raise ValueError(f"mix_alpha must be > 0, got {self.mix_alpha}")


@_dataclass
class EpochPlan:
    """The augmentation actually used in one epoch, slot by slot (slot ``p`` is in batch ``p // batch_size``).

    Attributes:
        order: int32 [N], image index at each slot.
        crop: float16 [N, 4], crop box (top, left, height, width) as fractions of the image side; "pad" crops
            may reach outside [0, 1] (zero padding, as RandomCrop(padding=...)).
        flip: bool [N], horizontal flip.
        mix_index: int32 [N], the slot whose view is mixed into this slot (always in the same batch).
        mix_lambda: float32 [B], weight of each slot's own view in batch b (the true area share for CutMix).
        mix_box: int32 [B, 4], CutMix box (top, left, bottom, right) in output pixels, end-exclusive.
        batch_size: slots per batch (the last batch may be smaller).
    """

    order: torch.Tensor
    crop: torch.Tensor
    flip: torch.Tensor
    mix_index: torch.Tensor
    mix_lambda: torch.Tensor
    mix_box: torch.Tensor
    batch_size: int

    TENSORS = ("order", "crop", "flip", "mix_index", "mix_lambda", "mix_box")

    @property
    def num_slots(self) -> int:
        return len(self.order)

    @property
    def num_batches(self) -> int:
        return -(-self.num_slots // self.batch_size)

    def batch_slots(self, b: int) -> slice:
        if not 0 <= b < self.num_batches:
            raise IndexError(f"batch {b} out of range (the epoch has {self.num_batches} batches)")
        return slice(b * self.batch_size, min((b + 1) * self.batch_size, self.num_slots))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).contiguous() for name in self.TENSORS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], batch_size: int) -> "EpochPlan":
        return cls(**{name: tensors[name] for name in cls.TENSORS}, batch_size=int(batch_size))


def make_epoch_plan(
    num_images: int, batch_size: int, spec: ViewSpec, seed: int, epoch: int, image_size: int
) -> EpochPlan:
    """Draw one epoch's plan from ``epoch_seed(seed, epoch)`` (numpy's PCG64: exact Beta draws, any platform)."""
    rng = _np.random.default_rng(epoch_seed(seed, epoch))
    n = int(num_images)
    order = rng.permutation(n)
    crop = _sample_crops(rng, n, spec, image_size)
    flip = rng.random(n) < 0.5 if spec.flip else _np.zeros(n, dtype=bool)
    num_batches = -(-n // batch_size)
    mix_index = _np.arange(n)
    lam = _np.ones(num_batches, dtype=_np.float64)
    box = _np.zeros((num_batches, 4), dtype=_np.int64)
    for b in range(num_batches):
        start, stop = b * batch_size, min((b + 1) * batch_size, n)
        if spec.mix == "none":
            continue
        mix_index[start:stop] = start + rng.permutation(stop - start)
        lam[b] = rng.beta(spec.mix_alpha, spec.mix_alpha)
        if spec.mix == "cutmix":
            box[b], lam[b] = _cutmix_box(rng, lam[b], image_size)
    return EpochPlan(
        order=torch.from_numpy(order.astype(_np.int32)),
        # stored precision first: views are always rendered from the fp16 box, so relabel and replay agree
        crop=torch.from_numpy(crop).to(torch.float16),
        flip=torch.from_numpy(flip.astype(bool)),
        mix_index=torch.from_numpy(mix_index.astype(_np.int32)),
        mix_lambda=torch.from_numpy(lam.astype(_np.float32)),
        mix_box=torch.from_numpy(box.astype(_np.int32)),
        batch_size=int(batch_size),
    )


def _sample_crops(rng: "_np.random.Generator", n: int, spec: ViewSpec, image_size: int) -> "_np.ndarray":
    if spec.crop == "none":
        return _np.tile(_np.array([0.0, 0.0, 1.0, 1.0]), (n, 1))
    if spec.crop == "pad":
        shift = rng.integers(-spec.pad, spec.pad + 1, size=(n, 2)) / image_size
        return _np.concatenate([shift, _np.ones((n, 2))], axis=1)
    # random-resized crop, torchvision's distribution (area share, log-uniform aspect), clipped to the image
    area = rng.uniform(spec.scale_min, 1.0, n)
    log_ratio = rng.uniform(_np.log(spec.ratio[0]), _np.log(spec.ratio[1]), n)
    ratio = _np.exp(log_ratio)
    width = _np.minimum(1.0, _np.sqrt(area * ratio))
    height = _np.minimum(1.0, _np.sqrt(area / ratio))
    top = rng.random(n) * (1.0 - height)
    left = rng.random(n) * (1.0 - width)
    return _np.stack([top, left, height, width], axis=1)


def _cutmix_box(rng: "_np.random.Generator", lam: float, size: int) -> tuple["_np.ndarray", float]:
    """The CutMix box for ``lam`` (side ``size*sqrt(1-lam)``, uniform centre, clipped) and the true lambda."""
    cut = int(size * _np.sqrt(1.0 - lam))
    cy, cx = rng.integers(size), rng.integers(size)
    top, bottom = _np.clip(cy - cut // 2, 0, size), _np.clip(cy + cut // 2, 0, size)
    left, right = _np.clip(cx - cut // 2, 0, size), _np.clip(cx + cut // 2, 0, size)
    true_lam = 1.0 - (bottom - top) * (right - left) / float(size * size)
    return _np.array([top, left, bottom, right]), true_lam


def crop_flip(images: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (top, left, height, width; fractions) resized to ``size`` (bilinear), flipped where asked.

    ``images`` is float [n, C, H, W] in pixel units ([0, 1]); outside the image is zero (black) padding.
    """
    box = crop.to(device=images.device, dtype=torch.float32)
    top, left, height, width = box.unbind(1)
    sign = 1.0 - 2.0 * flip.to(device=images.device, dtype=torch.float32)
    theta = torch.zeros(len(images), 2, 3, device=images.device, dtype=torch.float32)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = 2.0 * left + width - 1.0
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2.0 * top + height - 1.0
    grid = _F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return _F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_batch(images_uint8: torch.Tensor, plan: EpochPlan, b: int, device=None) -> torch.Tensor:
    """The mixed views of batch ``b`` of ``plan``, float in [0, 1] pixel units (normalise afterwards).

    Mixing is linear, so mixing before normalisation equals mixing normalised views (what the references do).
    """
    slots = plan.batch_slots(b)
    device = images_uint8.device if device is None else device
    idx = plan.order[slots].long()
    x = images_uint8[idx.to(images_uint8.device)].to(device).float() / 255.0
    views = crop_flip(x, plan.crop[slots], plan.flip[slots], images_uint8.shape[-1])
    partner = (plan.mix_index[slots].long() - slots.start).to(device)
    lam = float(plan.mix_lambda[b])
    top, left, bottom, right = (int(v) for v in plan.mix_box[b])
    if bottom > top and right > left:  # CutMix
        mixed = views.clone()
        mixed[:, :, top:bottom, left:right] = views[partner][:, :, top:bottom, left:right]
        return mixed
    if lam < 1.0:  # Mixup
        return lam * views + (1.0 - lam) * views[partner]
    return views
