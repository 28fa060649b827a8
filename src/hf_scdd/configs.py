"""Stage configuration: one ``@dataclass`` per stage, parsed from YAML plus command-line overrides.

Each stage module defines its config dataclass (``SqueezeConfig`` in ``stages/squeeze.py``, ``RecoverConfig``
in ``stages/recover.py``, ...), inheriting :class:`StageConfig` for the fields every stage shares (and
:class:`PostTrainViewFields` for the post-training views relabel and evaluate must agree on). :func:`parse_config`
does what trl's ``TrlParser`` does on top of transformers' ``HfArgumentParser``: read ``--config file.yaml``,
use it as defaults, then apply the command line, so ``--help`` documents every field.

Every stage writes its resolved config next to its output (:func:`save_config`) and refuses to reuse an
output folder that was made with a different config (:func:`check_or_write_config`): mixing two runs'
outputs is how distilled sets silently go wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import yaml

from .errors import ConfigError
from .utils import atomic_write_text

if TYPE_CHECKING:
    from .augment.views import ViewSpec

T = TypeVar("T")

__all__ = [
    "ConfigError", "DistilledSetFields", "PostTrainViewFields", "StageConfig", "check_or_write_config", "config_from_dict",
    "load_yaml", "parse_config", "record_runtime", "save_config",
]


@dataclass
class StageConfig:
    """Fields shared by every stage."""

    output_dir: str = field(default="outputs/run", metadata={"help": "Folder the stage writes to."})
    seed: int = field(default=0, metadata={"help": "Seed; the same seed and config give the same output."})
    dataset: str = field(
        default="fashion_mnist",
        metadata={"help": "Built-in 'fashion_mnist', or any load_dataset id or local folder."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (auto-detected if unset)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (auto-detected if unset)."})
    image_size: int | None = field(
        default=None,
        metadata={"help": "Resize real images to this square side (default: the first training image's size; "
                  "give it for data of mixed sizes, e.g. 224 for ImageNet)."},
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "load_dataset(..., streaming=True): read the dataset as a stream (Hub-scale data, nothing "
                  "downloaded or converted up front); implies --data_source stream."},
    )
    data_source: str = field(
        default="auto",
        metadata={"help": "How real images are read: 'memory' (decoded once into cached uint8 tensors), 'stream' "
                  "(decoded per batch in DataLoader workers) or 'auto' (memory when the decoded train split fits "
                  "$HF_SCDD_IN_MEMORY_MAX_BYTES, default 2 GiB). Same rows, same results."},
    )
    num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader workers decoding streamed batches (default: the spare CPUs, at most 8)."},
    )
    cpu: bool = field(default=False, metadata={"help": "Force the CPU even when an accelerator is present."})
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "'no', 'bf16', 'fp16' or 'auto' (bf16 where the hardware runs it fast, else no)."},
    )
    report_to: str = field(
        default="jsonl",
        metadata={"help": "Accelerate tracker: 'jsonl' (built in, offline), 'tensorboard', 'wandb', ... or 'none'."},
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "Hub repo id to push the result to."})

    # Fields that do not change the result and may differ between a run and its resumption (both data
    # sources read the same rows in the same order: tests/test_sources.py).
    RUNTIME_FIELDS = ("cpu", "report_to", "push_to_hub", "data_source", "num_workers")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def result_fields(self) -> dict[str, Any]:
        """The fields that determine the output (what a resumed run must agree on)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME_FIELDS}


@dataclass
class DistilledSetFields:
    """The distilled set and the teacher that relabel and evaluate both read."""

    distilled: str | None = field(default=None, metadata={"help": "Distilled set: folder or Hub dataset id."})
    revision: str | None = field(default=None, metadata={"help": "Revision of a Hub distilled set."})
    teacher: str | None = field(
        default=None,
        metadata={"help": "Teacher with a classifier (relabel's labels, evaluate's online KD): folder, squeeze/"
                  "probe output folder or Hub id."},
    )
    teacher_revision: str | None = field(default=None, metadata={"help": "Revision of a Hub teacher."})


@dataclass
class PostTrainViewFields:
    """Post-training augmentation and batching, shared by ``relabel`` and ``evaluate``: stored soft labels
    only fit the views (and batches) they were made for, so both stages take the same fields."""

    batch_size: int = field(default=64, metadata={"help": "Post-training batch size (SC-DD: 64)."})
    crop: str = field(
        default="pad",
        metadata={"help": "'rrc' RandomResizedCrop (SC-DD ImageNet), 'pad' RandomCrop with padding (CIFAR), 'none'."},
    )
    crop_scale_min: float = field(default=0.08, metadata={"help": "Smallest RRC area share (SC-DD: 0.08)."})
    crop_pad: int = field(default=4, metadata={"help": "Padding in pixels for --crop pad (CIFAR: 4)."})
    flip: bool = field(default=True, metadata={"help": "Random horizontal flips."})
    mix: str = field(default="cutmix", metadata={"help": "'cutmix' (SC-DD ImageNet), 'mixup' (CIFAR) or 'none'."})
    mix_alpha: float = field(
        default=1.0, metadata={"help": "Beta(alpha, alpha) for lambda (CutMix 1.0, Mixup 0.8 as in SC-DD)."}
    )

    def view_spec(self) -> "ViewSpec":
        from .augment.views import ViewSpec

        return ViewSpec(
            crop=self.crop, scale_min=self.crop_scale_min, pad=self.crop_pad, flip=self.flip,
            mix=self.mix, mix_alpha=self.mix_alpha,
        )


