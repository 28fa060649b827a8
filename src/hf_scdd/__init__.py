"""hf_scdd: SC-DD self-supervised dataset distillation for the Hugging Face ecosystem.

The package is split by role: ``data`` (datasets), ``models`` (backbones, MoCo, loading), ``losses`` (the
recovery objective, KD), ``augment``, ``formats`` (distilled sets, soft labels), ``hub`` (cards, the upload
path), ``synthesis`` (recovery), ``training`` (accelerator and precision, the loop, evaluation,
post-training, reports), with thin ``stages`` (squeeze, probe, recover, relabel, evaluate, inspect-bn) on top,
chained by ``pipeline`` and run by ``cli``. The public names below are imported lazily, so importing the
package (and ``hf-scdd --help``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ImageData": "hf_scdd.data",
    "load_image_dataset": "hf_scdd.data",
    "ResNet": "hf_scdd.models",
    "build_backbone": "hf_scdd.models",
    "load_backbone": "hf_scdd.models",
    "import_checkpoint": "hf_scdd.models",
    "load_distilled": "hf_scdd.hub",
    "HfScddError": "hf_scdd.errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
