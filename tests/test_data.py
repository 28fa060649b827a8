"""Data loading: the built-in Fashion-MNIST (offline, real images), column detection, conversions, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_scdd.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    denormalize,
    load_image_dataset,
    normalize,
    per_class_subset,
    pil_to_tensor,
)

CIFAR10_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


# ---------------------------------------------------------------------------------------------------------
# The built-in dataset
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin():
    return load_image_dataset()


def test_builtin_loads_offline_with_real_metadata(builtin, fake_hub):
    # conftest blocks every non-loopback host; nothing may have been asked of the (fake) Hub either
    assert not [entry for entry in fake_hub.log if "fashion" in entry[1]]
    assert builtin.name == "fashion_mnist"
    assert builtin.dataset["train"].num_rows == 60000 and builtin.dataset["test"].num_rows == 10000
    assert builtin.channels == 1 and builtin.image_size == 28
    assert builtin.num_classes == 10
    assert builtin.class_names == FASHION_MNIST_CLASSES
    assert builtin.class_names[0] == "T-shirt/top" and builtin.class_names[9] == "Ankle boot"
    # the statistics are those of Fashion-MNIST's training split
    assert builtin.mean[0] == pytest.approx(0.286, abs=0.002)
    assert builtin.std[0] == pytest.approx(0.353, abs=0.002)


def test_builtin_tensors_are_real_images(builtin):
    images, labels = builtin.tensors("train")
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (60000,) and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((10,), 6000))  # balanced, as published
    test_images, test_labels = builtin.tensors("test")
    assert test_images.shape == (10000, 1, 28, 28) and torch.equal(
        test_labels.bincount(), torch.full((10,), 1000)
    )

    x = images.flatten(1).float() / 255
    assert x.std() > 0.2  # not constant
    # neighbouring pixels are strongly correlated in real images (≈0 for noise)
    sample = images[:2000].float()
    left, right = sample[..., :-1].flatten(), sample[..., 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1] > 0.7

    def class_means(rows: slice) -> torch.Tensor:
        sums = torch.zeros(10, 784).index_add_(0, labels[rows], x[rows])
        return sums / labels[rows].bincount(minlength=10)[:, None]

    # class-mean images differ far more than the two halves (even/odd rows) of the same class do
    means = class_means(slice(None))
    between = torch.cdist(means, means) + torch.eye(10) * 1e9
    within = (class_means(slice(0, None, 2)) - class_means(slice(1, None, 2))).norm(dim=1).max()
    assert between.min() > 5 * within
    # trousers (1) are tall and narrow, bags (8) wide: the class means have the right silhouettes
    trouser, bag = means[1].view(28, 28), means[8].view(28, 28)
    assert trouser[:, :6].mean() < 0.1 < trouser[:, 10:18].mean()
    assert bag[14, 2:26].mean() > trouser[14, 2:26].mean()


def test_normalize_round_trip(builtin):
    images, _ = builtin.tensors("test")
    x = builtin.normalize(images[:256])
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.2 and 0.8 < x.std().item() < 1.2
    back = denormalize(x, builtin.mean, builtin.std)
    assert torch.allclose(back * 255, images[:256].float(), atol=1e-3)
    assert torch.equal(normalize(images[:4], builtin.mean, builtin.std), x[:4])


def test_per_class_subset_is_seeded_and_balanced(builtin):
    _, labels = builtin.tensors("train")
    a = per_class_subset(labels, 5, seed=1)
    assert torch.equal(a, per_class_subset(labels, 5, seed=1))
    assert not torch.equal(a, per_class_subset(labels, 5, seed=2))
    assert torch.equal(labels[a].bincount(), torch.full((10,), 5))
    with pytest.raises(DataError, match="fewer than the 7000 requested"):
        per_class_subset(labels, 7000, seed=0)


# ---------------------------------------------------------------------------------------------------------
# Any load_dataset source: a parquet folder in the Hub layout
# ---------------------------------------------------------------------------------------------------------

NAMES = ["apple", "bear", "cat"]


def rgb_images(n: int, seed: int, mode: str = "RGB", size: int = 8) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": None}[mode]
    shape = (size, size) if channels is None else (size, size, channels)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(n)]


def write_folder(root: Path, splits: dict[str, dict], features) -> str:
    import datasets

    (root / "data").mkdir(parents=True)
    for split, columns in splits.items():
        ds = datasets.Dataset.from_dict(columns, features=features)
        ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return str(root)


def same_splits(root: Path, features: dict, columns: dict, splits=("train", "test")) -> str:
    """A folder whose splits all hold ``columns`` (typed by the ``features`` mapping)."""
    import datasets

    return write_folder(root, {split: columns for split in splits}, datasets.Features(features))


def cifar100_like(tmp_path, mode: str = "RGB") -> tuple[str, dict]:
    """Columns ``img`` (Image) + ``fine_label`` (ClassLabel) + ``note`` (str), splits train/test."""
    import datasets

    features = datasets.Features(
        {
            "img": datasets.Image(),
            "fine_label": datasets.ClassLabel(names=NAMES),
            "note": datasets.Value("string"),
        }
    )
    def split(n: int, seed: int, prefix: str) -> dict:
        return {"img": rgb_images(n, seed, mode), "fine_label": [i % 3 for i in range(n)],
                "note": [f"{prefix}{i}" for i in range(n)]}

    splits = {"train": split(12, 0, "n"), "test": split(6, 1, "t")}
    return write_folder(tmp_path / f"c100-{mode}", splits, features), splits


def test_column_autodetection(tmp_path):
    folder, splits = cifar100_like(tmp_path)
    data = load_image_dataset(folder)
    assert data.name == folder
    assert set(data.dataset["train"].column_names) == {"image", "label"}
    assert data.class_names == NAMES and data.num_classes == 3
    assert data.channels == 3 and data.image_size == 8
    images, labels = data.tensors("train")
    expected = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in splits["train"]["img"]])
    assert torch.equal(images, expected)
    assert labels.tolist() == splits["train"]["fine_label"]
    # statistics computed from this training split, per channel
    assert data.mean == pytest.approx(tuple((expected.float() / 255).mean(dim=(0, 2, 3)).tolist()), abs=1e-5)
    assert len(data.std) == 3


def test_explicit_column_override(tmp_path):
    import datasets

    features = {"photo": datasets.Image(), "sketch": datasets.Image(), "kind": datasets.ClassLabel(names=["x", "y"]),
                "label": datasets.ClassLabel(names=["p", "q", "r"])}
    photos, sketches = rgb_images(6, 2), rgb_images(6, 3)
    columns = {"photo": photos, "sketch": sketches, "kind": [0, 1] * 3, "label": [0, 1, 2] * 2}
    folder = same_splits(tmp_path / "two", features, columns)

    with pytest.raises(DataError, match=r"several image columns \['photo', 'sketch'\].*--image_column"):
        load_image_dataset(folder)
    default = load_image_dataset(folder, image_column="photo", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert default.class_names == ["p", "q", "r"]  # the column named "label" wins over "kind"

    data = load_image_dataset(
        folder, image_column="sketch", label_column="kind", mean=(0.5,) * 3, std=(0.5,) * 3
    )
    assert data.class_names == ["x", "y"]
    images, labels = data.tensors("test")
    assert torch.equal(images[0], torch.from_numpy(np.array(sketches[0])).permute(2, 0, 1))
    assert labels.tolist() == [0, 1] * 3
    assert data.mean == (0.5, 0.5, 0.5)  # explicit statistics are kept


def test_integer_labels_become_class_label(tmp_path):
    import datasets

    features = {"image": datasets.Image(), "y": datasets.Value("int64")}
    columns = {"image": rgb_images(4, 4), "y": [0, 1, 2, 1]}
    data = load_image_dataset(
        same_splits(tmp_path / "ints", features, columns, ("train", "validation")), label_column="y"
    )
    assert data.class_names == ["0", "1", "2"]
    assert data.dataset["test"].num_rows == 4  # "validation" serves as the test split


def test_grey_to_rgb_and_rgba_to_rgb(tmp_path):
    grey = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    rgb = pil_to_tensor(grey, "RGB", 8)
    assert rgb.shape == (3, 8, 8) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[1], rgb[2])
    assert torch.equal(rgb[0], torch.arange(64, dtype=torch.uint8).view(8, 8))

    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: colour kept
    rgba[0, 1] = (10, 20, 30, 0)  # transparent: white background
    out = pil_to_tensor(Image.fromarray(rgba, mode="RGBA"), "RGB", 2)
    assert out[:, 0, 0].tolist() == [10, 20, 30]
    assert out[:, 0, 1].tolist() == [255, 255, 255]

    # through the loader: a grey dataset forced to 3 channels, an RGBA dataset auto-converted to RGB
    grey_folder, splits = cifar100_like(tmp_path, mode="L")
    data = load_image_dataset(grey_folder, channels=3)
    images, _ = data.tensors("train")
    assert images.shape == (12, 3, 8, 8) and torch.equal(images[:, 0], images[:, 2])
    assert torch.equal(images[0, 1], torch.from_numpy(np.array(splits["train"]["img"][0])))
    assert load_image_dataset(grey_folder).channels == 1

    rgba_folder, _ = cifar100_like(tmp_path, mode="RGBA")
    data = load_image_dataset(rgba_folder)
    assert data.channels == 3 and data.tensors("test")[0].shape == (6, 3, 8, 8)


def test_resize_to_requested_size(tmp_path):
    folder, _ = cifar100_like(tmp_path)
    data = load_image_dataset(folder, image_size=4)
    assert data.tensors("test")[0].shape == (6, 3, 4, 4)


# ---------------------------------------------------------------------------------------------------------
# Clear errors
# ---------------------------------------------------------------------------------------------------------


def test_dataset_without_labels(tmp_path):
    import datasets

    folder = same_splits(tmp_path / "nolabel", {"image": datasets.Image()}, {"image": rgb_images(3, 5)})
    with pytest.raises(DataError, match="has no label column.*--label_column"):
        load_image_dataset(folder)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(test_split="holdout"), "no split 'holdout'"),
        (dict(train_split="training"), r"no split 'training'.*--train_split"),
        (dict(image_column="note"), "column 'note' .* not an image"),
        (dict(label_column="note"), "class_encode_column"),  # string labels
    ],
    ids=["missing-test-split", "missing-train-split", "non-image-column", "string-labels"],
)
def test_unusable_arguments_are_refused(tmp_path, kwargs, match):
    folder, _ = cifar100_like(tmp_path)
    with pytest.raises(DataError, match=match):
        load_image_dataset(folder, **kwargs)


def test_dataset_without_test_split(tmp_path):
    import datasets

    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    only_train = same_splits(tmp_path / "train-only", features, {"image": rgb_images(2, 6), "label": [0, 1]}, ("train",))
    with pytest.raises(DataError, match="has no test split.*--test_split"):
        load_image_dataset(only_train)


def test_non_contiguous_integer_labels(tmp_path):
    import datasets

    features = {"image": datasets.Image(), "label": datasets.Value("int64")}
    folder = same_splits(tmp_path / "gaps", features, {"image": rgb_images(3, 7), "label": [0, 2, 5]})
    with pytest.raises(DataError, match=r"not contiguous class indices 0..C-1 \(found \[0, 2, 5\]"):
        load_image_dataset(folder)


def test_unloadable_source(tmp_path):
    with pytest.raises(DataError, match="could not load dataset"):
        load_image_dataset(str(tmp_path / "does-not-exist"))


# ---------------------------------------------------------------------------------------------------------
# Optional: CIFAR-10 from the shared data folder
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.cifar
@pytest.mark.skipif(not CIFAR10_DIR.is_dir(), reason=f"{CIFAR10_DIR} not present")
def test_cifar10_metadata():
    # explicit statistics: computing them would decode all 50k images
    data = load_image_dataset(str(CIFAR10_DIR), mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261))
    assert data.dataset["train"].num_rows == 50000 and data.dataset["test"].num_rows == 10000
    assert data.channels == 3 and data.image_size == 32 and data.num_classes == 10
    assert "airplane" in data.class_names and "truck" in data.class_names
    rows = data.dataset["test"].select(range(4))
    for row in rows:
        assert row["image"].size == (32, 32)
        assert pil_to_tensor(row["image"], "RGB", 32).float().std() > 5  # not blank
