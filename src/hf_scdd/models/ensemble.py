"""Several recovery models seen as one (multiple observers, as in G-VBSM and CV-DD).

Recovery matches the BatchNorm statistics of one model and pushes its logits towards each image's class. With
``hf-scdd recover --observers A B``, :class:`ObserverEnsemble` stacks the recovery model and the extra models:
its forward feeds the same images to every member, each through its own input normalisation, and returns
the mean of their logits; :func:`hf_scdd.losses.bn_matching.bn_layers` finds every member's BN layers, so the
BN term sums each observer's own matching term (the first BN layer of each member gets the first-layer
multiplier). An image then has to look like the data to several differently trained networks at once, which is
the argument of the multi-observer papers: one model's statistics can be matched by images that only that model
finds natural. Its ``forward_features`` puts every member's unit-norm features side by side, which is what
``recover --selection_features joint`` clusters on (the recovery model's and ``--selection_model``'s views of
the real images at once). :class:`LogitView` offers a model's centred logits as its features (``recover
--selection_features logits``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import BackboneError
from .adapters import model_logits


class ObserverEnsemble(nn.Module):
    """The recovery model (member 0, whose normalisation the synthesised images use) and extra observers.

    Attributes copied from member 0 (``num_classes``, ``mean``, ``std``, ``in_channels``, ``image_size``,
    ``class_names``) make the ensemble usable wherever a recovery model is. Every member must predict the same
    classes from the same channels.
    """

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an observer ensemble needs the recovery model and at least one more observer")
        self.members = nn.ModuleList(members)
        names = list(names or [f"observer {i}" for i in range(len(members))])
        first = members[0]
        for name, member in zip(names[1:], members[1:]):
            check_same_task(first, member, names[0], name)
        self.num_classes = int(first.num_classes)
        self.mean, self.std = list(first.mean), list(first.std)
        self.in_channels = int(getattr(first, "in_channels", 3))
        self.image_size = getattr(first, "image_size", None)
        self.class_names = getattr(first, "class_names", None)
        # per member: scale and shift that turn member 0's normalised input into the member's own
        scales, shifts = zip(*(renormalisation(self.mean, self.std, list(m.mean), list(m.std)) for m in members))
        self.register_buffer("scales", torch.stack(scales), persistent=False)
        self.register_buffer("shifts", torch.stack(shifts), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean float32 logits of every member on ``x`` (normalised with member 0's statistics)."""
        return torch.stack(self._member_outputs(x, features=False)).mean(dim=0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's pooled features (its logits where it has no ``forward_features``), each scaled to unit
        norm, side by side: cosine similarity of these is the mean of the members' own cosine similarities, so
        a k-means on them weighs every observer's view of the images equally, whatever its width."""
        parts = [nn.functional.normalize(out.flatten(1), dim=1) for out in self._member_outputs(x, features=True)]
        return torch.cat(parts, dim=1) / len(parts) ** 0.5

    def _member_outputs(self, x: torch.Tensor, *, features: bool) -> list[torch.Tensor]:
        """Each member's float32 logits (or pooled features, where it has ``forward_features``) on ``x``, fed
        through the member's own input normalisation."""
        outputs = []
        for member, scale, shift in zip(self.members, self.scales, self.shifts):
            forward = getattr(member, "forward_features", None) if features else None
            out = (forward or member)(x * scale + shift)
            outputs.append(model_logits(out).float())
        return outputs


class LogitView(nn.Module):
    """A model whose ``forward_features`` are its own logits, each centred on its mean over the classes.

    ``recover --selection_features logits`` clusters a class's images by the pattern of the observer's logits,
    not by its pooled features: which rival classes each image resembles, and how much, which is what a KD
    teacher's soft labels pass on (a cat that looks like a dog, another that looks like a deer). Centring drops
    the one direction softmax ignores, so cosine similarity compares the shapes of two soft labels whatever the
    temperature. The pooled features carry nuisance directions (pose, colour) the head reads past.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for attribute in ("num_classes", "mean", "std", "in_channels", "image_size", "class_names"):
            if hasattr(model, attribute):
                setattr(self, attribute, getattr(model, attribute))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return model_logits(self.model(x)).float()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        return logits - logits.mean(dim=1, keepdim=True)


def renormalisation(
    mean: Sequence[float], std: Sequence[float], own_mean: Sequence[float], own_std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of shape ``[1, C, 1, 1]`` with ``x · scale + shift`` = the pixels ``x·std + mean``
    normalised by ``own_mean``/``own_std`` (identity when the statistics agree)."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    om, os_ = torch.tensor(own_mean).view(1, -1, 1, 1), torch.tensor(own_std).view(1, -1, 1, 1)
    return s / os_, (m - om) / os_


def check_same_task(first: nn.Module, other: nn.Module, first_name: str, other_name: str) -> None:
    """Refuse an observer that does not predict the recovery model's classes from the same input."""
    for attribute in ("num_classes", "mean", "std"):
        if getattr(other, attribute, None) is None:
            raise BackboneError(f"observer {other_name!r} has no '{attribute}' attribute: it cannot join the recovery "
                                "model (pass a classifier saved by hf_scdd, or a transformers BN classifier)")
    if int(other.num_classes) != int(first.num_classes):
        raise BackboneError(f"observer {other_name!r} predicts {other.num_classes} classes but {first_name!r} predicts "
                            f"{first.num_classes}: pass observers trained on the same dataset")
    channels = (getattr(first, "in_channels", 3), getattr(other, "in_channels", 3))
    if channels[0] != channels[1] or len(other.mean) != len(first.mean):
        raise BackboneError(f"observer {other_name!r} takes {channels[1]}-channel images but {first_name!r} takes "
                            f"{channels[0]}: pass observers trained on the same dataset")
