"""Image encoders on timm: any timm architecture, pooled features, local weights only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from torch import nn


@dataclass
class ImageConfig:
    """An image tower.

    Attributes:
        model_name: any name ``timm.list_models()`` knows.
        image_size: side of the square input images.
        in_chans: input channels.
        checkpoint_path: local weights for the backbone (no download happens at run time).
        grad_checkpointing: trade compute for memory in the backbone.
        freeze: keep the backbone's parameters fixed.
        timm_kwargs: extra keyword arguments for ``timm.create_model`` (depth, embed_dim, patch_size, ...).
    """

    model_name: str = "resnet50"
    image_size: int = 224
    in_chans: int = 3
    checkpoint_path: str | None = None
    grad_checkpointing: bool = False
    freeze: bool = False
    timm_kwargs: dict[str, Any] = field(default_factory=dict)


def _size_arguments(model_name: str, config: ImageConfig) -> dict[str, Any]:
    """Vision transformers and Swin fix their input size at construction; CNNs take any size."""
    family = model_name.split("_")[0]
    return {"img_size": config.image_size} if family in ("vit", "deit", "swin", "swinv2", "eva", "beit") else {}


class ImageEncoder(nn.Module):
    """A timm backbone without its classifier, returning pooled features ``[B, num_features]``.

    Args:
        config: the `ImageConfig`.

    Raises:
        ValueError: a model name timm does not know.
        FileNotFoundError: a ``checkpoint_path`` that does not exist.
    """

    def __init__(self, config: ImageConfig) -> None:
        super().__init__()
        if config.model_name not in timm.list_models():
            raise ValueError(f"image model {config.model_name!r} is not a timm model name (see timm.list_models())")
        if config.checkpoint_path is not None and not os.path.isfile(config.checkpoint_path):
            raise FileNotFoundError(f"checkpoint_path {config.checkpoint_path!r} does not exist")
        self.config = config
        # Any: timm models carry methods (set_grad_checkpointing) and attributes nn.Module does not declare.
        backbone: Any = timm.create_model(
            config.model_name,
            pretrained=False,
            num_classes=0,
            in_chans=config.in_chans,
            **_size_arguments(config.model_name, config),
            **config.timm_kwargs,
        )
        if config.checkpoint_path is not None:
            timm.models.load_checkpoint(backbone, config.checkpoint_path, strict=False)
        if config.grad_checkpointing:
            backbone.set_grad_checkpointing(True)
        if config.freeze:
            backbone.requires_grad_(False)
        self.backbone = backbone

    @property
    def num_features(self) -> int:
        """Width of the pooled features."""
        return int(self.backbone.num_features)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``images`` is ``[B, in_chans, H, W]`` of a size the backbone takes."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, C, H, W] tensor; got {shape}")
        if images.shape[1] != self.config.in_chans:
            raise ValueError(f"images must have {self.config.in_chans} channels; got shape {tuple(images.shape)}")
        patch_embed = getattr(self.backbone, "patch_embed", None)
        fixed = getattr(patch_embed, "img_size", None) if getattr(patch_embed, "strict_img_size", False) else None
        if fixed is not None and tuple(images.shape[-2:]) != tuple(fixed):
            raise ValueError(
                f"{self.config.model_name} takes {fixed[0]}x{fixed[1]} images (image_size in its config); "
                f"got {images.shape[-2]}x{images.shape[-1]}"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` images to ``[B, num_features]`` pooled features."""
        self.check_images(images)
        return self.backbone(images)