def parse_config(config_cls: type[T], args: Sequence[str] | None = None, prog: str | None = None) -> T:
    """Parse ``config_cls`` from ``--config file.yaml`` (defaults) and the command line (overrides)."""
    from transformers import HfArgumentParser

    args = list(sys.argv[1:] if args is None else args)
    parser = HfArgumentParser(config_cls, prog=prog)
    parser.add_argument("--config", type=str, default=None, help="YAML file with field values; CLI overrides it.")
    yaml_path = _pop_config_path(args)
    if yaml_path is not None:
        values = load_yaml(yaml_path)
        known = {f.name for f in dataclasses.fields(config_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{yaml_path}: unknown field(s) {unknown} for {config_cls.__name__}")
        parser.set_defaults(**values)
    # The extra --config argument comes back as a trailing Namespace: keep only the dataclass.
    config, *_, unused = parser.parse_args_into_dataclasses(
        args=args, look_for_args_file=False, return_remaining_strings=True
    )
    if unused:
        raise ConfigError(f"unknown argument(s) {unused} for {config_cls.__name__}; see --help for the fields")
    return config


def _pop_config_path(args: list[str]) -> str | None:
    for i, arg in enumerate(args):
        if arg == "--config":
            if i + 1 >= len(args):
                raise ConfigError("--config needs a YAML file path")
            path = args[i + 1]
            del args[i : i + 2]
            return path
        if arg.startswith("--config="):
            del args[i]
            return arg.split("=", 1)[1]
    return None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML file of field values (a mapping), as ``--config`` takes it."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of field names to values")
    return values


def config_from_dict(config_cls: type[T], values: dict[str, Any]) -> T:
    """Build a config from a dict, refusing unknown keys (used by the pipeline and tests)."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for {config_cls.__name__}")
    return config_cls(**values)


def save_config(config: StageConfig, folder: str | os.PathLike, name: str = "config.json", **extra: Any) -> Path:
    """Record the full config (plus ``extra`` provenance such as the library version) next to the output."""
    from . import __version__

    path = Path(folder) / name
    payload = {"stage": type(config).__name__, "hf_scdd_version": __version__, **extra, "config": config.to_dict()}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def check_or_write_config(
    config: StageConfig, folder: str | os.PathLike, name: str = "config.json", runtime: dict[str, Any] | None = None
) -> bool:
    """Write the config into a fresh folder, or check it matches the one already there.

    Returns True when the folder already held this config (a resumption). Raises :class:`ConfigError` when
    it holds a different one, naming the differing fields, instead of mixing two runs' outputs.
    ``runtime`` (e.g. the resolved precision) is recorded under ``"runtime"`` but never compared: a resumed
    run on other hardware may differ there; it then updates the record (:func:`record_runtime`).
    """
    path = Path(folder) / name
    if path.exists():
        payload = json.loads(path.read_text())
        previous = payload.get("config", {})
        current = json.loads(json.dumps(config.to_dict(), default=str))
        # a field the recorded config predates counts as its default (folders written by older versions)
        defaults = {f.name: f.default for f in dataclasses.fields(config) if f.default is not dataclasses.MISSING}
        diffs = {
            k: (previous.get(k, defaults.get(k)), v)
            for k, v in current.items()
            if k not in config.RUNTIME_FIELDS and previous.get(k, defaults.get(k)) != v
        }
        if diffs:
            listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(diffs.items()))
            raise ConfigError(
                f"{folder} already holds the output of a run with a different config ({listing}). "
                "Use another --output_dir, or delete the folder to start over."
            )
        if runtime is not None:
            record_runtime(folder, runtime, name)
        return True
    save_config(config, folder, name, **({"runtime": runtime} if runtime is not None else {}))
    return False


def record_runtime(folder: str | os.PathLike, values: dict[str, Any], name: str = "config.json") -> None:
    """Add runtime information (resolved precision, data source, ...) to an existing config record.

    Keys are merged into ``"runtime"``; when a value changes (a resumed run on other hardware) the previous
    record is kept under ``"runtime_earlier"``. Nothing is written when nothing changes.
    """
    path = Path(folder) / name
    payload = json.loads(path.read_text())
    previous = payload.get("runtime")
    merged = {**(previous or {}), **json.loads(json.dumps(values, default=str))}
    if merged == previous:
        return
    if previous is not None and any(k in previous and previous[k] != v for k, v in merged.items()):
        payload.setdefault("runtime_earlier", []).append(previous)
    payload["runtime"] = merged
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
