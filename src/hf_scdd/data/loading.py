"""Image-classification data for every stage: the built-in Fashion-MNIST and any ``load_dataset`` source.

Every stage consumes an :class:`ImageData`: a ``DatasetDict`` (or, with ``streaming=True``, an
``IterableDatasetDict``) with ``train``/``test`` splits whose columns are normalised to ``image``
(``datasets.Image``) and ``label`` (``ClassLabel`` with real names), plus the per-channel normalisation
statistics and the channel count the backbone expects. Stages read images through ``data.source(split)``
(:mod:`hf_scdd.data.sources`: in-memory tensors or streaming, chosen by size). Columns are detected (``img``,
``fine_label``, ...) or named, the test split is the first of ``test``/``validation``/... that exists, and
anything unusable is refused with a :class:`~hf_scdd.errors.DataError` naming the fix.

Surprises in the data are decided explicitly, before any work: a class without training images is refused
(every stage needs every class: the probe's classifier, recovery's images, the random baseline; checked on
map-style data, whose label column can be read without a pass over a stream); grey images for a 3-channel
backbone (or colour for a 1-channel one) are converted with a logged line; images of another size than the
first are resized with a logged line naming the sizes (:class:`~hf_scdd.data.decoding.Decoder`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .builtin import BUILTIN, is_builtin, load_builtin, seed_builtin_tensors
from .sources import ImageSource, choose_data_source, make_source
from .tensors import channel_stats, load_or_decode, normalize

IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "pixel_values", "picture", "png", "jpg")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "coarse_label", "y")
TEST_SPLIT_CANDIDATES = ("test", "validation", "valid", "val")
GREY_MODES = ("L", "1", "I", "I;16", "F")
STATS_SAMPLES = 10_000
"""Training images the normalisation statistics are measured on (a seeded sample, never the whole split)."""
STATS_RUNS = 100
"""The statistics sample is this many seeded runs of consecutive rows (bounded pages of a memory-mapped table)."""

logger = logging.getLogger(__name__)


@dataclass
class ImageData:
    """A labelled image dataset ready for the pipeline.

    Attributes:
        dataset: ``DatasetDict`` (``IterableDatasetDict`` when streaming) with ``train`` and ``test`` splits,
            columns ``image`` and ``label``.
        name: where it came from (``fashion_mnist``, a Hub id or a folder), recorded in every card.
        channels: channel count images are converted to (1 for grey, 3 for colour).
        image_size: the side length images are resized to when they are not all the same size.
        streaming: the splits are ``datasets.IterableDataset``s (``load_dataset(..., streaming=True)``).
        data_source: ``auto``, ``memory`` or ``stream`` (:func:`~hf_scdd.data.sources.choose_data_source`).
        num_workers: DataLoader workers of the streaming source (None: one per spare CPU, at most 8).
        mean, std: per-channel normalisation statistics in [0, 1] pixel units; unless given, measured on the
            first use on a seeded sample of ``stats_samples`` (:data:`STATS_SAMPLES`) training images in
            :data:`STATS_RUNS` runs of consecutive rows, read
            through the dataset's source (the same rows, so the same values, in memory or streamed).
    """

    dataset: "datasets.DatasetDict"  # noqa: F821
    name: str
    channels: int
    image_size: int
    streaming: bool = False
    data_source: str = "auto"
    num_workers: int | None = None
    given_stats: tuple | None = None
    stats_samples: int = STATS_SAMPLES
    stats_seed: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset["train"].features["label"].names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mean(self) -> tuple[float, ...]:
        return self._stats()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self._stats()[1]

    def _stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.given_stats is None:
            sample = self.source("train").subset(self.stats_samples, self.stats_seed, runs=STATS_RUNS)
            self.given_stats = channel_stats(images for images, _ in sample.batches(256))
        return self.given_stats

    def _split(self, split: str):
        if split not in self.dataset:
            raise DataError(f"split {split!r} not found; available splits: {sorted(self.dataset)}")
        return self.dataset[split]

    def num_rows(self, split: str = "train") -> int:
        """Rows of a split (a streamed split without a recorded size is counted once, labels only)."""
        ds = self._split(split)
        if not self.streaming:
            return len(ds)
        if ("rows", split) not in self._cache:
            info = (ds.info.splits or {}).get(str(ds.split)) if ds.info is not None else None
            known = getattr(info, "num_examples", None)
            self._cache[("rows", split)] = int(known) if known else sum(1 for _ in ds.select_columns(["label"]))
        return self._cache[("rows", split)]

    @property
    def source_kind(self) -> str:
        """``memory`` or ``stream``: what ``data_source`` resolves to for this dataset (by its train split)."""
        rows = None if self.streaming else self.num_rows("train")
        return choose_data_source(self.data_source, streaming=self.streaming, rows=rows, channels=self.channels,
                                  image_size=self.image_size)

    def source(self, split: str = "train") -> ImageSource:
        """The :class:`~hf_scdd.data.sources.ImageSource` every stage reads ``split`` through."""
        if ("source", split) not in self._cache:
            kind = self.source_kind
            self._cache[("source", split)] = make_source(
                kind, dataset=self._split(split), channels=self.channels, image_size=self.image_size,
                num_workers=self.num_workers, num_rows=self.num_rows(split) if self.streaming else None,
                tensors=lambda: self.tensors(split),
            )
        return self._cache[("source", split)]

    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as ``(uint8 images [N, C, H, W], int64 labels [N])``, decoded once and cached on
        disk: the in-memory source's data (small datasets only; a streamed dataset has none)."""
        ds = self._split(split)
        if self.streaming:
            raise DataError("a streamed dataset (streaming=True) is not decoded into tensors; use data.source()")
        if ("tensors", split) not in self._cache:
            self._cache[("tensors", split)] = load_or_decode(ds, self.channels, self.image_size)
        return self._cache[("tensors", split)]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] (any device) → float32 normalised with this dataset's statistics."""
        return normalize(images_uint8, self.mean, self.std)


