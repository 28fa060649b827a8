"""The accelerator of a stage and its compute precision.

:func:`make_accelerator` builds the ``Accelerator`` a stage runs with (CPU decision, checkpoint folder, trackers,
including a dependency-free JSONL tracker), always *without* mixed precision: ``Accelerator(mixed_precision=...)``
writes the process-global ``AcceleratorState``, so a second stage in the same process with another precision
would fail. Instead each stage resolves its own :class:`Precision` from its ``--mixed_precision`` and runs its
forward passes under ``precision.autocast()``.

``auto`` is bf16 where the hardware runs it natively (CUDA GPUs with bf16, CPUs with ``amx_bf16`` or
``avx512_bf16``, unless ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below them) and float32 elsewhere: emulated bf16 is
~17x *slower* than fp32 on an AVX2-only CPU.
``$HF_SCDD_AUTO_PRECISION`` (``bf16`` | ``no``) forces the answer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..configs import PRECISIONS
from ..errors import ConfigError
from ..utils import BF16_CPU_KINDS, bf16_units_usable, cpu_info, onednn_isa_cap, use_cpu

AUTO_PRECISION_ENV = "HF_SCDD_AUTO_PRECISION"
"""Environment variable forcing what ``auto`` resolves to (``bf16`` or ``no``), e.g. to test both paths."""


def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16) that oneDNN may use (no
    ``ONEDNN_MAX_CPU_ISA`` below them); elsewhere bf16 is emulated and many times *slower* than fp32 (measured:
    ~17× on an AVX2-only EPYC, 11× on an AMX Xeon capped at AVX2), so ``auto`` must not pick it."""
    info = cpu_info()
    return bf16_units_usable(info["cpu_kind"], info["onednn_isa_cap"])


def cpu_capped_below_itself() -> bool:
    """True when ``ONEDNN_MAX_CPU_ISA`` keeps oneDNN from this CPU's bf16 units (e.g. an AMX CPU capped at AVX2,
    as done to emulate an AVX2-only machine)."""
    return cpu_info()["cpu_kind"] in BF16_CPU_KINDS and not cpu_has_fast_bf16()


def auto_precision(device_type: str) -> str:
    """What ``auto`` means on ``device_type``: bf16 where the hardware runs it natively, else ``no``.

    ``$HF_SCDD_AUTO_PRECISION`` (``bf16`` or ``no``) overrides the hardware check, so one machine can run the
    code paths of both answers.
    """
    forced = os.environ.get(AUTO_PRECISION_ENV, "").strip().lower()
    if forced:
        if forced not in ("bf16", "no"):
            raise ConfigError(f"${AUTO_PRECISION_ENV} must be 'bf16' or 'no', got {forced!r}")
        return forced
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device_type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "no"
    return "no"


@dataclass(frozen=True)
class Precision:
    """One stage's compute precision, applied through its own autocast context.

    Not ``Accelerator(mixed_precision=...)``: that writes the process-global ``AcceleratorState``, so a
    second stage in the same process with another precision would fail. BN statistics, losses, images and
    optimiser state stay float32 (the losses take ``.float()`` logits); ``fp16`` (CUDA only) also needs the
    loss scaling that :meth:`grad_scaler` provides.

    Attributes:
        name: ``no`` (float32), ``bf16`` or ``fp16``.
        device_type: the device the autocast context applies to (``cpu``, ``cuda``, ...).
    """

    name: str
    device_type: str

    @classmethod
    def resolve(cls, requested: str, device: torch.device | str) -> "Precision":
        """The precision a stage runs at: ``requested`` with ``auto`` resolved for ``device``."""
        device_type = torch.device(device).type
        if requested not in PRECISIONS:
            raise ConfigError(f"--mixed_precision must be one of {list(PRECISIONS)}, got {requested!r}")
        name = auto_precision(device_type) if requested == "auto" else requested
        if name == "fp16" and device_type != "cuda":
            raise ConfigError("--mixed_precision fp16 needs a CUDA GPU; use bf16 or no on this device")
        return cls(name, device_type)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype autocast computes matrix products in (float32 when disabled)."""
        return {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def autocast(self):
        """The autocast context of this precision; for ``no`` it *disables* autocast (an enclosing one too)."""
        if self.name == "no":
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self):
        """A fresh ``GradScaler`` for fp16 (small gradients would underflow), ``None`` otherwise."""
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


CXX_COMPILERS = ("g++", "c++", "clang++")
"""What torch.compile's inductor backend builds its CPU kernels with (``$CXX`` first)."""


