"""BatchNorm ResNets that load torchvision/MoCo/SC-DD checkpoints and live on the Hub.

Parameter names are identical to torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``fc``), so any
torchvision-layout state dict loads with ``strict=True``. The class mixes in
:class:`huggingface_hub.PyTorchModelHubMixin`: ``save_pretrained``/``push_to_hub``/``from_pretrained`` keep the
constructor config, the weights *and the BN running statistics* in safetensors, with no remote code.

The config also carries what the later stages need to use the model without guessing: the input
normalisation, the image size, the class names and a ``training`` record (method, dataset, epochs, probe
accuracy) that the model card shows. :func:`~hf_scdd.models.loading.load_backbone` loads any backbone;
:meth:`ResNet.push_to_hub` goes through the library's one upload path (``hub/push.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants
from torch import nn

from ..errors import BackboneError
from ..hub.cards import render_model_card
from ..utils import atomic_folder, first_line

# arch -> (block type, blocks per stage)
ARCHITECTURES: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet10": ("basic", (1, 1, 1, 1)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="hf_scdd",
    tags=["dataset-distillation", "sc-dd", "batchnorm"],
    repo_url="https://github.com/hf-scdd/hf_scdd",
    paper_url="https://arxiv.org/abs/2404.07976",
    license="apache-2.0",
    pipeline_tag="image-classification",
):
    """A torchvision-compatible ResNet with a CIFAR or ImageNet stem and a linear classifier ``fc``.

    Args:
        arch: one of :data:`ARCHITECTURES` (``resnet10``/``18``/``34``/``50``/``101``).
        num_classes: size of the classifier head; 0 gives a feature extractor (``fc`` is ``Identity``).
        stem: ``"cifar"`` (3×3 stride-1 ``conv1``, no max-pool: SC-DD's CIFAR model) or ``"imagenet"``
            (7×7 stride-2 ``conv1`` + max-pool, torchvision's).
        in_channels: 1 for grey images, 3 for colour.
        width: channels of the first stage (64 in torchvision; 16 or 32 train in minutes on a CPU).
        image_size: the input side length the model was trained at.
        mean, std: the input normalisation the model expects (one value per channel, [0, 1] pixel units).
        class_names: names of the ``num_classes`` outputs, in order.
        training: free-form record of how the model was made (method, dataset, epochs, probe accuracy, ...).
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        stem: str = "cifar",
        in_channels: int = 3,
        width: int = 64,
        image_size: int = 32,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        class_names: list[str] | None = None,
        training: dict[str, Any] | None = None,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            raise BackboneError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
        if stem not in STEMS:
            raise BackboneError(f"unknown stem {stem!r}; choose 'cifar' or 'imagenet'")
        if num_classes < 0 or width < 1 or in_channels < 1:
            raise BackboneError("num_classes must be >= 0, width and in_channels >= 1")
        mean = list(mean) if mean is not None else [0.5] * in_channels
        std = list(std) if std is not None else [0.5] * in_channels
        if len(mean) != in_channels or len(std) != in_channels:
            raise BackboneError(f"mean/std need {in_channels} values, got {len(mean)}/{len(std)}")
        if class_names is not None and len(class_names) != num_classes:
            raise BackboneError(f"{len(class_names)} class names for {num_classes} classes")
        self.arch, self.stem, self.num_classes, self.in_channels = arch, stem, num_classes, in_channels
        self.width, self.image_size = width, image_size
        self.mean, self.std = mean, std
        self.class_names = list(class_names) if class_names is not None else None
        self.training_info: dict[str, Any] = dict(training or {})

        block_name, layers = ARCHITECTURES[arch]
        block = BasicBlock if block_name == "basic" else Bottleneck
        if stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self._inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], 1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = width * 8 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features [N, num_features] (what SSL trains and the probe reads)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))

    def reset_classifier(self, num_classes: int, class_names: list[str] | None = None) -> None:
        """Replace ``fc`` with a fresh linear layer (MoCo probe init: N(0, 0.01) weights, zero bias)."""
        self.fc = nn.Linear(self.num_features, num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this model (what ``config.json`` holds)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "stem": self.stem,
            "in_channels": self.in_channels,
            "width": self.width,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "class_names": self.class_names,
            "training": self.training_info,
        }

    def update_training_info(self, **info: Any) -> None:
        """Record how the model was made; stored in ``config.json`` and shown on the card."""
        self.training_info.update(info)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save with the *current* config (class count, training record), not the constructor's."""
        kwargs.setdefault("config", self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool = False,
        branch: str | None = None,
    ) -> str:
        """Save the model (weights, config, card) and upload it with :func:`hf_scdd.hub.push.push_model_folder`,
        the library's one upload path; returns the commit URL."""
        import tempfile

        from ..hub.push import push_model_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return push_model_folder(tmp, repo_id, revision=branch, private=private, commit_message=commit_message)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", strict: bool = True, **kwargs):
        """Strict by default (the mixin's default is not): a backbone missing BN buffers must not load.

        A local folder is read directly (the mixin prints a line for it); Hub ids go through the mixin.
        """
        from safetensors import SafetensorError

        local = os.path.isdir(model_id)
        name = constants.SAFETENSORS_SINGLE_FILE
        path = os.path.join(model_id, name) if local else f"{name} of {model_id!r}"
        try:
            if not local:
                return super()._from_pretrained(model_id=model_id, map_location=map_location, strict=strict,
                                                **kwargs)
            download_options = ("revision", "cache_dir", "force_download", "local_files_only", "token")
            model = cls(**{k: v for k, v in kwargs.items() if k not in download_options})
            return cls._load_as_safetensor(model, path, map_location, strict)
        except SafetensorError as err:
            raise BackboneError(
                f"{path} is truncated or not a safetensors file ({first_line(err)}): save or download the model "
                "again (for a Hub id, delete it from the Hub cache first)"
            ) from err

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The card from ``model_cards/backbone.md`` with per-model metadata (datasets, metrics)."""
        return render_model_card(self)

    def bn_layer_count(self) -> int:
        return sum(isinstance(m, nn.BatchNorm2d) for m in self.modules())


def build_backbone(arch: str = "resnet18", **kwargs: Any) -> ResNet:
    """Build a fresh backbone (see :class:`ResNet` for the arguments)."""
    return ResNet(arch=arch, **kwargs)


def plain_resnet(model: ResNet) -> ResNet:
    """A fresh plain-BatchNorm ResNet with ``model``'s config and state (drops MoCo's SplitBatchNorm)."""
    plain = ResNet(**model.config)
    plain.load_state_dict(model.state_dict())
    return plain.eval()


def save_model_atomically(model: nn.Module, folder: str | os.PathLike) -> Path:
    """``save_pretrained`` into a temporary sibling, then rename: readers never see half a model."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
    return Path(folder)