def load_image_dataset(
    name_or_path: str | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    channels: int | None = None,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    revision: str | None = None,
    streaming: bool = False,
    data_source: str = "auto",
    num_workers: int | None = None,
) -> ImageData:
    """Load a labelled image dataset for distillation.

    Args:
        name_or_path: ``None``/``"fashion_mnist"`` for the built-in Fashion-MNIST, otherwise any
            ``load_dataset`` id or local folder (parquet repo layout, ImageFolder, ...).
        image_column, label_column: override the automatic column detection.
        train_split, test_split: split names; the test split defaults to the first of
            ``test``/``validation``/``valid``/``val`` that exists.
        channels: convert images to this many channels (default: 1 if the data is grey, else 3).
        image_size: resize to this square size (default: the size of the first training image).
        mean, std: override the normalisation statistics (default: measured on a seeded sample of the
            training split when first needed).
        streaming: ``load_dataset(..., streaming=True)``: nothing is downloaded or converted up front.
        data_source, num_workers: how stages read images (:mod:`hf_scdd.data.sources`).
    """
    if is_builtin(name_or_path):
        dsd, name = load_builtin(streaming), BUILTIN
    else:
        dsd, name = _load_any(name_or_path, revision, streaming), str(name_or_path)
    dsd = _select_splits(dsd, train_split, test_split, name)
    dsd = _standardise_columns(dsd, image_column, label_column, name)
    if not streaming:
        check_every_class_has_images(dsd["train"], name, train_split)
    first = first_example(dsd["train"])["image"]
    native = 1 if first.mode in GREY_MODES else 3
    if channels is None:
        channels = native
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if channels != native:
        logger.info("%s: converting %s images to %d channel(s), as the backbone expects", name,
                    "grey" if native == 1 else f"{first.mode}", channels)
    if image_size is None:
        image_size = max(first.size)
    given = None
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels:
            raise DataError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
        given = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
    data = ImageData(dsd, name, channels, int(image_size), streaming=streaming, data_source=data_source,
                     num_workers=num_workers, given_stats=given)
    choose_data_source(data_source, streaming=streaming, rows=0, channels=channels, image_size=int(image_size))
    if name == BUILTIN and not streaming:
        seed_builtin_tensors(data.dataset, data.channels, data.image_size)
    return data


def check_every_class_has_images(train, name: str, split: str) -> None:
    """Refuse a dataset whose ClassLabel names a class that has no training image (reads the label column
    only): the probe could not learn it, recovery would synthesise it from nothing, the baseline would fail."""
    names = train.features["label"].names
    counts = [0] * len(names)
    for label in train["label"]:
        counts[label] += 1
    empty = [f"{names[c]!r} ({c})" for c, count in enumerate(counts) if count == 0]
    if empty:
        raise DataError(
            f"dataset {name!r}: class(es) {', '.join(empty[:5])} of {len(names)} have no image in split {split!r}; "
            "every class needs training images: add them, drop the class from the label feature, or pass the "
            "split that has them with --train_split NAME"
        )


def first_example(ds) -> dict:
    """The first example of a split (map-style or streamed)."""
    if hasattr(ds, "__len__"):
        if len(ds) == 0:
            raise DataError("the training split is empty")
        return ds[0]
    for example in ds:
        return example
    raise DataError("the training split is empty")


