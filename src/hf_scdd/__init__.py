"""hf_scdd: SC-DD self-supervised dataset distillation for the Hugging Face ecosystem.

The package reads like the pipeline: ``data`` → ``squeeze`` (SSL pre-training, linear probe) → ``recover``
(BN-matching synthesis) → ``relabel`` (soft labels as safetensors) → ``evaluate`` (post-training), with
``core`` holding what the stages share (BN statistics, augmentation, the training loop) and ``hub`` the
Hub round trip of distilled sets.
"""

__version__ = "0.1.0"

from .data import ImageData, load_image_dataset  # noqa: E402
from .models import ResNet, build_backbone, load_backbone  # noqa: E402

__all__ = ["ImageData", "ResNet", "__version__", "build_backbone", "load_backbone", "load_image_dataset"]
