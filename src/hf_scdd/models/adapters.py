"""Use a transformers BatchNorm image classifier as a recovery model or teacher.

SC-DD only needs a network with BatchNorm layers whose running statistics describe the training data, and
the Hub already holds many: transformers' ResNet, RegNet, MobileNetV1/V2 and EfficientNet classifiers.
:class:`TransformersClassifier` wraps an ``AutoModelForImageClassification`` so that the stages treat it like
an hf_scdd :class:`~hf_scdd.models.ResNet`: ``forward(x)`` returns a logits tensor, and ``mean``, ``std``,
``image_size``, ``in_channels``, ``num_classes`` and ``class_names`` say how to feed it and read it.

Example::

    from hf_scdd.models import load_backbone

    teacher = load_backbone("microsoft/resnet-18")        # dispatches here: config.json has "model_type"
    logits = teacher(normalize(images_uint8, teacher.mean, teacher.std))

Remote code is never executed (``trust_remote_code=False``); models without BatchNorm (ViT, ConvNeXt, BiT,
...) are refused because BN matching has nothing to match.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch import nn

from ..errors import BackboneError
from ..utils import first_line, hub_context

logger = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PREPROCESSOR_FILE = "preprocessor_config.json"
DEFAULT_IMAGE_SIZE = 224
GUESSABLE = {"image_size": ("crop_size", "size"), "mean": ("image_mean",), "std": ("image_std",)}
"""What a model's preprocessor config supplies (value → its keys); without them these are guesses."""


def model_logits(output: Any) -> torch.Tensor:
    """Plain tensors pass through; transformers ``ModelOutput``s give their ``logits``."""
    return output.logits if hasattr(output, "logits") else output