def _load_any(name_or_path: str, revision: str | None, streaming: bool = False):
    import datasets

    from ..utils import first_line, hub_context

    try:
        loaded = datasets.load_dataset(name_or_path, revision=revision, streaming=streaming)
    except Exception as err:  # noqa: BLE001
        where = "" if os.path.isdir(name_or_path) else f" {hub_context()}"
        raise DataError(
            f"could not load dataset {name_or_path!r} with datasets.load_dataset{where} ({type(err).__name__}: "
            f"{first_line(err)}); pass a Hub dataset id, a folder in the Hub parquet layout, or an ImageFolder "
            "directory"
        ) from err
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    elif isinstance(loaded, datasets.IterableDataset):
        loaded = datasets.IterableDatasetDict({"train": loaded})
    return loaded


def _select_splits(dsd, train_split: str, test_split: str | None, name: str):
    if train_split not in dsd:
        raise DataError(
            f"dataset {name!r} has no split {train_split!r} (it has {sorted(dsd)}); pass --train_split NAME"
        )
    if test_split is None:
        test_split = next((s for s in TEST_SPLIT_CANDIDATES if s in dsd), None)
        if test_split is None:
            raise DataError(
                f"dataset {name!r} has no test split (it has {sorted(dsd)}); pass --test_split NAME "
                "naming the held-out split"
            )
    elif test_split not in dsd:
        raise DataError(
            f"dataset {name!r} has no split {test_split!r} (it has {sorted(dsd)}); pass --test_split NAME"
        )
    return type(dsd)({"train": dsd[train_split], "test": dsd[test_split]})


def _standardise_columns(dsd, image_column: str | None, label_column: str | None, name: str):
    """Rename the detected (or given) columns to ``image``/``label`` and check their types."""
    import datasets

    features = dsd["train"].features
    if features is None:
        raise DataError(f"dataset {name!r} does not declare its features (columns and types); load it without "
                        "streaming, or give it a dataset card with dataset_info")
    image_column = image_column or _detect(features, IMAGE_COLUMN_CANDIDATES, datasets.Image)
    label_column = label_column or _detect(features, LABEL_COLUMN_CANDIDATES, datasets.ClassLabel)
    if image_column is None or image_column not in features:
        typed = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        found = f"several image columns {typed}" if len(typed) > 1 else "no image column"
        raise DataError(f"dataset {name!r} has {found} (columns: {list(features)}); pass --image_column NAME")
    if label_column is None or label_column not in features:
        raise DataError(
            f"dataset {name!r} has no label column (columns: {list(features)}); distillation needs class "
            "labels: pass --label_column NAME"
        )
    if not isinstance(features[image_column], datasets.Image):
        raise DataError(
            f"column {image_column!r} of {name!r} is {features[image_column]}, not an image; "
            "pass --image_column naming a datasets.Image column"
        )
    dsd = type(dsd)({s: ds.select_columns([image_column, label_column]) for s, ds in dsd.items()})
    if image_column != "image":
        dsd = dsd.rename_column(image_column, "image")
    if label_column != "label":
        dsd = dsd.rename_column(label_column, "label")
    label_feature = dsd["train"].features["label"]
    if not isinstance(label_feature, datasets.ClassLabel):
        dsd = _to_class_label(dsd, label_feature, name)
    return dsd


def _detect(features, candidates, feature_type) -> str | None:
    typed = [c for c, f in features.items() if isinstance(f, feature_type)]
    for candidate in candidates:
        if candidate in typed:
            return candidate
    if len(typed) == 1:
        return typed[0]
    return next((c for c in candidates if c in features), None)


def _to_class_label(dsd, feature, name: str):
    """Integer labels without names become a ClassLabel named by their values; anything else is refused."""
    import datasets

    dtype = getattr(feature, "dtype", None)
    if dtype is None or not str(dtype).startswith(("int", "uint")):
        raise DataError(
            f"label column of {name!r} has type {feature}; labels must be class indices (int or ClassLabel). "
            "Convert string labels with dataset.class_encode_column('label') first."
        )
    values = sorted(set(_labels(dsd["train"])) | set(_labels(dsd["test"])))
    if values[0] < 0 or values != list(range(values[-1] + 1)):
        raise DataError(
            f"labels of {name!r} are not contiguous class indices 0..C-1 (found {values[:10]}...)"
        )
    names = [str(v) for v in values]
    return dsd.cast_column("label", datasets.ClassLabel(names=names))


def _labels(ds) -> list[int]:
    """Every label of a split (one pass over the label column of a streamed split)."""
    if hasattr(ds, "__len__"):
        return list(ds["label"])
    return [example["label"] for example in ds.select_columns(["label"])]
