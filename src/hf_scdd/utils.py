"""Small decisions every stage needs made the same way, each made exactly once here.

* **Atomic writes.** Stages are resumable by listing what exists, and several processes share one output
  folder, so nothing may ever be seen half-written: every file and folder is written to a hidden temporary
  sibling (``.<name>.tmp<pid>``, ignored by uploads and by the readers' globs) and renamed into place.
* **The CPU decision.** ``--cpu`` or ``ACCELERATE_USE_CPU``: a ``PartialState`` and an ``Accelerator`` created
  with different answers disagree about the process group (under ``accelerate launch`` on CPUs every rank
  would believe it is alone).
* **Hub revisions.** The commit a Hub id resolves to, for provenance.
* **Total memory**, which sizes recovery groups identically on every rerun on one machine.
* **Quiet libraries**: the stage's own progress and results only.
* **Error context**: the first line of a library's error, and where Hub ids are fetched from
  (endpoint, ``HF_HUB_OFFLINE``), so that every message stays one line that says what was tried.

Nothing here imports torch at module level, so ``hf-scdd --help`` stays instant.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------


def temp_sibling(path: PathLike) -> Path:
    """The hidden temporary name next to ``path`` that this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary file name to write ``path``'s content to; it replaces ``path`` when the block
    succeeds and is removed when it fails, so readers see the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextmanager
def atomic_folder(folder: PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; it then replaces ``folder`` as a whole.

    ``keep_existing=True`` keeps a ``folder`` that appeared meanwhile (another process won the race to
    write the same content) and drops this one's copy.
    """
    folder = Path(folder)
    tmp = temp_sibling(folder)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep_existing:
        try:
            os.replace(tmp, folder)
        except OSError:  # a non-empty folder is there already: keep it
            shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_save_safetensors(
    path: PathLike, tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, str] | None = None
) -> None:
    """Write a safetensors file atomically, readable by others (safetensors itself creates 0600 files)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=dict(metadata or {}) or None)
        os.chmod(tmp, 0o644)


# --------------------------------------------------------------------------------------------------------
# Hardware and Hub
# --------------------------------------------------------------------------------------------------------


def use_cpu(flag: bool = False) -> bool:
    """Whether a stage runs on the CPU: its ``--cpu`` flag, or ``ACCELERATE_USE_CPU`` (set by
    ``accelerate launch --cpu`` and by the multi-process CPU recipe)."""
    return bool(flag) or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")


CPU_KIND_FLAGS = ("amx_bf16", "avx512_bf16", "avx2")
"""The /proc/cpuinfo flags that decide how fast bf16 runs here: native matrix units, AVX512-BF16, or AVX2 only
(where bf16 is emulated and many times slower than fp32)."""


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, which of :data:`CPU_KIND_FLAGS` it has, and its core count: every speed figure
    is recorded with these, since the same code runs 17× faster or slower in bf16 depending on them."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and model == "unknown":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags |= set(value.split())
    except OSError:
        pass
    present = [flag for flag in CPU_KIND_FLAGS if flag in flags]
    return {"cpu_model": model, "cpu_flags": present, "cpu_kind": present[0] if present else "other",
            "onednn_isa_cap": onednn_isa_cap(), "cores": os.cpu_count()}


BF16_CPU_KINDS = ("amx_bf16", "avx512_bf16")
"""The CPU kinds (:data:`CPU_KIND_FLAGS`) with native bf16 units."""

ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
"""oneDNN's instruction-set cap (and its older name): the kernels torch's convolutions run never use an
instruction set above it, whatever /proc/cpuinfo lists."""


def onednn_isa_cap() -> str | None:
    """The oneDNN instruction-set cap set in the environment (upper case), or None where there is none.

    It matters for speed figures and for ``auto`` precision: on an AMX CPU capped at ``AVX2``, bf16 convolutions
    are emulated and ran 11× *slower* than fp32 (benchmarks/RESULTS.md, "An AVX2-only CPU, emulated")."""
    for name in ONEDNN_ISA_ENV:
        value = os.environ.get(name, "").strip().upper()
        if value and value not in ("ALL", "DEFAULT"):
            return value
    return None


def bf16_units_usable(cpu_kind: str, isa_cap: str | None) -> bool:
    """Whether convolutions can use the CPU's native bf16 units: its kind (:data:`CPU_KIND_FLAGS`) allows them
    and oneDNN's instruction-set cap (:func:`onednn_isa_cap`) does not rule them out.

    AMX needs a cap that names AMX; AVX512-BF16 needs ``AVX512_CORE_BF16`` or above. An AMX CPU capped below AMX
    gains nothing from bf16 (measured 0.92× at ``AVX512_CORE_BF16``), so it counts as having no usable units."""
    if cpu_kind not in BF16_CPU_KINDS:
        return False
    if isa_cap is None or "AMX" in isa_cap:
        return True
    return cpu_kind == "avx512_bf16" and (isa_cap in ("AVX512_CORE_BF16", "AVX512_CORE_FP16")
                                          or isa_cap.startswith("AVX10"))


def hardware_summary() -> dict[str, Any]:
    """:func:`cpu_info` plus the GPU's name (None without one) and the torch version."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {**cpu_info(), "gpu": gpu, "torch": torch.__version__}


def total_memory() -> int:
    """Total memory of this machine in bytes (``MemTotal``; 4 GiB where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def resolve_hub_revision(name_or_path: str, revision: str | None = None, repo_type: str = "model") -> str | None:
    """The commit hash a Hub id (at ``revision``) resolves to; None for a local folder, and ``revision``
    itself when the Hub cannot be asked (offline): the loader then reports any real problem."""
    if os.path.isdir(name_or_path):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().repo_info(name_or_path, revision=revision, repo_type=repo_type).sha
    except Exception:  # noqa: BLE001 - provenance only; loading the repo raises the meaningful error
        return revision


def first_line(err: BaseException) -> str:
    """A library error's first line (some span pages), or its type when it has no message."""
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def hub_context() -> str:
    """Where a Hub id was fetched from, for error messages: the endpoint and the offline switch, so that an
    offline machine's "not found" reads as what it is."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return (f"from {constants.ENDPOINT} with HF_HUB_OFFLINE=1 (only the local Hub cache is read: unset "
                "HF_HUB_OFFLINE, or fetch the repo once online)")
    return f"from {constants.ENDPOINT} (HF_HUB_OFFLINE unset; an endpoint override is HF_ENDPOINT)"


def quiet_libraries() -> None:
    """Keep a run's output to the stage's own progress and results: no ``datasets`` / Hub progress bars,
    library logging at WARNING (their own switches; called once by the command-line start-up)."""
    import datasets
    import huggingface_hub.utils

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_warning()
    huggingface_hub.utils.disable_progress_bars()
