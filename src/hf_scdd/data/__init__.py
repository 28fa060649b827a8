"""Data for every stage: the built-in Fashion-MNIST (``builtin``), any ``load_dataset`` source (``loading``),
and decoded in-memory tensors with normalisation and subsets (``tensors``)."""

from ..errors import DataError
from .builtin import BUILTIN, FASHION_MNIST_CLASSES, read_idx
from .loading import ImageData, load_image_dataset
from .tensors import cache_dir, decode_images, denormalize, normalize, per_class_subset, pil_to_tensor

__all__ = [
    "BUILTIN", "FASHION_MNIST_CLASSES", "DataError", "ImageData", "cache_dir", "decode_images", "denormalize",
    "load_image_dataset", "normalize", "per_class_subset", "pil_to_tensor", "read_idx",
]
