"""The soft-label format: FKD-style per-epoch records (or one vector per image) as safetensors files.

SC-DD as released runs its teacher online during post-training (nothing stored). SRe²L's FKD instead stores,
for every epoch, the augmentation each image got and the teacher's logits on the resulting mixed batch, so
post-training needs no teacher. This is the FKD variant in a portable form, in a distilled set's
``soft_labels/`` folder::

    epoch_XXXX.safetensors   one file per epoch: the epoch's EpochPlan (order int32 [N], crop float16 [N, 4],
                             flip bool [N], mix_index int32 [N], mix_lambda float32 [B], mix_box int32 [B, 4])
                             and the teacher's logits on each mixed view: logits fp16 [N, K] or int8 [N, K] +
                             scale fp16 [N]; with top-k also indices int16 [N, K] and tail fp16 [N] (the mean
                             of the other classes, so high-temperature targets keep their mass)
    compact.safetensors      ``--mode compact``: one vector per image (teacher on the un-augmented image)
    relabel_config.json      the config that wrote them; label_bytes.json, the storage report

The header of every file records the format (:class:`LabelFormat`: version, mode, counts, batch size, seed,
temperature, top-k, dtype, view settings) and what the labels are bound to: a fingerprint of the labelled images
in their order (``images_sha256``, :func:`images_fingerprint` of the uint8 pixels the teacher saw) and the
teacher (id, resolved revision, ``teacher_sha256`` of its weights). :class:`SoftLabelStore` reads a folder and
validates it before any training step uses it (:func:`labels_for_set` also checks the binding to a distilled
set, so labels copied from another set of the same size are refused), and :func:`replay` re-renders exactly
the stored views, so the stored logits belong to the views the student sees. No torch internals are patched
(cf. SRe²L issue #17).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..augment.views import EpochPlan, ViewSpec, make_epoch_plan, render_batch
from ..errors import ConfigError, NonFiniteError, SoftLabelError
from ..models.loading import TeacherFn, model_fingerprint
from ..utils import atomic_save_safetensors, first_line
from .distilled_set import SOFT_LABELS_DIR, distilled_images

FORMAT_NAME = "hf_scdd.soft_labels"
FORMAT_VERSION = 2  # 2: bound to the labelled images (images_sha256, image_channels) and the teacher's weights
COMPACT_FILE = "compact.safetensors"
LABEL_DTYPES = ("fp16", "int8")


def epoch_file(epoch: int) -> str:
    """The file name of one epoch's labels."""
    return f"epoch_{epoch:04d}.safetensors"


def images_fingerprint(images_uint8: torch.Tensor) -> str:
    """SHA-256 of uint8 images [N, C, H, W] in their order: what a label file is bound to."""
    images = images_uint8.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(images.shape)}|".encode())
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Format: metadata and logit encodings
# --------------------------------------------------------------------------------------------------------


@dataclass
class LabelFormat:
    """What every soft-label file's header records (all values are stored as strings)."""

    mode: str  # "fkd" (per-epoch plans + logits) or "compact" (one vector per image)
    num_images: int
    num_classes: int
    num_epochs: int
    batch_size: int
    image_size: int
    seed: int
    temperature: float
    topk: int  # 0 = all classes
    label_dtype: str
    teacher: str
    teacher_revision: str
    view: dict[str, Any]
    images_sha256: str = ""
    image_channels: int = 0
    teacher_sha256: str = ""
    format_version: int = FORMAT_VERSION

    def metadata(self, **extra: Any) -> dict[str, str]:
        values = {**asdict(self), **extra}
        meta = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in values.items()}
        return {"format": "pt", "hf_scdd_format": FORMAT_NAME, **meta}

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> "LabelFormat":
        if meta.get("hf_scdd_format") != FORMAT_NAME:
            raise SoftLabelError(f"{source} is not an hf_scdd soft-label file (no '{FORMAT_NAME}' header)")
        version = int(meta.get("format_version", "0"))
        if version > FORMAT_VERSION:
            raise SoftLabelError(
                f"{source} uses soft-label format version {version}, newer than this hf_scdd understands "
                f"({FORMAT_VERSION}); upgrade hf_scdd (pip install -U hf_scdd) to read it"
            )
        if version < FORMAT_VERSION:
            raise SoftLabelError(
                f"{source} uses soft-label format version {version}, which does not record the images and teacher "
                "it belongs to; delete the folder and rerun `hf-scdd relabel` to write checked labels"
            )
        try:
            return cls(
                mode=meta["mode"], num_images=int(meta["num_images"]), num_classes=int(meta["num_classes"]),
                num_epochs=int(meta["num_epochs"]), batch_size=int(meta["batch_size"]),
                image_size=int(meta["image_size"]), seed=int(meta["seed"]),
                temperature=float(meta["temperature"]), topk=int(meta["topk"]), label_dtype=meta["label_dtype"],
                teacher=meta["teacher"], teacher_revision=meta["teacher_revision"],
                view=json.loads(meta["view"]), images_sha256=meta["images_sha256"],
                image_channels=int(meta["image_channels"]), teacher_sha256=meta["teacher_sha256"],
                format_version=version,
            )
        except (KeyError, ValueError) as err:
            raise SoftLabelError(f"{source} has an incomplete soft-label header ({err}); rerun hf-scdd relabel") from err

    def view_spec(self) -> ViewSpec:
        view = dict(self.view)
        view["ratio"] = tuple(view.get("ratio", (3 / 4, 4 / 3)))
        return ViewSpec(**view)


