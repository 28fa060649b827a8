"""Image-classification data for every stage: the built-in Fashion-MNIST and any ``load_dataset`` source.

Every stage consumes an :class:`ImageData`: a ``DatasetDict`` with ``train``/``test`` splits whose columns are
normalised to ``image`` (``datasets.Image``) and ``label`` (``ClassLabel`` with real names), plus the
per-channel normalisation statistics and the channel count the backbone expects. Columns are detected
(``img``, ``fine_label``, ...) or named, the test split is the first of ``test``/``validation``/... that
exists, and anything unusable is refused with a :class:`~hf_scdd.errors.DataError` naming the fix.

Surprises in the data are decided explicitly, before any work: a class without training images is refused
(every stage needs every class: the probe's classifier, recovery's images, the random baseline); grey images
for a 3-channel backbone (or colour for a 1-channel one) are converted with a logged line; images of another
size than the first are resized with a logged line naming the sizes (:func:`~hf_scdd.data.tensors.decode_images`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..errors import DataError
from .builtin import BUILTIN, is_builtin, load_builtin, seed_builtin_tensors
from .tensors import channel_stats, load_or_decode, normalize

IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "pixel_values", "picture", "png", "jpg")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "coarse_label", "y")
TEST_SPLIT_CANDIDATES = ("test", "validation", "valid", "val")
GREY_MODES = ("L", "1", "I", "I;16", "F")

logger = logging.getLogger(__name__)


@dataclass
class ImageData:
    """A labelled image dataset ready for the pipeline.

    Attributes:
        dataset: ``DatasetDict`` with ``train`` and ``test`` splits, columns ``image`` and ``label``.
        name: where it came from (``fashion_mnist``, a Hub id or a folder), recorded in every card.
        channels: channel count images are converted to (1 for grey, 3 for colour).
        mean, std: per-channel normalisation statistics in [0, 1] pixel units.
        image_size: the side length images are resized to when they are not all the same size.
    """

    dataset: "datasets.DatasetDict"  # noqa: F821
    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    _tensor_cache: dict = field(default_factory=dict, repr=False)

    @property
    def class_names(self) -> list[str]:
        return list(self.dataset["train"].features["label"].names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The split as ``(uint8 images [N, C, H, W], int64 labels [N])``, decoded once and cached on disk."""
        if split not in self.dataset:
            raise DataError(f"split {split!r} not found; available splits: {sorted(self.dataset)}")
        if split not in self._tensor_cache:
            self._tensor_cache[split] = load_or_decode(self.dataset[split], self.channels, self.image_size)
        return self._tensor_cache[split]

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
        mean, std: override the normalisation statistics (default: computed on the training split).
    """
    if is_builtin(name_or_path):
        dsd, name = load_builtin(), BUILTIN
    else:
        dsd, name = _load_any(name_or_path, revision), str(name_or_path)
    dsd = _select_splits(dsd, train_split, test_split, name)
    dsd = _standardise_columns(dsd, image_column, label_column, name)
    check_every_class_has_images(dsd["train"], name, train_split)
    first = dsd["train"][0]["image"]
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
    data = ImageData(dsd, name, channels, (), (), int(image_size))
    if name == BUILTIN:
        seed_builtin_tensors(data.dataset, data.channels, data.image_size)
    if mean is None or std is None:
        mean, std = channel_stats(data.tensors("train")[0])
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    data.mean, data.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
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


def _load_any(name_or_path: str, revision: str | None):
    import datasets

    from ..utils import first_line, hub_context

    try:
        loaded = datasets.load_dataset(name_or_path, revision=revision)
    except Exception as err:  # noqa: BLE001
        where = "" if os.path.isdir(name_or_path) else f" {hub_context()}"
        raise DataError(
            f"could not load dataset {name_or_path!r} with datasets.load_dataset{where} ({type(err).__name__}: "
            f"{first_line(err)}); pass a Hub dataset id, a folder in the Hub parquet layout, or an ImageFolder "
            "directory"
        ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    return loaded


def _select_splits(dsd, train_split: str, test_split: str | None, name: str):
    import datasets

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
    return datasets.DatasetDict({"train": dsd[train_split], "test": dsd[test_split]})


def _standardise_columns(dsd, image_column: str | None, label_column: str | None, name: str):
    """Rename the detected (or given) columns to ``image``/``label`` and check their types."""
    import datasets

    features = dsd["train"].features
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
    dsd = datasets.DatasetDict(
        {s: ds.select_columns([image_column, label_column]) for s, ds in dsd.items()}
    )
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
    values = sorted(set(dsd["train"]["label"]) | set(dsd["test"]["label"]))
    if values[0] < 0 or values != list(range(values[-1] + 1)):
        raise DataError(
            f"labels of {name!r} are not contiguous class indices 0..C-1 (found {values[:10]}...)"
        )
    names = [str(v) for v in values]
    return dsd.cast_column("label", datasets.ClassLabel(names=names))
