"""Stage configuration: one ``@dataclass`` per stage, parsed from YAML plus command-line overrides.

Each stage module defines its config dataclass (``SqueezeConfig`` in ``stages/squeeze.py``, ``RecoverConfig``
in ``stages/recover.py``, ...), inheriting :class:`StageConfig` for the fields every stage shares (and
:class:`PostTrainViewFields` for the post-training views relabel and evaluate must agree on). :func:`parse_config`
does what trl's ``TrlParser`` does on top of transformers' ``HfArgumentParser``: read ``--config file.yaml``,
use it as defaults, then apply the command line, so ``--help`` documents every field.

Every config validates itself (:meth:`StageConfig.validate`: every number finite, every value in its range)
before a stage reads or writes anything, and the pipeline validates every stage's config before running any.
Every stage writes its resolved config next to its output (:func:`record_config`) only once its work starts,
and refuses to reuse an output folder that was made with a different config (:func:`check_config`): mixing two
runs' outputs is how distilled sets silently go wrong. A run whose loss became NaN/inf leaves nothing to resume
(:func:`discard_on_failure`), so the corrected command runs in the same folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar

import yaml

from .errors import ConfigError, NonFiniteError
from .utils import atomic_write_text

if TYPE_CHECKING:
    from .augment.views import ViewSpec

T = TypeVar("T")

__all__ = [
    "CompileFields", "ConfigError", "DistilledSetFields", "PostTrainViewFields", "StageConfig", "check_config",
    "check_or_write_config", "config_from_dict", "discard_on_failure", "in_range", "load_yaml", "parse_config",
    "record_config", "record_runtime", "save_config",
]

PRECISIONS = ("auto", "no", "bf16", "fp16")
"""The values of ``--mixed_precision`` (resolved by :class:`hf_scdd.training.accelerator.Precision`)."""

Check = tuple[bool, str]
"""A validation check: (condition that must hold, the one-line message naming the flag and the fix)."""


def in_range(flag: str, value: float | None, low: float, high: float, *, low_open: bool = False,
             note: str = "") -> Check:
    """The check that ``value`` (``None`` = unset, which passes) lies in ``[low, high]`` (``(low, high]`` with
    ``low_open``); the message shows the interval so the fix is obvious. Upper bounds keep absurd values
    (``--lr 1e6``, ``--r_bn 1e39``, which overflows float32) from running to a NaN or saturated result."""
    ok = value is None or ((low < value) if low_open else (low <= value)) and value <= high
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
    return ok, f"--{flag} must be in {interval}, got {value!r}" + (f" ({note})" if note else "")


def _numbers(config: Any) -> Iterator[tuple[str, float]]:
    """Every float-valued field (lists included) of a config dataclass."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, float):
                yield f.name, item


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
    train_split: str = field(default="train", metadata={"help": "Split of --dataset to train (and distil) on."})
    test_split: str | None = field(
        default=None,
        metadata={"help": "Held-out split to score on (default: the first of test/validation/valid/val)."},
    )

    # Fields that do not change the result and may differ between a run and its resumption (both data
    # sources read the same rows in the same order: tests/test_sources.py).
    RUNTIME_FIELDS = ("cpu", "report_to", "push_to_hub", "data_source", "num_workers")

    def checks(self) -> list[Check]:
        """The (condition, message) pairs :meth:`validate` enforces; each config (and each field mixin)
        extends them through ``super().checks()``."""
        return [
            (bool(self.output_dir), "--output_dir must name a folder"),
            (self.seed >= 0, f"--seed must be >= 0, got {self.seed}"),
            (self.mixed_precision in PRECISIONS,
             f"--mixed_precision must be one of {list(PRECISIONS)}, got {self.mixed_precision!r}"),
            (bool(self.train_split), "--train_split must name a split of --dataset"),
            (self.test_split is None or self.test_split != self.train_split,
             f"--test_split {self.test_split!r} is the training split; name a held-out split"),
        ]

    def validate(self) -> None:
        """Refuse a config that cannot work, before a stage reads or writes anything: every number finite
        (``--lr inf`` / ``nan``), then :meth:`checks`. Raises :class:`ConfigError` with one line."""
        for name, value in _numbers(self):
            if not math.isfinite(value):
                raise ConfigError(f"--{name} must be a finite number, got {value!r}")
        for ok, message in self.checks():
            if not ok:
                raise ConfigError(message)

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

    def checks(self) -> list[Check]:
        return [*super().checks(), (self.distilled is None or bool(self.distilled), "--distilled must not be empty")]