class TransformersClassifier(nn.Module):
    """A transformers BN image classifier behind the :class:`~hf_scdd.models.ResNet` interface.

    Args:
        model: an ``*ForImageClassification`` model containing ``nn.BatchNorm2d`` layers.
        mean, std: input normalisation in [0, 1] pixel units (default: ImageNet's).
        image_size: the input side length (default: 224).
        source: the repo id or folder it came from, kept in :attr:`training_info`.
        guessed: which of ``image_size``/``mean``/``std`` are defaults rather than the model's own (no
            preprocessor config): recovery refuses to synthesise at a guessed size that the data do not have.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        source: str | None = None,
        guessed: tuple[str, ...] = (),
    ):
        super().__init__()
        bn_layers = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        config = model.config
        if bn_layers == 0:
            raise BackboneError(
                f"{source or type(model).__name__} ({config.model_type}) has no BatchNorm2d layer, "
                "so SC-DD has no statistics to match. Use a BN model (transformers ResNet, RegNet, "
                "MobileNetV1/V2, EfficientNet) or an hf_scdd ResNet."
            )
        self.model = model
        self.in_channels = int(getattr(config, "num_channels", 3))
        self.mean = _per_channel(mean if mean is not None else IMAGENET_MEAN, self.in_channels, "image_mean")
        self.std = _per_channel(std if std is not None else IMAGENET_STD, self.in_channels, "image_std")
        self.image_size = int(image_size)
        self.guessed = tuple(guessed)
        self.num_classes = int(config.num_labels)
        id2label = getattr(config, "id2label", None) or {}
        self.class_names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(self.num_classes)]
        self.arch = config.model_type
        self.training_info: dict[str, Any] = {
            "method": "transformers",
            "base_model": source,
            "model_type": config.model_type,
        }

    # ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str, revision: str | None = None, **kwargs: Any
    ) -> "TransformersClassifier":
        """Load from a Hub repo id or a folder written by ``save_pretrained``; returned in eval mode.

        ``mean``/``std``/``image_size`` come from ``preprocessor_config.json`` (``image_mean``, ``image_std``,
        ``crop_size``/``size``) when the repo has one. Extra keyword arguments go to
        ``AutoModelForImageClassification.from_pretrained`` (``trust_remote_code`` is always False).
        """
        from transformers import AutoModelForImageClassification

        kwargs.pop("trust_remote_code", None)
        try:
            model, info = AutoModelForImageClassification.from_pretrained(
                name_or_path, revision=revision, trust_remote_code=False, output_loading_info=True, **kwargs
            )
        except (OSError, ValueError, KeyError) as err:
            where = "" if os.path.isdir(name_or_path) else f" {hub_context()}"
            raise BackboneError(
                f"could not load {name_or_path!r} as a transformers image classifier{where} "
                f"({type(err).__name__}: {first_line(err)}); it needs a config.json whose model_type has an "
                "AutoModelForImageClassification class, and no custom code"
            ) from err
        _check_loading_info(name_or_path, info)
        processor = read_preprocessor_config(name_or_path, revision)
        guessed = tuple(k for k, keys in GUESSABLE.items() if not any(processor.get(key) for key in keys))
        if guessed:
            logger.warning(
                "%s has no %s values for %s: assuming %s; pass a model with a preprocessor_config.json (or "
                "recover's --image_size) if that is not its input", name_or_path, PREPROCESSOR_FILE,
                "/".join(guessed), f"{DEFAULT_IMAGE_SIZE}-px input, ImageNet mean/std",
            )
        wrapper = cls(
            model,
            mean=processor.get("image_mean"),
            std=processor.get("image_std"),
            image_size=_image_size(processor),
            source=str(name_or_path) + (f"@{revision}" if revision else ""),
            guessed=guessed,
        )
        return wrapper.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images [N, C, H, W] → logits [N, num_classes] (a tensor, not a ModelOutput)."""
        return self.model(pixel_values=x).logits

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features [N, D] from the base model's ``pooler_output``."""
        output = self.model.base_model(pixel_values=x)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            raise BackboneError(f"{self.arch} base model has no pooler_output to use as features")
        return torch.flatten(pooled, 1)

    def bn_layer_count(self) -> int:
        return sum(isinstance(m, nn.BatchNorm2d) for m in self.modules())

    @property
    def config(self) -> dict[str, Any]:
        """What the stages record about the model (mirrors :attr:`hf_scdd.models.ResNet.config`)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": list(self.class_names),
            "training": dict(self.training_info),
        }


# --------------------------------------------------------------------------------------------------------
# Preprocessor config
# --------------------------------------------------------------------------------------------------------


def read_preprocessor_config(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """The repo's ``preprocessor_config.json`` as a dict, or ``{}`` when it has none.

    Read as JSON rather than through ``AutoImageProcessor``: only the numbers are needed, and some processor
    classes pull in optional dependencies (torchvision) the stages do not otherwise need.
    """
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, PREPROCESSOR_FILE)
        if not os.path.exists(path):
            return {}
    else:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        try:
            path = hf_hub_download(name_or_path, PREPROCESSOR_FILE, revision=revision)
        except EntryNotFoundError:
            return {}
        except Exception as err:  # noqa: BLE001 - offline, missing repo, network
            raise BackboneError(
                f"could not fetch {PREPROCESSOR_FILE} of {name_or_path!r} {hub_context()}: {type(err).__name__}: "
                f"{first_line(err)}; check the repo id and revision, or pass a local folder"
            ) from err
    with open(path) as f:
        values = json.load(f)
    if not isinstance(values, dict):
        raise BackboneError(f"{PREPROCESSOR_FILE} of {name_or_path!r} is not a JSON object")
    return values


def _check_loading_info(name_or_path: str, info: dict[str, Any]) -> None:
    """Refuse a model whose weights were partly initialised at random: its logits or BN statistics would be
    meaningless (e.g. a bare ``ResNetModel`` checkpoint loaded as a classifier has a random head)."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(
        str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or []
    )
    if missing or mismatched:
        listed = ", ".join((missing + mismatched)[:10]) + (
            ", ..." if len(missing) + len(mismatched) > 10 else ""
        )
        raise BackboneError(
            f"{name_or_path!r} does not hold every weight of its image classifier ({len(missing)} missing, "
            f"{len(mismatched)} of the wrong shape: {listed}); they would be random. Use a checkpoint saved "
            "from an *ForImageClassification model with its classification head."
        )


def _image_size(processor: dict[str, Any]) -> int:
    """The model's input side length from ``crop_size`` or ``size`` (int or ``{height|shortest_edge}``)."""
    for key in ("crop_size", "size"):
        value = processor.get(key)
        if isinstance(value, int):
            return value
        if isinstance(value, dict):
            for field in ("height", "shortest_edge", "width"):
                if isinstance(value.get(field), int):
                    return value[field]
    return DEFAULT_IMAGE_SIZE


def _per_channel(values, channels: int, name: str) -> list[float]:
    values = [float(values)] * channels if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(values) == 1 and channels > 1:
        values = values * channels
    if len(values) != channels:
        raise BackboneError(f"{name} has {len(values)} values but the model takes {channels} channel(s)")
    return values