def encode_logits(logits: torch.Tensor, topk: int = 0, label_dtype: str = "fp16") -> dict[str, torch.Tensor]:
    """fp32 logits [n, C] → the stored tensors (``logits`` and, as needed, ``indices``/``tail``/``scale``)."""
    if label_dtype not in LABEL_DTYPES:
        raise ConfigError(f"label_dtype must be one of {LABEL_DTYPES}, got {label_dtype!r}")
    logits = logits.detach().float().cpu()
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteError(
            "the teacher's logits hold NaN/inf (its weights are finite, so its activations overflow on these "
            "images): use another --teacher"
        )
    out: dict[str, torch.Tensor] = {}
    values = logits
    num_classes = logits.shape[1]
    if 0 < topk < num_classes:
        values, indices = logits.topk(topk, dim=1)
        rest = (logits.sum(1) - values.sum(1)) / (num_classes - topk)
        out["indices"] = indices.to(torch.int16)
        out["tail"] = rest.to(torch.float16)
    if label_dtype == "int8":
        scale = (values.abs().amax(dim=1) / 127.0).clamp_min(1e-8).to(torch.float16)
        out["logits"] = (values / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
        out["scale"] = scale
    else:
        out["logits"] = values.to(torch.float16)
    return out


def decode_logits(tensors: dict[str, torch.Tensor], num_classes: int) -> torch.Tensor:
    """Inverse of :func:`encode_logits`: fp32 logits [n, C] (top-k: the other classes get the stored tail mean)."""
    values = tensors["logits"].float()
    if "scale" in tensors:
        values = values * tensors["scale"].float()[:, None]
    if "indices" not in tensors:
        return values
    full = tensors["tail"].float()[:, None].expand(len(values), num_classes).clone()
    full.scatter_(1, tensors["indices"].long(), values)
    return full


# --------------------------------------------------------------------------------------------------------
# One epoch of labels (written by relabel, read by the store, generated in memory for baselines)
# --------------------------------------------------------------------------------------------------------


@dataclass
class EpochLabels:
    """An epoch's plan and the teacher's fp32 logits on each slot's mixed view ([N, C], slot order)."""

    plan: EpochPlan
    logits: torch.Tensor

    def batch_logits(self, b: int) -> torch.Tensor:
        return self.logits[self.plan.batch_slots(b)]


def label_epoch(
    images_uint8: torch.Tensor, teacher: TeacherFn, fmt: LabelFormat, epoch: int, device=None
) -> dict[str, torch.Tensor]:
    """The tensors of one epoch file: the plan and the encoded teacher logits on every mixed batch."""
    plan = make_epoch_plan(fmt.num_images, fmt.batch_size, fmt.view_spec(), fmt.seed, epoch, fmt.image_size)
    logits = torch.cat([teacher(render_batch(images_uint8, plan, b, device)).cpu() for b in range(plan.num_batches)])
    return {**plan.tensors(), **encode_logits(logits, fmt.topk, fmt.label_dtype)}


def label_compact(images_uint8: torch.Tensor, teacher: TeacherFn, fmt: LabelFormat, device=None) -> dict[str, torch.Tensor]:
    """One soft label per image, the teacher on the un-augmented image (dataset order)."""
    chunks = []
    for start in range(0, len(images_uint8), max(1, fmt.batch_size)):
        x = images_uint8[start : start + fmt.batch_size].to(device or images_uint8.device).float() / 255.0
        chunks.append(teacher(x).cpu())
    return encode_logits(torch.cat(chunks), fmt.topk, fmt.label_dtype)


def write_label_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """One label file, written atomically (a killed relabel leaves no half file to trust)."""
    atomic_save_safetensors(path, tensors, metadata)


class InMemoryLabels:
    """Epoch labels generated on demand with the same format (the stored-label protocol for a baseline set
    that has no label files, e.g. the random real subset). Passes through the same encoding, so the baseline
    sees the same precision loss as the stored labels."""

    def __init__(self, images_uint8: torch.Tensor, teacher: TeacherFn, fmt: LabelFormat, device=None):
        self.images, self.teacher, self.format, self.device = images_uint8, teacher, fmt, device

    def epoch(self, e: int) -> EpochLabels:
        e = e % self.format.num_epochs
        tensors = label_epoch(self.images, self.teacher, self.format, e, self.device)
        return EpochLabels(EpochPlan.from_tensors(tensors, self.format.batch_size), decode_logits(tensors, self.format.num_classes))

    def compact_logits(self) -> torch.Tensor:
        return decode_logits(label_compact(self.images, self.teacher, self.format, self.device), self.format.num_classes)


# --------------------------------------------------------------------------------------------------------
# Reading, validating, writing
# --------------------------------------------------------------------------------------------------------


class SoftLabelStore:
    """Reads a ``soft_labels/`` folder and checks it before any training step uses it.

    Args:
        folder: the ``soft_labels`` folder (or the distilled-set folder that contains it).
        num_images, num_classes: what the distilled set has; a mismatch is an error.
        require_complete: every epoch ``0..num_epochs-1`` must exist (false while relabel is resuming).
        images: the labelled uint8 images as the teacher saw them (``image_channels`` × ``image_size``²), in
            order: labels made for other images (another set, a changed or reordered one) are refused.
        teacher: the teacher the labels must come from (checked by the fingerprint of its weights).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        num_images: int | None = None,
        num_classes: int | None = None,
        require_complete: bool = True,
        images: torch.Tensor | None = None,
        teacher: torch.nn.Module | None = None,
    ):
        folder = Path(folder)
        if (folder / SOFT_LABELS_DIR).is_dir():
            folder = folder / SOFT_LABELS_DIR
        self.folder = folder
        if not folder.is_dir():
            raise SoftLabelError(f"no soft-label folder at {folder}; create it with `hf-scdd relabel`")
        compact = folder / COMPACT_FILE
        files = sorted(folder.glob("epoch_*.safetensors"))
        if not files and not compact.exists():
            raise SoftLabelError(
                f"{folder} holds no soft-label files (epoch_XXXX.safetensors or {COMPACT_FILE}); run `hf-scdd relabel`"
            )
        self.mode = "fkd" if files else "compact"
        self.paths = {int(p.stem.split("_")[1]): p for p in files}
        sources = list(self.paths.values()) or [compact]
        self.format = read_header(sources[0])
        for path in sources[1:]:
            other = read_header(path)
            if other != self.format:
                raise SoftLabelError(
                    f"{path.name} and {sources[0].name} in {folder} were written with different settings; "
                    "delete the folder and rerun `hf-scdd relabel`"
                )
        self._check_counts(num_images, num_classes)
        if images is not None:
            self.check_images(images)
        if teacher is not None:
            self.check_teacher(teacher)
        if require_complete and self.mode == "fkd":
            missing = [e for e in range(self.format.num_epochs) if e not in self.paths]
            if missing:
                shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
                raise SoftLabelError(
                    f"{folder} is missing {len(missing)} of {self.format.num_epochs} epoch files (epochs {shown}); "
                    "rerun the same `hf-scdd relabel` command to complete them"
                )

    def _check_counts(self, num_images: int | None, num_classes: int | None) -> None:
        fmt = self.format
        if num_images is not None and fmt.num_images != num_images:
            raise SoftLabelError(
                f"soft labels in {self.folder} are for {fmt.num_images} images but the distilled set has "
                f"{num_images}: they belong to another (or a changed) distilled set; rerun `hf-scdd relabel` on it"
            )
        if num_classes is not None and fmt.num_classes != num_classes:
            raise SoftLabelError(
                f"soft labels in {self.folder} have {fmt.num_classes} classes but the dataset has {num_classes}: "
                "the teacher was trained on another label set; relabel with a teacher for these classes"
            )

    def check_images(self, images_uint8: torch.Tensor) -> None:
        """Refuse labels made for other images than ``images_uint8`` (the set decoded as the header says)."""
        if images_fingerprint(images_uint8) != self.format.images_sha256:
            raise SoftLabelError(
                f"soft labels in {self.folder} were made for other images (fingerprint "
                f"{self.format.images_sha256[:12]}, not this set's {images_fingerprint(images_uint8)[:12]}): copied "
                f"from another distilled set, or the set changed since; delete {self.folder} and rerun "
                "`hf-scdd relabel` on this set"
            )

    def check_teacher(self, teacher: torch.nn.Module) -> None:
        """Refuse labels made by another teacher than ``teacher`` (compared by their weights)."""
        if model_fingerprint(teacher) != self.format.teacher_sha256:
            fmt = self.format
            raise SoftLabelError(
                f"soft labels in {self.folder} were made by teacher {fmt.teacher!r} (revision "
                f"{fmt.teacher_revision}), whose weights differ from the --teacher given: pass that teacher, or "
                "rerun `hf-scdd relabel` with this one"
            )

    @property
    def num_epochs(self) -> int:
        return self.format.num_epochs if self.mode == "fkd" else 1

    def _load(self, path: Path) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise SoftLabelError(
                f"{path} cannot be read ({first_line(err)}); delete it and rerun `hf-scdd relabel`"
            ) from err

    def epoch(self, e: int) -> EpochLabels:
        """Epoch ``e`` (cycled over the stored epochs when training runs longer than they cover)."""
        if self.mode != "fkd":
            raise SoftLabelError(f"{self.folder} holds compact labels (one per image), not per-epoch records")
        e = e % self.format.num_epochs
        tensors = self._load(self.paths[e])
        n, fmt = self.format.num_images, self.format
        k = fmt.topk if 0 < fmt.topk < fmt.num_classes else fmt.num_classes
        expected = {"order": (n,), "crop": (n, 4), "flip": (n,), "mix_index": (n,), "logits": (n, k)}
        for name, shape in expected.items():
            if name not in tensors or tuple(tensors[name].shape) != shape:
                got = tuple(tensors[name].shape) if name in tensors else "missing"
                raise SoftLabelError(
                    f"{self.paths[e]}: tensor {name!r} should have shape {shape}, found {got}; "
                    "delete the file and rerun `hf-scdd relabel`"
                )
        return EpochLabels(EpochPlan.from_tensors(tensors, fmt.batch_size), decode_logits(tensors, fmt.num_classes))

    def compact_logits(self) -> torch.Tensor:
        """Per-image logits [N, C] in dataset order (compact mode)."""
        if self.mode != "compact":
            raise SoftLabelError(f"{self.folder} holds per-epoch records, not compact labels")
        tensors = self._load(self.folder / COMPACT_FILE)
        if tensors["logits"].shape[0] != self.format.num_images:
            raise SoftLabelError(f"{self.folder / COMPACT_FILE} is damaged (wrong row count); rerun `hf-scdd relabel`")
        return decode_logits(tensors, self.format.num_classes)

    def nbytes(self) -> int:
        files = list(self.paths.values()) or [self.folder / COMPACT_FILE]
        return sum(p.stat().st_size for p in files)


def read_header(path: Path) -> LabelFormat:
    """The validated format of one label file (checks that the file is complete, not only its header)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise SoftLabelError(
            f"{path} is truncated or not a safetensors file ({first_line(err)}); delete it and rerun "
            "`hf-scdd relabel`"
        ) from err
    return LabelFormat.from_metadata(meta, str(path))


def replay(images_uint8: torch.Tensor, labels: EpochLabels, device=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(mixed views in [0, 1], stored teacher logits)`` batch by batch, exactly as relabel made them."""
    for b in range(labels.plan.num_batches):
        yield render_batch(images_uint8, labels.plan, b, device), labels.batch_logits(b)


def labels_for_set(
    folder: str | os.PathLike, dataset, *, num_classes: int | None = None, teacher: torch.nn.Module | None = None
) -> SoftLabelStore:
    """The soft labels in ``folder`` checked to belong to the distilled ``dataset`` (its images, in its order,
    decoded as the labels' header says the teacher saw them) and, when given, to ``teacher``."""
    store = SoftLabelStore(folder, num_images=len(dataset), num_classes=num_classes)
    fmt = store.format
    store.check_images(distilled_images(dataset, fmt.image_channels, fmt.image_size)[0])
    if teacher is not None:
        store.check_teacher(teacher)
    return store


def label_format(
    config: Any, images: torch.Tensor, teacher: torch.nn.Module, teacher_revision: str | None = None
) -> LabelFormat:
    """The format a ``RelabelConfig`` describes for ``images`` (uint8) and ``teacher`` (its class count), bound
    to both by their fingerprints; ``teacher_revision`` is the resolved Hub commit (default: the config's)."""
    num_classes = int(getattr(teacher, "num_classes", 0) or 0)
    if num_classes <= 0:
        with torch.no_grad():
            num_classes = int(teacher.eval()(torch.zeros(1, *images.shape[1:])).shape[1])
    view = asdict(config.view_spec())
    view["ratio"] = list(view["ratio"])
    return LabelFormat(
        mode=config.mode, num_images=len(images), num_classes=num_classes,
        num_epochs=config.epochs if config.mode == "fkd" else 1, batch_size=config.batch_size,
        image_size=int(images.shape[-1]), seed=config.seed, temperature=config.temperature, topk=config.topk,
        label_dtype=config.label_dtype, teacher=str(config.teacher),
        teacher_revision=str(teacher_revision or config.teacher_revision), view=view,
        images_sha256=images_fingerprint(images), image_channels=int(images.shape[1]),
        teacher_sha256=model_fingerprint(teacher),
    )


def is_valid_label_file(path: Path, fmt: LabelFormat) -> bool:
    """A finished file of this very format (a truncated or foreign one is redone)."""
    if not path.exists():
        return False
    try:
        return read_header(path) == fmt
    except SoftLabelError:
        return False


def bytes_report(store: SoftLabelStore, image_bytes: int | None) -> dict[str, Any]:
    """What the labels cost in bytes, whole files included, next to the images they label."""
    fmt = store.format
    label_bytes = store.nbytes()
    return {
        "mode": fmt.mode,
        "label_bytes": label_bytes,
        "image_bytes": image_bytes,
        "labels_per_image_bytes": label_bytes / fmt.num_images,
        "labels_over_images": (label_bytes / image_bytes) if image_bytes else None,
        "epochs": store.num_epochs,
        "num_images": fmt.num_images,
        "num_classes": fmt.num_classes,
        "topk": fmt.topk,
        "label_dtype": fmt.label_dtype,
    }


def format_bytes_report(report: dict[str, Any]) -> str:
    """The one-line summary relabel prints."""
    text = f"soft labels: {report['label_bytes']:,} bytes ({report['epochs']} epoch(s), {report['mode']})"
    if report.get("image_bytes"):
        text += f"; images: {report['image_bytes']:,} bytes; labels/images = {report['labels_over_images']:.2f}x"
    return text


def write_soft_labels(
    state, images: torch.Tensor, teacher: TeacherFn, fmt: LabelFormat, labels_dir: Path
) -> None:
    """Write the files ``fmt`` describes that ``labels_dir`` does not hold yet (a valid file of this very
    format is kept; a truncated or foreign one is redone). FKD epochs are spread over processes round robin;
    each depends on ``(seed, epoch)`` only. ``state`` is the stage's accelerate state."""
    from tqdm.auto import tqdm

    if fmt.mode == "compact":
        if state.is_main_process and not is_valid_label_file(labels_dir / COMPACT_FILE, fmt):
            write_label_file(labels_dir / COMPACT_FILE, label_compact(images, teacher, fmt, state.device), fmt.metadata())
        return
    mine = [e for e in range(fmt.num_epochs) if e % state.num_processes == state.process_index]
    todo = [e for e in mine if not is_valid_label_file(labels_dir / epoch_file(e), fmt)]
    for e in tqdm(todo, desc="relabel", disable=not state.is_local_main_process):
        write_label_file(labels_dir / epoch_file(e), label_epoch(images, teacher, fmt, e, state.device),
                         fmt.metadata(epoch=e))


def is_compact(store: Any) -> bool:
    """Whether a store (read from files or made in memory) holds one label per image."""
    return getattr(store, "mode", None) == "compact" or (
        isinstance(store, InMemoryLabels) and store.format.mode == "compact"
    )
