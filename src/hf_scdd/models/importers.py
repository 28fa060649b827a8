"""Import foreign checkpoints (torchvision, MoCo v2/v3, DINO, SwAV) into :class:`~hf_scdd.models.ResNet`.

SC-DD's premise is that a *self-supervised* backbone's BN statistics are a better recovery signal than a
supervised one's, and most public SSL ResNets were trained with these codebases. Their checkpoints hold
torchvision-named tensors behind codebase-specific prefixes (``module.encoder_q.``, ``module.base_encoder.``,
``backbone.``, ...) next to projection heads, momentum encoders and queues that are not part of the backbone.
The importer picks the backbone out, checks it *strictly* against the requested architecture (BN matching
with a half-loaded backbone silently produces garbage, so every missing, unexpected or mis-shaped tensor is an
error naming the keys) and returns a ready :class:`ResNet` in eval mode.

Example::

    from hf_scdd.models.importers import import_checkpoint

    # MoCo v2 800-epoch ImageNet checkpoint, as released by facebookresearch/moco
    model = import_checkpoint("moco_v2_800ep_pretrain.pth.tar", arch="resnet50", stem="imagenet",
                              num_classes=1000, image_size=224,
                              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    model.save_pretrained("backbones/mocov2-r50")   # then: hf-scdd probe --backbone backbones/mocov2-r50

Layouts (``layout="auto"`` detects them from the key names):

* ``torchvision``: ``conv1.weight``, ..., ``fc.weight``; a stored ``fc`` is loaded.
* ``lincls`` (MoCo ``main_lincls`` output, or any DDP-saved model): ``module.conv1.weight``, ...,
  ``module.fc.weight``; the trained linear classifier is loaded.
* ``mocov2``: ``module.encoder_q.*``; drops ``encoder_q.fc.*`` (projection head), ``encoder_k.*``, ``queue*``.
* ``mocov3``: ``module.base_encoder.*``; drops ``base_encoder.fc.*``/``head.*`` (projector),
  ``momentum_encoder.*``, ``predictor.*``.
* ``dino``: ``[module.]backbone.*`` (the ``teacher`` preferred); drops ``head.*`` and ``fc.*``.
* ``swav``: ``module.*``; drops ``projection_head.*`` and ``prototypes.*``.

Checkpoints may wrap the tensors in ``state_dict``/``model``/``teacher``/``student`` containers (DINO's
``teacher`` is preferred over its ``student``, as DINO evaluates the teacher). ``torch.load`` always runs with
``weights_only=True`` (``argparse.Namespace`` entries such as DINO's ``args`` are allowed); ``.safetensors``
files are read with safetensors.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import BackboneError
from .resnet import ResNet

LAYOUTS = ("auto", "torchvision", "lincls", "mocov2", "mocov3", "dino", "swav")
"""Accepted values of ``layout``."""

CONTAINER_KEYS = ("state_dict", "model", "teacher", "student")
"""Keys under which training scripts nest the tensors, in order of preference."""

_MAX_LISTED = 10

# layout -> (prefixes to strip, first match wins; prefixes (after stripping) of non-backbone heads to drop;
#            whether keys without one of the prefixes are dropped, e.g. MoCo's encoder_k and queue)
_RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...], bool]] = {
    "torchvision": ((), (), False),
    "lincls": (("module.",), (), True),
    "mocov2": (("module.encoder_q.", "encoder_q."), ("fc.",), True),
    "mocov3": (("module.base_encoder.", "base_encoder."), ("fc.", "head."), True),
    "dino": (("module.backbone.", "backbone.", "module."), ("head.", "fc."), False),
    "swav": (("module.",), ("projection_head.", "prototypes."), False),
}

# What each layout's training method is called in the model's training record (and card).
_METHOD = {
    "torchvision": "imported",
    "lincls": "mocov2-linear-probe",
    "mocov2": "mocov2",
    "mocov3": "mocov3",
    "dino": "dino",
    "swav": "swav",
}


def import_checkpoint(path: str | os.PathLike, **kwargs: Any) -> ResNet:
    """Load a checkpoint file (``.pth``/``.pth.tar``/``.bin``/``.safetensors``, or a folder holding
    ``model.safetensors`` or ``pytorch_model.bin``) into a :class:`ResNet`; takes the keyword arguments of
    :func:`import_state_dict` (``arch`` and ``stem`` are required) and records ``path`` as the source."""
    return import_state_dict(read_checkpoint(path), source=str(path), **kwargs)


def import_torchvision_state_dict(state_dict: Mapping[str, torch.Tensor], **kwargs: Any) -> ResNet:
    """Import an in-memory torchvision-named state dict (e.g. ``torchvision.models.resnet18().state_dict()``).

    Takes the keyword arguments of :func:`import_state_dict` (``arch`` and ``stem`` are required).
    """
    return import_state_dict(state_dict, layout="torchvision", **kwargs)


def import_state_dict(
    state_dict: Mapping[str, Any],
    *,
    arch: str,
    stem: str,
    num_classes: int | None = None,
    in_channels: int = 3,
    width: int = 64,
    layout: str = "auto",
    keep_classifier: bool = True,
    source: str | None = None,
    **model_kwargs: Any,
) -> ResNet:
    """Import an in-memory checkpoint (a state dict, or a dict wrapping one under ``state_dict``/``model``/...).

    Args:
        state_dict: the tensors, possibly nested in the containers of :data:`CONTAINER_KEYS`.
        arch, stem, in_channels, width: the architecture the checkpoint was trained with (see
            :class:`ResNet`).
        num_classes: classifier size. ``None`` takes it from the checkpoint's classifier when it has one
            (``lincls``/``torchvision`` layouts) and gives a feature extractor (0) otherwise. When the
            checkpoint has no classifier, a fresh ``fc`` with MoCo's probe initialisation is created.
        layout: one of :data:`LAYOUTS`; ``"auto"`` detects it from the key names.
        keep_classifier: ``False`` ignores a classifier stored in the checkpoint (fresh ``fc`` instead).
        source: where the tensors came from, for the training record and error messages.
        model_kwargs: further :class:`ResNet` arguments (``image_size``, ``mean``, ``std``, ``class_names``,
            ``training``).

    Returns:
        The model in eval mode, its training record noting the source and layout.

    Raises:
        BackboneError: unreadable file, unknown layout, or a backbone that does not match the architecture
            exactly (the message lists the offending keys and the layout assumed).
    """
    if layout not in LAYOUTS:
        raise BackboneError(f"unknown checkpoint layout {layout!r}; choose one of {list(LAYOUTS)}")
    tensors = unwrap_state_dict(state_dict)
    detected = layout == "auto"
    if detected:
        layout = detect_layout(tensors)
    backbone, classifier = split_backbone(tensors, layout)
    if not keep_classifier:
        classifier = {}
    if num_classes is None:
        num_classes = classifier["fc.weight"].shape[0] if "fc.weight" in classifier else 0

    training = dict(model_kwargs.pop("training", None) or {})
    training.setdefault("method", _METHOD[layout])
    training.update(imported_from=source or "state_dict", import_layout=layout)
    model = ResNet(
        arch=arch,
        stem=stem,
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        training=training,
        **model_kwargs,
    )
    how = f"layout {layout!r}" + (" (auto-detected from the key names)" if detected else "")
    _check_backbone(model, backbone, how, source)
    _check_classifier(model, classifier, how)

    if classifier:
        model.load_state_dict({**backbone, **classifier}, strict=False)
    else:
        model.load_state_dict(backbone, strict=False)
        if num_classes > 0:
            model.reset_classifier(num_classes, model.class_names)
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# Reading and unwrapping
# --------------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or ``torch.load(weights_only=True)`` on the CPU."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "model.safetensors", path / "pytorch_model.bin"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            raise BackboneError(f"{path} is a folder without model.safetensors or pytorch_model.bin")
        path = found
    if not path.exists():
        raise BackboneError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the fix
        raise BackboneError(
            f"could not read {path} with torch.load(weights_only=True) ({type(err).__name__}: "
            f"{str(err).splitlines()[0]}). hf_scdd never unpickles arbitrary objects: "
            "re-save only the tensors, "
            "e.g. torch.save(ckpt['state_dict'], 'weights.pth'), or convert to safetensors."
        ) from err
    if not isinstance(loaded, Mapping):
        raise BackboneError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Descend into ``state_dict``/``model``/``teacher``/``student`` containers and keep only the tensors."""
    current: Mapping[str, Any] = checkpoint
    for _ in range(3):  # e.g. {"model": {"state_dict": {...}}}; metadata tensors (best_acc1) stay outside
        inner = next((current[k] for k in CONTAINER_KEYS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            break
        current = inner
    tensors = {k: v for k, v in current.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BackboneError(
            "no tensors found in the checkpoint "
            f"(top-level keys: {sorted(map(str, checkpoint))[:_MAX_LISTED]}); "
            f"expected a state dict, possibly under one of {list(CONTAINER_KEYS)}"
        )
    return tensors


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """Guess the codebase that wrote a state dict from its key names (see the module docstring's table)."""
    keys = list(state_dict)

    def has(fragment: str) -> bool:
        return any(fragment in k for k in keys)

    if has("encoder_q."):
        return "mocov2"
    if has("base_encoder.") or has("momentum_encoder."):
        return "mocov3"
    if has("projection_head.") or has("prototypes."):
        return "swav"
    if any(k.startswith(("backbone.", "module.backbone.", "head.", "module.head.")) for k in keys):
        return "dino"
    if all(k.startswith("module.") for k in keys):
        return "lincls"
    return "torchvision"


def split_backbone(
    state_dict: Mapping[str, torch.Tensor], layout: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Strip the layout's prefixes; return ``(backbone tensors, classifier tensors)`` in torchvision names.

    Keys without the layout's prefix (momentum encoders, queues, predictors) and non-backbone heads are
    dropped; ``fc.*`` is returned as the classifier only by layouts whose ``fc`` is a classifier.
    """
    prefixes, dropped, prefix_required = _RULES[layout]
    backbone: dict[str, torch.Tensor] = {}
    classifier: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None and prefix_required:
            continue
        name = key[len(prefix) :] if prefix else key
        if name.startswith(dropped):
            continue
        (classifier if name.startswith("fc.") else backbone)[name] = value
    return backbone, classifier


# --------------------------------------------------------------------------------------------------------
# Strict checks
# --------------------------------------------------------------------------------------------------------


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"{len(keys)}: {shown}" + (", ..." if len(keys) > _MAX_LISTED else "")


def _check_backbone(model: ResNet, backbone: dict[str, torch.Tensor], how: str, source: str | None) -> None:
    """Refuse any missing, unexpected or mis-shaped backbone tensor.

    ``num_batches_tracked`` may be absent (checkpoints from torch < 0.4.1): those counters stay at zero.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in backbone and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in backbone if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(backbone[k].shape)}, model {list(expected[k].shape)})"
        for k in expected
        if k in backbone and backbone[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"unexpected keys ({_listing(unexpected)})")
    if mismatched:
        problems.append(f"shape mismatches ({_listing(mismatched)})")
    hint = _architecture_hint(backbone)
    raise BackboneError(
        f"checkpoint {source or '(state dict)'} does not match {model.arch} (stem={model.stem!r}, "
        f"width={model.width}, in_channels={model.in_channels}) under {how}: "
        + "; ".join(problems)
        + ". "
        + (hint + " " if hint else "")
        + f"Pass the architecture it was trained with, or layout= one of {list(LAYOUTS[1:])}."
    )


def _check_classifier(model: ResNet, classifier: dict[str, torch.Tensor], how: str) -> None:
    if not classifier:
        return
    expected = {k: v for k, v in model.state_dict().items() if k.startswith("fc.")}
    if set(classifier) != set(expected) or any(classifier[k].shape != expected[k].shape for k in expected):
        found = {k: list(v.shape) for k, v in classifier.items()}
        want = {k: list(v.shape) for k, v in expected.items()}
        raise BackboneError(
            f"the checkpoint's classifier {found} does not fit the requested head {want} under {how}. "
            "Pass num_classes=None to take the checkpoint's class count, "
            "or keep_classifier=False for a fresh head."
        )


def _architecture_hint(backbone: Mapping[str, torch.Tensor]) -> str:
    """What the checkpoint's first convolution says about stem, width and input channels."""
    conv1 = backbone.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return ""
    stem = {7: "imagenet", 3: "cifar"}.get(conv1.shape[-1], f"unknown ({conv1.shape[-1]}x{conv1.shape[-1]})")
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in backbone if k.startswith("layer")}
    bottleneck = any(k.endswith("conv3.weight") for k in backbone)
    return (
        f"Its conv1 is {list(conv1.shape)}: stem={stem!r}, width={conv1.shape[0]}, "
        f"in_channels={conv1.shape[1]}; "
        f"it has {len(blocks)} residual blocks of {'bottleneck' if bottleneck else 'basic'} type."
    )
