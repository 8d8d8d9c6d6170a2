"""Pretrained ImageNet models and their input transform, for raw-image pools on a cluster.

``resnet50`` wraps torchvision's ResNet-50 in the model protocol: input rows are flattened
``[3, 224, 224]`` images (what ``imagenet_transform`` produces), output ``(logits [B, 1000],
embedding [B, 2048])`` with the embedding = the pooled features fed to the last layer
(BADGE / k-center use it). torchvision is needed where the model runs (the cluster image);
it is not a dependency of alscale. Job files name them by import path::

    model: {factory: "alscale.scoring.zoo:resnet50", kwargs: {weights: DEFAULT},
            transform: "alscale.scoring.zoo:imagenet_transform"}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from alscale.errors import AlscaleError

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
SIDE = 224


def imagenet_transform(image: Any) -> np.ndarray:
    """The standard ImageNet evaluation transform (PIL and numpy only): RGB, shorter side
    resized to 256 (bilinear), centre crop 224, scaled to [0, 1], normalised by the ImageNet
    mean/std; returns ``[3, 224, 224]`` float32."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(SIDE, round(w * scale)), max(SIDE, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - SIDE) // 2, (h - SIDE) // 2
    x = np.asarray(image.crop((left, top, left + SIDE, top + SIDE)), dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


class ImageClassifierWithEmbedding(nn.Module):
    """A torchvision-style classifier (``backbone.fc`` is the last layer) in the model protocol."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        if not isinstance(getattr(backbone, "fc", None), nn.Linear):
            raise AlscaleError("the backbone needs an nn.Linear 'fc' last layer (torchvision ResNets have one)")
        self.head = backbone.fc
        backbone.fc = nn.Identity()
        self.backbone = backbone

    def forward(self, x_B_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding_B_E = self.backbone(x_B_D.reshape(-1, 3, SIDE, SIDE))
        return self.head(embedding_B_E), embedding_B_E


def resnet50(weights: str | None = "DEFAULT", num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50 (``weights``: ``DEFAULT``/``IMAGENET1K_V2``/``None``) with its
    2048-d pooled features as the embedding."""
    try:
        from torchvision.models import resnet50 as tv_resnet50
    except ImportError:
        raise AlscaleError("model alscale.scoring.zoo:resnet50 needs torchvision on every worker; install it in "
                           "the cluster image (pip install torchvision matching its torch)") from None
    backbone = tv_resnet50(weights=weights, num_classes=num_classes) if weights is None else tv_resnet50(
        weights=weights)
    return ImageClassifierWithEmbedding(backbone)
