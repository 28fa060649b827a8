"""SSL and supervised pre-training views, applied to whole uint8 batches on the device (kornia).

MoCo v2 "aug-plus" views: RandomResizedCrop(scale 0.2-1) -> flip -> ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8) ->
grayscale (p=0.2) -> Gaussian blur (p=0.5, only for images >= 64 px: the MoCo CIFAR recipe has none at 32 px).
One-channel images get brightness/contrast jitter only (saturation and hue do not exist for them) and no
grayscale. The supervised control uses SRe²L's ``squeeze_cifar`` views (pad-crop + flip).
"""

from __future__ import annotations

import torch


def ssl_view_augmentation(
    channels: int,
    image_size: int,
    *,
    crop_scale: tuple[float, float] = (0.2, 1.0),
    jitter_strength: float = 0.4,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur: bool | None = None,
    blur_p: float = 0.5,
) -> torch.nn.Module:
    """The random view pipeline of MoCo v2 for ``[N, C, H, W]`` float images in [0, 1].

    ``blur=None`` enables blur for ``image_size >= 64`` (MoCo v2 blurs ImageNet views; its CIFAR demo does
    not). Returns a kornia ``AugmentationSequential`` drawing independent parameters per image.
    """
    import kornia.augmentation as K

    ops: list[torch.nn.Module] = [
        K.RandomResizedCrop((image_size, image_size), scale=crop_scale),
        K.RandomHorizontalFlip(),
    ]
    s = jitter_strength
    if channels == 3:
        ops.append(K.ColorJitter(s, s, s, s / 4, p=jitter_p))
        ops.append(K.RandomGrayscale(p=grayscale_p))
    else:
        ops.append(K.ColorJitter(brightness=s, contrast=s, p=jitter_p))
    if blur if blur is not None else image_size >= 64:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        ops.append(K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p))
    return K.AugmentationSequential(*ops)


def supervised_view_augmentation(image_size: int, *, padding: int | None = None) -> torch.nn.Module:
    """The supervised (SRe²L ``squeeze_cifar``) views: RandomCrop with zero padding (4 px at 32 px) + flip."""
    import kornia.augmentation as K

    pad = padding if padding is not None else max(1, round(image_size / 8))
    return K.AugmentationSequential(
        K.RandomCrop((image_size, image_size), padding=pad), K.RandomHorizontalFlip()
    )


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1]; float images are assumed to be in [0, 1] already."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def two_views(augmentation: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views (in [0, 1]) of each image: MoCo's query and key inputs."""
    x = to_unit_float(images)
    return augmentation(x).clamp_(0.0, 1.0), augmentation(x).clamp_(0.0, 1.0)
