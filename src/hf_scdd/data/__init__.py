"""Data for every stage: the built-in Fashion-MNIST (``builtin``), any ``load_dataset`` source (``loading``),
the one image decoder (``decoding``), the sources stages read batches from, in memory or streamed
(``sources``), and decoded in-memory tensors with normalisation and subsets (``tensors``)."""

from ..errors import DataError
from .builtin import BUILTIN, FASHION_MNIST_CLASSES, read_idx
from .loading import ImageData, load_image_dataset
from .sources import DATA_SOURCES, ImageSource, choose_data_source, in_memory_max_bytes
from .tensors import cache_dir, decode_images, denormalize, normalize, per_class_subset, pil_to_tensor

__all__ = [
    "BUILTIN", "DATA_SOURCES", "FASHION_MNIST_CLASSES", "DataError", "ImageData", "ImageSource", "cache_dir",
    "choose_data_source", "decode_images", "denormalize", "in_memory_max_bytes", "load_image_dataset", "normalize",
    "per_class_subset", "pil_to_tensor", "read_idx",
]
