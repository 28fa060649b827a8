"""The one Accelerate training loop that squeeze (MoCo v2, supervised), probe and evaluate share.

A stage supplies a ``step_fn(batch) -> dict`` returning a scalar ``"loss"`` (plus any scalars to log), its
forward passes under the stage's ``precision.autocast()``, and :func:`train` does the rest the same way for
every stage: backward (with fp16 loss scaling), optimiser and per-step scheduler, progress bar on the main
process, tracker logging, ``save_state`` checkpoints every epoch (and every ``checkpoint_steps``), and
resumption from the newest checkpoint when the same command is rerun.

Loaders come from :mod:`hf_scdd.training.loaders` (batches of uint8 images and labels from any
:class:`~hf_scdd.data.sources.ImageSource`, on the device; the stage's ``step_fn`` augments them there with
kornia) or, for data already in memory (the probe's cached features), :func:`index_loader`.

**Resumption is exact.** The shuffle order of an epoch is a function of ``(seed, epoch)``
(:class:`~hf_scdd.training.loaders.EpochSampler`, or the re-seeded buffer of a stream), not the state of a
generator, so a resumed run replays the very order an uninterrupted run would have used; every other random
state (Python, NumPy, torch, CUDA) is in the ``save_state`` checkpoint, and a mid-epoch resume skips the finished
batches by iterating past them, which consumes no random numbers. A killed run and its rerun therefore give
bit-identical weights.

**Divergence stops the run.** Every step's loss is checked (it is read back for logging anyway) and the model's
parameters after the last step: a NaN/inf raises :class:`~hf_scdd.errors.NonFiniteError` naming the step and
the learning rate, instead of saving a broken model as finished work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import NonFiniteError
from .accelerator import Precision
from .loaders import EpochSampler

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"


# --------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------


class IndexDataset(Dataset):
    """Yields indices 0..n-1; the stage gathers the (in-memory) examples itself, on the device."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def index_loader(n: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = True) -> DataLoader:
    """A loader over example indices whose order depends on ``(seed, epoch)`` only (``prepare`` shards it).

    The loader's own generator is private: PyTorch draws a seed from it on every ``iter()``, which would
    otherwise come from (and shift) the global generator that the augmentations use.
    """
    return DataLoader(
        IndexDataset(n), batch_size=batch_size, sampler=EpochSampler(n, seed, shuffle), drop_last=drop_last,
        generator=torch.Generator().manual_seed(seed),
    )


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0):
    """Per-step cosine decay to zero with optional linear warm-up.

    Pass it to :func:`train` *without* ``accelerator.prepare``: a prepared scheduler steps ``num_processes``
    times per optimiser step (accelerate assumes single-process step counts), so with ``total_steps`` counted
    in per-process steps the decay would end early; :func:`train` checkpoints an unprepared scheduler itself.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------


@dataclass
class LoopProgress:
    """Registered for checkpointing, so a resumed run knows where it stopped."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": json.dumps(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.history = json.loads(state["history"])


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest finished (``DONE``-marked) checkpoint under ``output_dir``, if any."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    done = [p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"step_\d+", p.name) and (p / "DONE").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, global_step: int, keep: int = 2) -> None:
    """``save_state`` into ``checkpoints/step_N``; a ``DONE`` marker makes a half-written one invisible."""
    folder = Path(output_dir) / CHECKPOINT_DIR / f"step_{global_step}"
    # every rank writes its RNG state into the folder, but save_state creates it on the main process only
    folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / "DONE").write_text(str(global_step))
        finished = sorted(
            (p for p in folder.parent.iterdir() if (p / "DONE").exists()), key=lambda p: int(p.name.split("_")[1])
        )
        for old in finished[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


StepFn = Callable[[Any], dict[str, torch.Tensor]]


def check_finite_loss(value: float, *, desc: str, step: int, epoch: int, lr: float) -> None:
    """Stop a run whose loss became NaN/inf, naming where and the likely cause (raises NonFiniteError)."""
    if not math.isfinite(value):
        raise NonFiniteError(
            f"{desc}: the loss became {value} at step {step} (epoch {epoch + 1}), learning rate {lr:g}: the "
            "learning rate is likely too high for this model and batch size (or the inputs hold NaN/inf); "
            "rerun with a lower --lr (this run's checkpoints were removed, so the folder takes the new config)"
        )


def check_finite_parameters(model: torch.nn.Module, desc: str) -> None:
    """Refuse to hand on a model whose parameters or buffers hold NaN/inf (the last update can overflow)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteError(
                f"{desc}: {name} holds NaN/inf after training: the learning rate is likely too high; rerun with "
                "a lower --lr (this run's checkpoints were removed, so the folder takes the new config)"
            )


def train(
    accelerator,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loader: DataLoader,
    step_fn: StepFn,
    epochs: int,
    output_dir: str | os.PathLike,
    extra_state: Iterable[Any] = (),
    checkpoint_steps: int = 0,
    on_epoch_end: Callable[[int], dict[str, float]] | None = None,
    desc: str = "train",
    max_grad_norm: float | None = None,
    after_step: Callable[[], None] | None = None,
    on_epoch_start: Callable[[int], None] | None = None,
    precision: Precision | None = None,
    checkpoint_epochs: int = 1,
) -> LoopProgress:
    """Run ``epochs`` epochs of ``step_fn`` with checkpoint/resume; returns the progress record.

    ``model``, ``optimizer``, ``scheduler`` and ``loader`` must already be ``accelerator.prepare``-d (the
    stage decides what to prepare: MoCo's key encoder is not). ``extra_state`` are objects with
    ``state_dict``/``load_state_dict`` to checkpoint too (MoCo's queue, the key encoder).
    ``on_epoch_end(epoch)`` may evaluate and returns scalars recorded in ``progress.history``.
    ``on_epoch_start(epoch)`` runs before each (also a resumed) epoch, e.g. to load that epoch's
    augmentation plan and stored soft labels.
    ``step_fn`` runs its forward passes under the stage's ``precision.autocast()`` itself (losses stay fp32);
    here ``precision`` only adds fp16 loss scaling (a checkpointed ``GradScaler``).
    A resumption checkpoint is written every ``checkpoint_epochs`` epochs and after the last one: students
    of small sets run thousands of tiny epochs, and a ``save_state`` after each would cost more than training.
    """
    from tqdm.auto import tqdm

    from accelerate.scheduler import AcceleratedScheduler

    progress = LoopProgress()
    accelerator.register_for_checkpointing(progress)
    for obj in extra_state:
        accelerator.register_for_checkpointing(obj)
    if scheduler is not None and not isinstance(scheduler, AcceleratedScheduler):
        # An unprepared scheduler (see cosine_schedule) is not saved by save_state unless registered.
        accelerator.register_for_checkpointing(scheduler)
    scaler = precision.grad_scaler() if precision is not None else None
    if scaler is not None:
        accelerator.register_for_checkpointing(scaler)
    resume = latest_checkpoint(output_dir)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"[{desc}] resuming from {resume} (epoch {progress.epoch}, step {progress.global_step})")

    steps_per_epoch = len(loader)
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=progress.global_step,
        desc=desc,
        disable=not accelerator.is_local_main_process,
        dynamic_ncols=True,
    )
    while progress.epoch < epochs:
        model.train()
        if on_epoch_start is not None:
            on_epoch_start(progress.epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(progress.epoch)
        skip = progress.step_in_epoch  # a mid-epoch resume: iterate past the finished batches
        for batch_index, batch in enumerate(loader):
            if batch_index < skip:
                continue
            outputs = step_fn(batch)
            loss = outputs["loss"]
            check_finite_loss(float(loss.detach()), desc=desc, step=progress.global_step + 1, epoch=progress.epoch,
                              lr=optimizer.param_groups[0]["lr"])
            accelerator.backward(loss if scaler is None else scaler.scale(loss))
            if max_grad_norm is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if after_step is not None:
                after_step()
            progress.step_in_epoch += 1
            progress.global_step += 1
            logs = {k: float(v.detach()) for k, v in outputs.items()}
            logs["lr"] = optimizer.param_groups[0]["lr"]
            accelerator.log(logs, step=progress.global_step)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}", epoch=progress.epoch)
            if checkpoint_steps and progress.global_step % checkpoint_steps == 0:
                save_checkpoint(accelerator, output_dir, progress.global_step)
        record = {"epoch": progress.epoch + 1, "loss": logs["loss"] if steps_per_epoch else float("nan")}
        if on_epoch_end is not None:
            record.update(on_epoch_end(progress.epoch))
        progress.history.append(record)
        accelerator.log({f"epoch/{k}": v for k, v in record.items()}, step=progress.global_step)
        progress.epoch += 1
        progress.step_in_epoch = 0
        if progress.epoch % max(1, checkpoint_epochs) == 0 or progress.epoch == epochs:
            save_checkpoint(accelerator, output_dir, progress.global_step)
    bar.close()
    check_finite_parameters(accelerator.unwrap_model(model), desc)
    return progress


def remove_checkpoints(accelerator, output_dir: str | os.PathLike) -> None:
    """Drop the resumption checkpoints once a stage's final output is written."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(Path(output_dir) / CHECKPOINT_DIR, ignore_errors=True)
    accelerator.wait_for_everyone()
