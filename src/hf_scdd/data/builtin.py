"""The built-in default dataset: Fashion-MNIST from the Debian package's IDX files, converted once to parquet.

``apt-get install dataset-fashion-mnist`` puts the original release's four gzipped IDX files under
``/usr/share/datasets/fashion-mnist`` (``$HF_SCDD_FASHION_MNIST_DIR``). They are converted once into a parquet
folder in the Hub layout (``image`` PNG bytes, ``label`` ClassLabel with the real names) in the hf_scdd cache,
so every stage reads the built-in dataset through ``datasets.load_dataset`` like any other; without the
package the Hub copy is used. The IDX arrays already are the decoded images, so they also seed the tensor
cache (after a check against the parquet copy) and the first use skips decoding 70k PNGs.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..utils import atomic_folder, first_line, hub_context
from .decoding import pil_to_tensor
from .tensors import cache_dir, save_tensors, tensor_cache_path

BUILTIN = "fashion_mnist"
"""Name of the built-in default dataset (also accepted: ``fashion-mnist``, ``builtin``)."""

FASHION_MNIST_DIR = Path(os.environ.get("HF_SCDD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_LICENSE = "mit"
FASHION_MNIST_CITATION = """@article{xiao2017fashion,
  title   = {Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  author  = {Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
  journal = {arXiv preprint arXiv:1708.07747},
  year    = {2017}
}"""
"""Licence and citation of the source data, carried into the cards of sets distilled from it."""

_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def is_builtin(name: str | None) -> bool:
    """Whether ``name`` means the built-in dataset (``None`` does too)."""
    return name is None or name.lower().replace("-", "_") in (BUILTIN, "builtin")


def load_builtin(streaming: bool = False):
    """Fashion-MNIST from the Debian package, converted once to a parquet folder; else from the Hub."""
    import datasets

    local = cache_dir() / "fashion_mnist_parquet"
    if (local / "data").is_dir():
        return datasets.load_dataset(str(local), streaming=streaming)
    tried = []
    if all((FASHION_MNIST_DIR / f).exists() for pair in _FASHION_MNIST_FILES.values() for f in pair):
        write_parquet_folder(fashion_mnist_from_idx(FASHION_MNIST_DIR), local)
        return datasets.load_dataset(str(local), streaming=streaming)
    tried.append(f"IDX files in {FASHION_MNIST_DIR} (install them with `apt-get install dataset-fashion-mnist`)")
    try:
        return datasets.load_dataset(FASHION_MNIST_HUB_ID, streaming=streaming)
    except Exception as err:  # noqa: BLE001 - we re-raise with the full story
        tried.append(f"the Hub copy {FASHION_MNIST_HUB_ID!r} {hub_context()} ({type(err).__name__}: {first_line(err)})")
    raise DataError("could not load the built-in Fashion-MNIST; tried " + "; then ".join(tried))


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


def fashion_mnist_from_idx(folder: Path):
    """The IDX files as a ``DatasetDict`` of PNG-encoded images and ClassLabel labels."""
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
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def write_parquet_folder(dsd, folder: Path) -> None:
    """Write a DatasetDict in the Hub parquet layout, atomically (a concurrent writer's copy is kept)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(folder, keep_existing=True) as tmp:
        (tmp / "data").mkdir()
        for split, ds in dsd.items():
            ds.to_parquet(str(tmp / "data" / f"{split}-00000-of-00001.parquet"))


def seed_builtin_tensors(dataset, channels: int, image_size: int) -> None:
    """Cache the IDX arrays as the decoded tensors of ``dataset``'s splits, after checking that they match
    the dataset's labels and first image (only for the native 1×28×28 shape)."""
    if channels != 1 or image_size != 28:
        return
    for split, (images_file, labels_file) in _FASHION_MNIST_FILES.items():
        ds = dataset[split]
        path = tensor_cache_path(ds, 1, 28)
        if path.exists() or not (FASHION_MNIST_DIR / images_file).exists():
            continue
        images = torch.from_numpy(read_idx(FASHION_MNIST_DIR / images_file).copy()).unsqueeze(1)
        labels = torch.from_numpy(read_idx(FASHION_MNIST_DIR / labels_file).astype(np.int64))
        same = len(ds) == len(labels) and torch.equal(torch.as_tensor(ds["label"], dtype=torch.int64), labels)
        if same and torch.equal(pil_to_tensor(ds[0]["image"], "L", 28), images[0]):
            save_tensors(path, images, labels)
