"""BatchNorm backbones: the hf_scdd ResNet family, checkpoint importers and a transformers adapter."""

from .backbone import ARCHITECTURES, BackboneError, ResNet, build_backbone, load_backbone

__all__ = ["ARCHITECTURES", "BackboneError", "ResNet", "build_backbone", "load_backbone"]
