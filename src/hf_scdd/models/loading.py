"""Loading a backbone (recovery model, teacher, student) from a folder, a stage's output or the Hub.

:func:`load_backbone` dispatches on ``config.json``: an hf_scdd :class:`~hf_scdd.models.resnet.ResNet`
(``arch``) or a transformers BN image classifier (``model_type``, wrapped by
:class:`~hf_scdd.models.adapters.TransformersClassifier`), never with remote code. Stage output folders are
accepted in place of the model folder inside them (:func:`resolve_model_folder`), and :func:`teacher_fn` turns
any of them into the ``pixels → logits`` function relabel and evaluate call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.tensors import normalize
from ..errors import BackboneError

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
            "(config with 'model_type')"
        )
    return model.eval()


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
            f"could not fetch config.json of backbone {name_or_path!r} ({type(err).__name__}: {err}); "
            "pass a local folder or a Hub model id"
        ) from err


def has_matching_classifier(name_or_path: str, num_classes: int) -> bool:
    """Whether the backbone already predicts ``num_classes`` classes (then it needs no probe)."""
    return getattr(load_backbone(name_or_path), "num_classes", 0) == num_classes


def teacher_fn(teacher: nn.Module, mean, std, *, train_mode: bool = False) -> TeacherFn:
    """Wrap a teacher as ``pixels in [0, 1] → logits``, normalising with the teacher's own statistics."""
    mean = getattr(teacher, "mean", None) or mean
    std = getattr(teacher, "std", None) or std
    teacher.train(train_mode)

    @torch.no_grad()
    def run(pixels: torch.Tensor) -> torch.Tensor:
        return teacher(normalize(pixels, mean, std)).float()

    return run
