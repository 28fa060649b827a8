"""Image-classification data for every stage: the built-in Fashion-MNIST and any ``load_dataset`` source.

Every stage consumes an :class:`ImageData`: a ``DatasetDict`` with ``train``/``test`` splits whose columns are
normalised to ``image`` (``datasets.Image``) and ``label`` (``ClassLabel`` with real names), plus the
per-channel normalisation statistics and the channel count the backbone expects.

Small datasets (Fashion-MNIST, CIFAR) are trained on as in-memory ``uint8`` tensors: decoding once and
augmenting whole batches with kornia is far faster on a CPU than a per-image PIL pipeline.
:meth:`ImageData.tensors` decodes a split once and caches the result as safetensors.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

BUILTIN = "fashion_mnist"
"""Name of the built-in default dataset (also accepted: ``fashion-mnist``, ``builtin``)."""

FASHION_MNIST_DIR = Path(os.environ.get("HF_SCDD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

IMAGE_COLUMN_CANDIDATES = ("image", "img", "images", "pixel_values", "picture", "png", "jpg")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "fine_label", "class", "target", "coarse_label", "y")
TEST_SPLIT_CANDIDATES = ("test", "validation", "valid", "val")


class DataError(ValueError):
    """A dataset cannot be used as given; the message names the problem and the fix."""


def cache_dir() -> Path:
    """Where decoded tensors and the converted built-in dataset are cached (``$HF_SCDD_CACHE``)."""
    default = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hf_scdd"
    return Path(os.environ.get("HF_SCDD_CACHE", default))


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
            self._tensor_cache[split] = _load_or_decode(self.dataset[split], self.channels, self.image_size)
        return self._tensor_cache[split]

    def normalize(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] (any device) → float32 normalised with this dataset's statistics."""
        return normalize(images_uint8, self.mean, self.std)


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Scale to [0, 1] if uint8, then ``(x - mean) / std`` per channel."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to the valid [0, 1] pixel range."""
    m = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------


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
    if name_or_path is None or name_or_path.lower().replace("-", "_") in (BUILTIN, "builtin"):
        dsd, name = _load_builtin(), BUILTIN
    else:
        dsd, name = _load_any(name_or_path, revision), str(name_or_path)
    dsd = _select_splits(dsd, train_split, test_split, name)
    dsd = _standardise_columns(dsd, image_column, label_column, name)
    first = dsd["train"][0]["image"]
    if channels is None:
        channels = 1 if first.mode in ("L", "1", "I", "I;16", "F") else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    if image_size is None:
        image_size = max(first.size)
    data = ImageData(dsd, name, channels, (), (), int(image_size))
    if name == BUILTIN:
        _seed_builtin_tensors(data)
    if mean is None or std is None:
        mean, std = _channel_stats(data)
    if len(mean) != channels or len(std) != channels:
        raise DataError(f"mean/std need {channels} values (one per channel), got {len(mean)}/{len(std)}")
    data.mean, data.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return data


def _load_builtin():
    """Fashion-MNIST from the Debian package, converted once to a parquet folder; else from the Hub."""
    import datasets

    local = cache_dir() / "fashion_mnist_parquet"
    if (local / "data").is_dir():
        return datasets.load_dataset(str(local))
    tried = []
    if all((FASHION_MNIST_DIR / f).exists() for pair in _FASHION_MNIST_FILES.values() for f in pair):
        dsd = _fashion_mnist_from_idx(FASHION_MNIST_DIR)
        _write_parquet_folder(dsd, local)
        return datasets.load_dataset(str(local))
    tried.append(f"IDX files in {FASHION_MNIST_DIR} (install them with `apt-get install dataset-fashion-mnist`)")
    try:
        return datasets.load_dataset(FASHION_MNIST_HUB_ID)
    except Exception as err:  # noqa: BLE001 - we re-raise with the full story
        tried.append(f"the Hub copy {FASHION_MNIST_HUB_ID!r} ({type(err).__name__}: {err})")
    raise DataError("could not load the built-in Fashion-MNIST; tried:\n  - " + "\n  - ".join(tried))


