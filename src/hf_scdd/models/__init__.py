"""BatchNorm backbones: the hf_scdd ResNet family (``resnet``), a transformers adapter (``adapters``),
checkpoint importers (``importers``), MoCo v2's parts (``moco``) and backbone loading (``loading``)."""

from ..errors import BackboneError
from .adapters import TransformersClassifier
from .importers import import_checkpoint, import_torchvision_state_dict
from .loading import load_backbone, resolve_model_folder
from .resnet import ARCHITECTURES, ResNet, build_backbone

__all__ = [
    "ARCHITECTURES", "BackboneError", "ResNet", "TransformersClassifier", "build_backbone",
    "import_checkpoint", "import_torchvision_state_dict", "load_backbone", "resolve_model_folder",
]