def check_compile(device: torch.device | str) -> None:
    """Refuse ``--compile`` where inductor cannot build kernels or its kernels crash: on the CPU it needs a C++
    compiler (without one the first training step fails deep inside torch with a long traceback), and under a
    ``ONEDNN_MAX_CPU_ISA`` cap below the CPU's bf16 units a compiled backward aborted the whole process."""
    if torch.device(device).type != "cpu":
        return
    names = [os.environ.get("CXX", ""), *CXX_COMPILERS]
    if not any(name and shutil.which(name) for name in names):
        raise ConfigError(
            "compile: true needs a C++ compiler for torch.compile's inductor backend on the CPU, and none of "
            f"$CXX, {', '.join(CXX_COMPILERS)} was found: install one (e.g. apt install g++) or run without compile"
        )
    if cpu_capped_below_itself():
        raise ConfigError(
            f"compile: true with ONEDNN_MAX_CPU_ISA={onednn_isa_cap()} below this CPU's own instruction set: "
            "torch.compile's training steps aborted the process under such a cap (AMX Xeon capped at AVX2); "
            "unset ONEDNN_MAX_CPU_ISA or run without compile"
        )


def compiled_forward(model: torch.nn.Module, compile_model: bool) -> torch.nn.Module:
    """What a stage's steps call a model through: the model itself, or with ``compile_model`` the same module
    under ``torch.compile`` (inductor, static shapes; attributes and ``train()`` reach the module itself).

    Why a wrapper and not the module compiled in place: evaluation, checkpoints and the saved model keep using
    the module itself (the wrapper shares its parameters and buffers), so a compiled run writes the same files,
    with the same names, as an eager one. Measured on the built-in student (benchmarks/compile_student.py, AMX
    CPU): steps 1.36x faster once compiled in bf16, but each batch shape compiles once (about 45 s on a cold
    cache), so a whole 3000-step evaluation gained only 3-5 %; it pays off for long runs and larger models.
    Compiled kernels round differently from eager ones: a compiled run is reproducible, but not bit-identical
    to an eager run.
    """
    if not compile_model:
        return model
    return torch.compile(model, dynamic=False)


def autocast_of(precision: Precision | None):
    """``precision.autocast()``, or a no-op context when no precision is given (plain float32)."""
    return precision.autocast() if precision is not None else nullcontext()


class JSONLTracker:
    """A dependency-free accelerate tracker: one JSON object per ``log`` call in ``<dir>/metrics.jsonl``."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        self.path = Path(logging_dir) / f"{run_name}.metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        with open(self.path.with_suffix(".config.json"), "w") as f:
            json.dump(values, f, indent=2, default=str)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), **values}, default=float) + "\n")

    def finish(self) -> None:
        pass


def make_accelerator(
    output_dir: str | os.PathLike,
    *,
    cpu: bool = False,
    report_to: str = "jsonl",
    run_name: str = "train",
    config: dict | None = None,
):
    """An ``Accelerator`` writing checkpoints under ``output_dir/checkpoints`` and logs to ``report_to``.

    Always without mixed precision (see :class:`Precision`): each stage applies its own autocast.
    """
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker
    from accelerate.utils import ProjectConfiguration

    log_with: Any = None
    if report_to == "jsonl":
        tracker_cls = type("JSONL", (JSONLTracker, GeneralTracker), {})
        log_with = [tracker_cls(run_name, Path(output_dir) / "logs")]
    elif report_to not in ("none", "", None):
        log_with = report_to
    accelerator = Accelerator(
        cpu=use_cpu(cpu),
        mixed_precision="no",
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(Path(output_dir) / "logs")
        ),
    )
    if log_with is not None:
        accelerator.init_trackers(run_name, config=_flat_config(config or {}))
    return accelerator


def _flat_config(config: dict) -> dict:
    """Trackers such as tensorboard only take scalars/strings as hyper-parameters."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v, default=str)) for k, v in config.items()}


def finish_trackers(accelerator) -> None:
    """Close the trackers but keep the process group: ``end_training()`` destroys it, and a pipeline runs
    several stages (each with its own trackers) in the same processes."""
    for tracker in accelerator.trackers:
        tracker.finish()


def stage_device(cpu: bool = False) -> torch.device:
    """The device a stage will run on (what :func:`make_accelerator` picks), known before anything is built."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(cpu)).device


def check_cpu_launch(cpu: bool) -> None:
    """Refuse a multi-process CPU launch without ``--cpu``: each process would run everything as rank 0."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.cuda.is_available() and not use_cpu(cpu):
        raise ConfigError(
            f"launched as {world} processes on a machine without GPUs, but the stage was not told to use the "
            "CPU, so every process would believe it is rank 0 and redo all the work. Pass --cpu true (or export "
            "ACCELERATE_USE_CPU=1)."
        )
