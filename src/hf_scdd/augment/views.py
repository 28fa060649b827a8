"""Post-training views with recorded parameters, rendered identically by relabel and by post-training.

One epoch of post-training is described by an :class:`EpochPlan`: the image at each slot of the epoch, its
random-resized-crop box and flip, and per batch the mix partner, lambda and (CutMix) box. The plan depends on
``(seed, epoch)`` only, so it is the same on 1 or N processes. Relabelling stores the plan next to the
teacher's logits; post-training re-renders exactly the same views from it with :func:`render_batch` (or
:func:`render_views` from a batch read from a data source).
Everything is plain torch (``affine_grid``/``grid_sample``), deterministic, and runs on the batch's device.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CROP_MODES = ("rrc", "pad", "none")
MIX_TYPES = ("cutmix", "mixup", "none")


def epoch_seed(seed: int, epoch: int, stream: str = "post-train") -> int:
    """The seed of one epoch's plan (or, with another ``stream``, its shuffle order): a function of
    ``(seed, epoch)`` only, never of the process count or of how the run was interrupted."""
    digest = hashlib.sha256(f"hf_scdd/{stream}/{int(seed)}/{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
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


@dataclass
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
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    n = int(num_images)
    order = rng.permutation(n)
    crop = _sample_crops(rng, n, spec, image_size)
    flip = rng.random(n) < 0.5 if spec.flip else np.zeros(n, dtype=bool)
    num_batches = -(-n // batch_size)
    mix_index = np.arange(n)
    lam = np.ones(num_batches, dtype=np.float64)
    box = np.zeros((num_batches, 4), dtype=np.int64)
    for b in range(num_batches):
        start, stop = b * batch_size, min((b + 1) * batch_size, n)
        if spec.mix == "none":
            continue
        mix_index[start:stop] = start + rng.permutation(stop - start)
        lam[b] = rng.beta(spec.mix_alpha, spec.mix_alpha)
        if spec.mix == "cutmix":
            box[b], lam[b] = _cutmix_box(rng, lam[b], image_size)
    return EpochPlan(
        order=torch.from_numpy(order.astype(np.int32)),
        # stored precision first: views are always rendered from the fp16 box, so relabel and replay agree
        crop=torch.from_numpy(crop).to(torch.float16),
        flip=torch.from_numpy(flip.astype(bool)),
        mix_index=torch.from_numpy(mix_index.astype(np.int32)),
        mix_lambda=torch.from_numpy(lam.astype(np.float32)),
        mix_box=torch.from_numpy(box.astype(np.int32)),
        batch_size=int(batch_size),
    )


def _sample_crops(rng: "np.random.Generator", n: int, spec: ViewSpec, image_size: int) -> "np.ndarray":
    if spec.crop == "none":
        return np.tile(np.array([0.0, 0.0, 1.0, 1.0]), (n, 1))
    if spec.crop == "pad":
        shift = rng.integers(-spec.pad, spec.pad + 1, size=(n, 2)) / image_size
        return np.concatenate([shift, np.ones((n, 2))], axis=1)
    # random-resized crop, torchvision's distribution (area share, log-uniform aspect), clipped to the image
    area = rng.uniform(spec.scale_min, 1.0, n)
    log_ratio = rng.uniform(np.log(spec.ratio[0]), np.log(spec.ratio[1]), n)
    ratio = np.exp(log_ratio)
    width = np.minimum(1.0, np.sqrt(area * ratio))
    height = np.minimum(1.0, np.sqrt(area / ratio))
    top = rng.random(n) * (1.0 - height)
    left = rng.random(n) * (1.0 - width)
    return np.stack([top, left, height, width], axis=1)


def _cutmix_box(rng: "np.random.Generator", lam: float, size: int) -> tuple["np.ndarray", float]:
    """The CutMix box for ``lam`` (side ``size*sqrt(1-lam)``, uniform centre, clipped) and the true lambda."""
    cut = int(size * np.sqrt(1.0 - lam))
    cy, cx = rng.integers(size), rng.integers(size)
    top, bottom = np.clip(cy - cut // 2, 0, size), np.clip(cy + cut // 2, 0, size)
    left, right = np.clip(cx - cut // 2, 0, size), np.clip(cx + cut // 2, 0, size)
    true_lam = 1.0 - (bottom - top) * (right - left) / float(size * size)
    return np.array([top, left, bottom, right]), true_lam


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
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_batch(images_uint8: torch.Tensor, plan: EpochPlan, b: int, device=None) -> torch.Tensor:
    """The mixed views of batch ``b`` of ``plan`` over in-memory images, float in [0, 1] pixel units."""
    idx = plan.order[plan.batch_slots(b)].long()
    device = images_uint8.device if device is None else device
    return render_views(images_uint8[idx.to(images_uint8.device)], plan, b, device)


def render_views(pixels_uint8: torch.Tensor, plan: EpochPlan, b: int, device) -> torch.Tensor:
    """The mixed views of batch ``b`` of ``plan`` from the batch's own images (uint8, in slot order: image
    ``plan.order[slot]`` at each slot), float in [0, 1] pixel units (normalise afterwards).

    Mixing is linear, so mixing before normalisation equals mixing normalised views (what the references do).
    """
    slots = plan.batch_slots(b)
    x = pixels_uint8.to(device).float() / 255.0
    views = crop_flip(x, plan.crop[slots], plan.flip[slots], pixels_uint8.shape[-1])
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
