"""BatchNorm backbones: the hf_scdd ResNet family, checkpoint importers and a transformers adapter."""

from .adapters import TransformersClassifier
from .backbone import ARCHITECTURES, BackboneError, ResNet, build_backbone, load_backbone
from .importers import import_checkpoint, import_torchvision_state_dict

__all__ = [
    "ARCHITECTURES", "BackboneError", "ResNet", "TransformersClassifier", "build_backbone",
    "import_checkpoint", "import_torchvision_state_dict", "load_backbone",
]