@dataclass
class CompileFields:
    """``--compile``, shared by the stages that train a model (squeeze, evaluate)."""

    compile: bool = field(
        default=False,
        metadata={"help": "Run the training forward under torch.compile (inductor; on the CPU it needs a C++ "
                  "compiler): faster steps after a one-off compile per batch shape, so it pays off for long runs. "
                  "Reproducible, but not bit-identical to an eager run."},
    )


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

    def checks(self) -> list[Check]:
        from .augment.views import CROP_MODES, MIX_TYPES

        return [
            *super().checks(),
            (self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}"),
            (self.crop in CROP_MODES, f"--crop must be one of {list(CROP_MODES)}, got {self.crop!r}"),
            in_range("crop_scale_min", self.crop_scale_min, 0, 1, low_open=True),
            (self.crop_pad >= 0, f"--crop_pad must be >= 0, got {self.crop_pad}"),
            (self.mix in MIX_TYPES, f"--mix must be one of {list(MIX_TYPES)}, got {self.mix!r}"),
            in_range("mix_alpha", self.mix_alpha, 0, 100, low_open=True),
        ]

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
    """Build a config from a dict (the pipeline's per-stage YAML overrides, tests), refusing unknown keys and
    values of the wrong type; numbers written as strings (YAML reads ``1.0e6`` as one) are converted."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {unknown} for {config_cls.__name__}")
    hints = typing.get_type_hints(config_cls)
    return config_cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the field type ``hint`` (``X | None``, ``list[X]``, int, float, bool, str) or ConfigError."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"--{name} must be a list, got {value!r}")
        return [_coerce(name, item, typing.get_args(hint)[0]) for item in value]
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        ok = isinstance(value, bool)
    elif hint in (int, float):
        if isinstance(value, str):
            try:
                value = hint(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
        value = hint(value) if ok else value
    else:
        ok = not isinstance(hint, type) or isinstance(value, hint)
    if not ok:
        raise ConfigError(f"--{name} must be {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def save_config(config: StageConfig, folder: str | os.PathLike, name: str = "config.json", **extra: Any) -> Path:
    """Record the full config (plus ``extra`` provenance such as the library version) next to the output."""
    from . import __version__

    path = Path(folder) / name
    payload = {"stage": type(config).__name__, "hf_scdd_version": __version__, **extra, "config": config.to_dict()}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _recorded(folder: str | os.PathLike, name: str) -> dict[str, Any] | None:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.exists() else None


def config_differences(config: StageConfig, previous: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``field: (recorded, current)`` for every result field that differs from a recorded config. A field the
    record lacks (added to hf_scdd since) counts only when it is not at its default, so upgrading hf_scdd does
    not orphan a folder."""
    defaults = json.loads(json.dumps(type(config)().to_dict(), default=str)) if _constructible(config) else {}
    current = json.loads(json.dumps(config.to_dict(), default=str))
    return {
        k: (previous.get(k), v)
        for k, v in current.items()
        if k not in config.RUNTIME_FIELDS and not same_value(previous.get(k), v)
        and not (k not in previous and k in defaults and defaults[k] == v)
    }


def same_value(recorded: Any, current: Any) -> bool:
    """Equal values, or two spellings of the same local file or folder (``../data/x`` and ``/work/data/x``, each
    element of a list in turn): a path written another way is not another run's config."""
    if isinstance(recorded, list) and isinstance(current, list) and len(recorded) == len(current):
        return all(same_value(a, b) for a, b in zip(recorded, current))
    if recorded == current:
        return True
    if not (isinstance(recorded, str) and isinstance(current, str)):
        return False
    try:
        return os.path.exists(recorded) and os.path.exists(current) and os.path.samefile(recorded, current)
    except OSError:
        return False


def _constructible(config: StageConfig) -> bool:
    return all(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
               for f in dataclasses.fields(config))


def check_config(config: StageConfig, folder: str | os.PathLike, name: str = "config.json") -> bool:
    """Compare ``config`` with the one recorded in ``folder`` without writing anything.

    Returns True when the folder holds this config (a resumption or a finished run), False when it holds
    none. Raises :class:`ConfigError` naming the differing fields when it holds another one, instead of
    mixing two runs' outputs.
    """
    payload = _recorded(folder, name)
    if payload is None:
        return False
    diffs = config_differences(config, payload.get("config", {}))
    if diffs:
        listing = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(diffs.items()))
        raise ConfigError(
            f"{folder} already holds the output of a run with a different config ({listing}). "
            "Use another --output_dir, or delete the folder to start over."
        )
    return True


def record_config(
    config: StageConfig, folder: str | os.PathLike, name: str = "config.json", runtime: dict[str, Any] | None = None
) -> None:
    """Record ``config`` in ``folder`` as the stage's work starts (call :func:`check_config` first).

    ``runtime`` (e.g. the resolved precision) is recorded under ``"runtime"`` but never compared: a resumed run
    on other hardware may differ there; it then updates the record (earlier values under ``"runtime_earlier"``).
    """
    payload = _recorded(folder, name)
    if payload is None:
        save_config(config, folder, name, **({"runtime": runtime} if runtime is not None else {}))
    elif runtime is not None:
        record_runtime(folder, runtime, name)


def check_or_write_config(
    config: StageConfig, folder: str | os.PathLike, name: str = "config.json", runtime: dict[str, Any] | None = None
) -> bool:
    """:func:`check_config`, then :func:`record_config`: for a stage whose work starts right away.

    Returns True when the folder already held this config (a resumption).
    """
    resumed = check_config(config, folder, name)
    record_config(config, folder, name, runtime)
    return resumed


@contextmanager
def discard_on_failure(
    folder: str | os.PathLike, *owned: str, config_name: str = "config.json",
    errors: tuple[type[BaseException], ...] = (NonFiniteError,),
) -> Iterator[None]:
    """Run a stage's work; when it raises one of ``errors`` (by default a NaN/inf loss, :class:`NonFiniteError`),
    remove its config record and the working files it ``owned`` (names or glob patterns inside ``folder``)
    before re-raising.

    Such a run has nothing worth resuming (the same config diverges again at the same step, and input that a
    stage rejects before its first result is rejected again), and its record would refuse the corrected
    command as a "different config"; removing only what the stage itself writes leaves the folder as the run
    found it. Wrap only the part of a stage that cannot have finished any result when ``errors`` can be raised.
    """
    try:
        yield
    except errors:
        for pattern in (config_name, *owned):
            for path in Path(folder).glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


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
