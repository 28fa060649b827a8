"""Synthesis: the optimisation of a group of recovery units, and running a stage's share of the groups.

SC-DD synthesis by BatchNorm-statistics matching, faithful to the reference: N(0, 1) init in normalised space,
Adam (betas 0.5/0.9, eps 1e-8), cosine LR to zero set before each step, per-channel clamp to the valid pixel
range after each step, the last iterate kept, circular-roll jitter (and batch-shared RandomResizedCrop + flip
for ImageNet-style data). The loss of each step is :func:`hf_scdd.losses.bn_matching.grouped_recovery_loss`.

**Grouped recovery.** ``G`` units with the same batch size share one forward pass ([G*B, C, H, W]) with BN
statistics per unit and a summed loss, so each unit's gradient is mathematically its own; Adam and the schedule
are element-wise and the model is in eval mode, so each step equals one-by-one recovery up to float rounding
(measured: ≤1e-8 on input gradients; on CPU only the classifier GEMM is not batch-invariant). SC-DD's
optimisation amplifies rounding over hundreds of Adam steps, though, so *bit*-reproducibility needs a fixed
grouping: see :mod:`hf_scdd.synthesis.units`. :func:`auto_group_size` picks ``G`` from the model's
activation size and the device's *total* memory, so reruns on the same machine agree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..augment.recovery import apply_recovery_augmentation, boxes_to_corners, sample_recovery_plan
from ..errors import BackboneError, NonFiniteError
from ..formats.distilled_set import save_unit, unit_path
from ..data.tensors import normalize
from ..losses.bn_matching import BNStatsRecorder, BNTargets, bn_layers, grouped_recovery_loss
from ..training.accelerator import Precision
from ..utils import total_memory
from .units import Unit

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.9)
ADAM_EPS = 1e-8
FINITE_CHECK_EVERY = 25
"""Steps between reads of the on-device "a loss was NaN/inf" flag (each read is a device sync)."""


@dataclass
class SynthesisSpec:
    """Everything a group's optimisation needs besides its units."""

    iterations: int
    lr: float
    r_bn: float
    first_bn_multiplier: float
    jitter: int
    random_crop: bool
    crop_scale_min: float
    channels: int
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    image_format: str = "png"
    crop_curriculum: bool = False
    class_bn_weight: float = 0.0
    targets: BNTargets | None = None
    """BN targets (None: the model's running statistics, SC-DD's)."""
    init_images: torch.Tensor | None = None
    """uint8 ``[K, IPC, C, H, W]`` starting images per class and IPC index (None: N(0, 1) noise, SC-DD's)."""

    @classmethod
    def from_config(
        cls,
        config: Any,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        targets: BNTargets | None = None,
        init_images: torch.Tensor | None = None,
    ) -> SynthesisSpec:
        """The spec of a resolved ``RecoverConfig`` (presets filled in) for a model's channels and normalisation,
        with the measured BN targets and the selected real starting images when the config asks for them."""
        return cls(
            iterations=config.iterations, lr=config.lr, r_bn=config.r_bn,
            first_bn_multiplier=config.first_bn_multiplier, jitter=config.jitter,
            random_crop=bool(config.random_crop), crop_scale_min=config.crop_scale_min, channels=channels,
            image_size=config.image_size, mean=list(mean), std=list(std), image_format=config.image_format,
            crop_curriculum=bool(config.crop_curriculum), class_bn_weight=float(config.class_bn_weight),
            targets=targets, init_images=init_images,
        )

    def initial_images(self, unit: Unit, generator: torch.Generator) -> torch.Tensor:
        """A unit's normalised starting batch ``[B, C, H, W]``: its classes' selected real images at its IPC
        index, or N(0, 1) noise drawn first from the unit's generator."""
        batch, size = len(unit.classes), self.image_size
        if self.init_images is None:
            return torch.randn(batch, self.channels, size, size, generator=generator)
        return normalize(self.init_images[list(unit.classes), unit.ipc], self.mean, self.std)


StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def synthesize_group(
    model: nn.Module,
    units: Sequence[Unit],
    spec: SynthesisSpec,
    *,
    device: torch.device | str = "cpu",
    precision: Precision | None = None,
    on_step: StepCallback | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimise ``units`` (same batch size) together; returns (normalised images [G, B, C, H, W], ce [G], bn [G]).

    Each unit's init and augmentation come from ``torch.Generator().manual_seed(unit.seed)`` on the CPU, in a
    fixed order (init, roll offsets, crop boxes, flips), so a unit's result is the same whatever shares the
    forward pass. Each step's loss is :func:`~hf_scdd.losses.bn_matching.grouped_recovery_loss` (the model's
    forward under ``precision``'s autocast; BN statistics and the loss in float32). ``on_step(step, ce, bn)``
    is called after every step with device tensors.
    """
    batch = len(units[0].classes)
    if any(len(u.classes) != batch for u in units):
        raise ValueError("units stacked in one group must have the same number of classes")
    size, steps = spec.image_size, spec.iterations
    inits, plans = [], []
    for unit in units:
        generator = torch.Generator().manual_seed(unit.seed)
        inits.append(spec.initial_images(unit, generator))
        plans.append(
            sample_recovery_plan(
                generator, steps, (size, size), jitter=spec.jitter, random_crop=spec.random_crop,
                crop_scale=(spec.crop_scale_min, 1.0), crop_curriculum=spec.crop_curriculum,
            )
        )
    device = torch.device(device)
    x = torch.stack(inits).to(device).requires_grad_(True)
    labels = torch.tensor([c for u in units for c in u.classes], dtype=torch.long, device=device)
    shifts = [plan.shifts for plan in plans]
    corners = flips = None
    if spec.random_crop:
        corners = torch.stack([boxes_to_corners(plan.boxes) for plan in plans]).to(device)
        flips = torch.stack([plan.flips for plan in plans]).to(device)
    mean = torch.tensor(spec.mean, device=device).view(1, 1, -1, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 1, -1, 1, 1)
    low, high = (0.0 - mean) / std, (1.0 - mean) / std
    optimizer = torch.optim.Adam([x], lr=spec.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    ce = bn = torch.zeros(len(units), device=device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first non-finite step, on the device
    with BNStatsRecorder(model, groups=len(units), first_bn_multiplier=spec.first_bn_multiplier,
                         targets=spec.targets, class_weight=spec.class_bn_weight) as recorder:
        for step in range(steps):
            optimizer.param_groups[0]["lr"] = spec.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            augmented = apply_recovery_augmentation(x, step, shifts, corners, flips)
            loss, ce, bn = grouped_recovery_loss(
                model, augmented, labels, groups=len(units), r_bn=spec.r_bn,
                first_bn_multiplier=spec.first_bn_multiplier, precision=precision, recorder=recorder,
            )
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
            if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == steps:
                check_finite_synthesis(int(first_bad), units, spec)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                x.clamp_(min=low, max=high)
            if on_step is not None:
                on_step(step, ce.detach(), bn.detach())
        if steps == 0:  # selected real images kept as they are: report what the objective says of them
            with torch.no_grad():
                _, ce, bn = grouped_recovery_loss(
                    model, x.flatten(0, 1), labels, groups=len(units), r_bn=spec.r_bn,
                    first_bn_multiplier=spec.first_bn_multiplier, precision=precision, recorder=recorder,
                )
        recorder.clear()
    if not bool(torch.isfinite(x).all()):
        check_finite_synthesis(max(steps - 1, 0), units, spec)
    return x.detach(), ce.detach(), bn.detach()


def check_finite_synthesis(first_bad: int, units: Sequence[Unit], spec: SynthesisSpec) -> None:
    """Stop a group whose loss (or images) became NaN/inf at step ``first_bad`` (-1: none), naming the likely
    causes; no unit file is written for it, so nothing black is ever kept as finished."""
    if first_bad < 0:
        return
    names = ", ".join(u.name for u in units[:3]) + (", ..." if len(units) > 3 else "")
    raise NonFiniteError(
        f"recover: the loss of unit(s) {names} became NaN/inf at step {first_bad + 1} of {spec.iterations}: "
        f"--lr ({spec.lr:g}) or --r_bn ({spec.r_bn:g}) is likely too large for this backbone (or its BN statistics "
        "are extreme); rerun with smaller values (this run's units were removed, so the folder takes the new config)"
    )


def to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], image_format: str) -> torch.Tensor:
    """Normalised images [..., C, H, W] → uint8 pixels: rounded for PNG, truncated for JPEG (the reference)."""
    shape = (-1,) + (1,) * 2
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(shape)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(shape)
    pixels = (x.float() * s + m).clamp(0.0, 1.0) * 255.0
    return (pixels.round() if image_format == "png" else pixels.floor()).to(torch.uint8)


def auto_group_size(
    model: nn.Module, units: Sequence[Unit], channels: int, image_size: int, device_type: str, cap: int
) -> int:
    """How many units to stack in one forward pass, from the model's activation size and total device memory.

    The per-unit cost is the sum of every leaf module's output size for one unit of the first unit's batch
    size (a no-grad dry run on the CPU), ×3 for the activations autograd keeps plus their gradients. It is
    compared with 40 % of the device's *total* memory (``torch.cuda.get_device_properties`` or ``MemTotal``),
    not the free memory, so the answer is the same on every rerun on the same machine. Capped at ``cap`` and
    at the number of units sharing a batch size.
    """
    batch = len(units[0].classes)
    cap = min(cap, max(sum(1 for u in units if len(u.classes) == len(v.classes)) for v in units))
    sizes: list[int] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * 4) if torch.is_tensor(out) else None)
        for m in model.modules()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(batch, channels, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
    per_unit = max(1, 3 * sum(sizes))
    if device_type == "cuda":
        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    else:
        total = total_memory()
    return max(1, min(cap, int(0.4 * total // per_unit)))


def check_recovery_model(model: nn.Module, name: str, num_classes: int) -> None:
    """Refuse models that cannot drive recovery: no BN, no classifier head, wrong class count, no normalisation."""
    bn_layers(model)  # raises BNStatsError for a model without BatchNorm2d
    heads = getattr(model, "num_classes", None)
    if not heads:
        raise BackboneError(
            f"backbone {name!r} has no classifier head (num_classes={heads}); recovery needs class logits. "
            "Fit a linear probe first: hf-scdd probe --backbone ... (or pass a classifier)."
        )
    if int(heads) != num_classes:
        raise BackboneError(
            f"backbone {name!r} predicts {heads} classes but the dataset has {num_classes}; use the probe "
            "trained on this dataset, or pass the matching --dataset."
        )
    for attribute in ("mean", "std"):
        if getattr(model, attribute, None) is None:
            raise BackboneError(f"backbone {name!r} has no '{attribute}' attribute: its input normalisation is unknown")


def recover_units(
    accelerator,
    model: nn.Module,
    groups: Sequence[Sequence[Unit]],
    spec: SynthesisSpec,
    folder: Path,
    *,
    precision: Precision,
    log_every: int,
) -> None:
    """Optimise this process's share of the unfinished groups and write each finished unit's file.

    Every rank lists the same finished units before anyone adds one; whole groups go to processes
    (``split_between_processes``), so the grouping (and with it the float rounding) is the same on any
    process count. CE/BN are logged every ``log_every`` steps (each log is a device sync).
    """
    from tqdm.auto import tqdm

    remaining = [g for g in groups if not all(unit_path(folder, u).exists() for u in g)]
    accelerator.wait_for_everyone()  # every rank listed the same finished units before anyone adds one
    with accelerator.split_between_processes(remaining) as mine:
        mine = list(mine)
    if mine:
        logger.info("rank %d: %d of %d groups of %d unit(s) to do", accelerator.process_index, len(mine),
                    len(groups), max(len(g) for g in groups))
    bar = tqdm(total=sum(len(g) for g in mine) * spec.iterations, desc="recover",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    done_steps = 0
    for group in mine:
        def on_step(step: int, ce: torch.Tensor, bn: torch.Tensor, _n=len(group)) -> None:
            nonlocal done_steps
            done_steps += _n
            if (step + 1) % log_every == 0 or step + 1 == spec.iterations:
                ce_mean, bn_mean = float(ce.mean()), float(bn.mean())
                accelerator.log({"recover/ce": ce_mean, "recover/bn": bn_mean,
                                 "recover/loss": ce_mean + spec.r_bn * bn_mean}, step=done_steps)
                bar.set_postfix(ce=f"{ce_mean:.3f}", bn=f"{bn_mean:.3f}")
                bar.update(done_steps - bar.n)

        x, ce, bn = synthesize_group(model, group, spec, device=accelerator.device, precision=precision,
                                     on_step=on_step)
        pixels = to_uint8(x, spec.mean, spec.std, spec.image_format)
        for g, unit in enumerate(group):
            if not unit_path(folder, unit).exists():  # a resumed group: its finished units are already there
                save_unit(folder, unit, pixels[g], float(ce[g]), float(bn[g]))
    bar.close()
    accelerator.wait_for_everyone()