def read_idx(path: Path) -> np.ndarray:
    """Read one (gzipped) IDX file, the original MNIST/Fashion-MNIST format."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    array = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(shape))} values, found {array.size}")
    return array.reshape(shape)


def _fashion_mnist_from_idx(folder: Path):
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
    splits = {}
    for split, (images_file, labels_file) in _FASHION_MNIST_FILES.items():
        images, labels = read_idx(folder / images_file), read_idx(folder / labels_file)
        splits[split] = datasets.Dataset.from_dict(
            {"image": [_png_bytes(img) for img in images], "label": labels.astype(np.int64).tolist()},
            features=features,
        )
    return datasets.DatasetDict(splits)


def _png_bytes(array: np.ndarray) -> dict:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _write_parquet_folder(dsd, folder: Path) -> None:
    """Write a DatasetDict in the Hub parquet layout, atomically (temp folder, then rename)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    for split, ds in dsd.items():
        ds.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process won the race: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _load_any(name_or_path: str, revision: str | None):
    import datasets

    try:
        loaded = datasets.load_dataset(name_or_path, revision=revision)
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"could not load dataset {name_or_path!r} with datasets.load_dataset "
            f"({type(err).__name__}: {err}). Pass a Hub dataset id, a folder in the Hub parquet layout, "
            "or an ImageFolder directory."
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
        raise DataError(f"dataset {name!r} has no split {test_split!r} (it has {sorted(dsd)})")
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


# --------------------------------------------------------------------------------------------------------
# Decoding to tensors
# --------------------------------------------------------------------------------------------------------


def _tensor_cache_path(ds, channels: int, image_size: int) -> Path:
    key = hashlib.sha256(f"{ds._fingerprint}-{channels}-{image_size}-v1".encode()).hexdigest()[:20]
    return cache_dir() / "tensors" / f"{key}.safetensors"


def _save_tensors(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(tmp))
    os.replace(tmp, path)


def _seed_builtin_tensors(data: ImageData) -> None:
    """The Fashion-MNIST IDX arrays already are the decoded images: cache them (after checking they match the
    dataset's labels and first image) so the first use skips decoding 70k PNGs."""
    if data.channels != 1 or data.image_size != 28:
        return
    for split, (images_file, labels_file) in _FASHION_MNIST_FILES.items():
        ds = data.dataset[split]
        path = _tensor_cache_path(ds, 1, 28)
        if path.exists() or not (FASHION_MNIST_DIR / images_file).exists():
            continue
        images = torch.from_numpy(read_idx(FASHION_MNIST_DIR / images_file).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(FASHION_MNIST_DIR / labels_file).astype(np.int64))
        same = len(ds) == len(labels) and torch.equal(torch.as_tensor(ds["label"], dtype=torch.int64), labels)
        if same and torch.equal(pil_to_tensor(ds[0]["image"], "L", 28), images[0]):
            _save_tensors(path, images, labels)


def _load_or_decode(ds, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    path = _tensor_cache_path(ds, channels, image_size)
    if path.exists():
        loaded = load_file(str(path))
        return loaded["images"], loaded["labels"]
    images, labels = decode_images(ds, channels, image_size)
    _save_tensors(path, images, labels)
    return images, labels


def decode_images(ds, channels: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an ``image``/``label`` dataset into uint8 [N, C, S, S] and int64 [N] tensors."""
    mode = "L" if channels == 1 else "RGB"
    n = len(ds)
    images = torch.empty((n, channels, image_size, image_size), dtype=torch.uint8)
    labels = torch.as_tensor(ds["label"], dtype=torch.int64)
    for i, example in enumerate(ds.select_columns(["image"])):
        images[i] = pil_to_tensor(example["image"], mode, image_size)
    return images, labels


def pil_to_tensor(image, mode: str, image_size: int) -> torch.Tensor:
    """One PIL image → uint8 [C, S, S], converting the mode explicitly (grey↔RGB, RGBA dropped alpha)."""
    from PIL import Image

    if image.mode == "RGBA" and mode == "RGB":
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        image = background
    image = image.convert(mode)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _channel_stats(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    images, _ = data.tensors("train")
    sample = images[:: max(1, len(images) // 200_000)].float() / 255.0
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3))
    return tuple(mean.tolist()), tuple(std.clamp_min(1e-3).tolist())


# --------------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------------


def per_class_subset(labels: torch.Tensor, per_class: int, seed: int, num_classes: int | None = None) -> torch.Tensor:
    """Indices of ``per_class`` random examples of every class (the random-real-subset baseline)."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    chosen = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {c} has only {len(idx)} examples, fewer than the {per_class} requested")
        chosen.append(idx[torch.randperm(len(idx), generator=generator)[:per_class]])
    return torch.cat(chosen)
