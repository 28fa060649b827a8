"""Loading a backbone (recovery model, teacher, student) from a folder, a stage's output or the Hub.

:func:`load_backbone` dispatches on ``config.json``: an hf_scdd :class:`~hf_scdd.models.resnet.ResNet`
(``arch``) or a transformers BN image classifier (``model_type``, wrapped by
:class:`~hf_scdd.models.adapters.TransformersClassifier`), never with remote code. Stage output folders are
accepted in place of the model folder inside them (:func:`resolve_model_folder`), and :func:`teacher_fn` turns
any of them into the ``pixels → logits`` function relabel and evaluate call.

A loaded model is refused when any weight or buffer holds NaN/inf (one NaN in a BN ``running_var`` turns every
recovered image black), before a stage does any work with it; :func:`model_fingerprint` identifies a model's
exact weights (soft labels record their teacher's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.loading import GREY_MODES, first_example
from ..data.tensors import normalize
from ..errors import BackboneError
from ..utils import first_line, hub_context

logger = logging.getLogger(__name__)

MODEL_DIR = "model"
"""Sub-folder of a probe ``output_dir`` holding the Hub-ready backbone + linear probe."""
BACKBONE_DIR = "backbone"
"""Sub-folder of a squeeze ``output_dir`` holding the Hub-ready backbone."""

TeacherFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_model_folder(name: str) -> str:
    """A model folder or repo id as is; a squeeze/probe ``output_dir`` -> its ``backbone``/``model``."""
    path = Path(name)
    for sub in (MODEL_DIR, BACKBONE_DIR):
        if (path / sub / "config.json").exists() and not (path / "model.safetensors").exists():
            return str(path / sub)
    return name


def load_backbone(name_or_path: str, *, revision: str | None = None, map_location: str = "cpu") -> nn.Module:
    """Load a recovery model / teacher from a Hub repo id or a local folder.

    Accepts an hf_scdd model (``config.json`` with ``arch``) or a transformers BN image classifier (wrapped
    by :class:`hf_scdd.models.adapters.TransformersClassifier`), or a squeeze/probe output folder (its model
    folder is used). Returned in eval mode.
    """
    name_or_path = resolve_model_folder(name_or_path)
    config = _read_config(name_or_path, revision)
    if "arch" in config:
        from .resnet import ResNet

        model = ResNet.from_pretrained(name_or_path, revision=revision, map_location=map_location)
    elif "model_type" in config:
        from .adapters import TransformersClassifier

        model = TransformersClassifier.from_pretrained(name_or_path, revision=revision)
    else:
        raise BackboneError(
            f"{name_or_path!r} is neither an hf_scdd backbone (config with 'arch') nor a transformers model "
            "(config with 'model_type'): pass a saved model folder, a squeeze/probe output folder or a Hub model id"
        )
    check_finite_state(model, name_or_path)
    return model.eval()


def check_finite_state(model: nn.Module, name: str) -> None:
    """Refuse a model whose weights or buffers hold NaN/inf: recovery would match NaN statistics (black
    images, a "nan" card) and a teacher would give NaN labels. Raises :class:`BackboneError`."""
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise BackboneError(
                    f"backbone {name!r} holds {bad} NaN/inf value(s) in {key} (of {tensor.numel()}): it cannot drive "
                    "recovery or teach; retrain or re-export it (a divergent training run leaves such values)"
                )


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's weights and buffers (names, dtypes, shapes, values): the exact model, whatever
    folder or repo it came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_config(name_or_path: str, revision: str | None) -> dict:
    if os.path.isdir(name_or_path):
        path = os.path.join(name_or_path, "config.json")
        if not os.path.exists(path):
            raise BackboneError(f"{name_or_path} has no config.json: is it a saved model folder?")
        with open(path) as f:
            return json.load(f)
    from huggingface_hub import hf_hub_download

    try:
        with open(hf_hub_download(name_or_path, "config.json", revision=revision)) as f:
            return json.load(f)
    except Exception as err:  # noqa: BLE001
        raise BackboneError(
            f"could not fetch config.json of backbone {name_or_path!r} (revision {revision!r}) {hub_context()}: "
            f"{type(err).__name__}: {first_line(err)}; pass a local folder, or check the repo id and revision"
        ) from err


def check_synthesis_input(model: nn.Module, name: str, data, *, requested_size: int | None) -> None:
    """Decide the input surprises of recovery explicitly: refuse to synthesise at an input size the model's
    preprocessor config never stated (a transformers model without one defaults to 224 px) when the data
    are another size, and log a channel conversion (RGB images for a grey dataset)."""
    first = first_example(data.dataset["train"])["image"]  # map-style or streamed
    native_size = int(max(first.size))
    size = int(requested_size or getattr(model, "image_size", 0) or native_size)
    if "image_size" in getattr(model, "guessed", ()) and requested_size is None and size != native_size:
        raise BackboneError(
            f"backbone {name!r} has no preprocessor_config.json, so its input size ({size} px) is a guess, and "
            f"dataset {data.name!r} has {native_size}-px images: pass recover's --image_size {native_size} to "
            "synthesise at the data's size (or add a preprocessor_config.json to the model)"
        )
    native_grey = first.mode in GREY_MODES
    if native_grey and data.channels == 3:
        logger.info("backbone %s takes RGB input: synthesising RGB images for the grey dataset %s", name, data.name)


def has_matching_classifier(name_or_path: str, num_classes: int) -> bool:
    """Whether the backbone already predicts ``num_classes`` classes (then it needs no probe)."""
    return getattr(load_backbone(name_or_path), "num_classes", 0) == num_classes


def match_channels(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """Pixels [N, C, H, W] in [0, 1] converted to ``channels``: grey repeated to RGB, RGB to PIL's luma."""
    if pixels.shape[1] == channels:
        return pixels
    if pixels.shape[1] == 1:
        return pixels.expand(-1, channels, -1, -1)
    if channels == 1 and pixels.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        return (pixels * weights).sum(1, keepdim=True)
    raise BackboneError(f"cannot convert {pixels.shape[1]}-channel images to the model's {channels} channels")


def teacher_fn(teacher: nn.Module, mean, std, *, train_mode: bool = False) -> TeacherFn:
    """Wrap a teacher as ``pixels in [0, 1] → logits``, normalising with the teacher's own statistics; grey
    pixels for an RGB teacher (or the reverse) are converted, and that is logged once."""
    mean = getattr(teacher, "mean", None) or mean
    std = getattr(teacher, "std", None) or std
    channels = int(getattr(teacher, "in_channels", 0) or len(mean))
    teacher.train(train_mode)
    logged = []

    @torch.no_grad()
    def run(pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[1] != channels and not logged:
            logger.info("converting %d-channel images to the teacher's %d channels", pixels.shape[1], channels)
            logged.append(True)
        return teacher(normalize(match_channels(pixels, channels), mean, std)).float()

    return run
