"""ResNet-18 with one linear layer per task: the CelebA network of Elich et al. (2024).

Encoder: torchvision's ``resnet18`` without its ``fc`` layer: stem, layer1-layer4 and global
average pooling, giving a 512-dimensional representation ``z`` (the shared part). Heads: one
``nn.Linear(512, 1)`` per binary attribute (a logit), as "ResNet-18 + one linear layer per task".

Inputs are ``N x 3 x H x W``; uint8 batches (the prepared CelebA, see
:mod:`mtl_paradigms.data.celeba`) are scaled to [0, 1] here, then every batch is standardised
with the ImageNet mean and std (what torchvision's ImageNet weights expect). Any size from
32x32 works (the paper uses 64x64).

``pretrained=True`` loads torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` through torchvision's
weight mechanism (cached under ``$TORCH_HOME/hub/checkpoints``; the workflow points
``TORCH_HOME`` into ``data/`` and downloads the file with ``mtlp download``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

RESNET18_FEATURES = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet up to global average pooling: ``(N, 3, H, W) -> (N, 512)``."""

    def __init__(self, resnet: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.avgpool = resnet.avgpool
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects a batch N x 3 x H x W, got {tuple(x.shape)}")
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet18_encoder(pretrained: bool = False) -> ResNetEncoder:
    """The shared ResNet-18 encoder; ImageNet weights with ``pretrained``."""
    import torchvision.models

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1 if pretrained else None
    if weights is not None:
        logger.info("loading torchvision ImageNet weights %s for the ResNet-18 encoder", weights)
    return ResNetEncoder(torchvision.models.resnet18(weights=weights), RESNET18_FEATURES)


def linear_head(in_features: int, out_features: int) -> nn.Linear:
    """One linear layer from the pooled representation to a task's output (a logit)."""
    return nn.Linear(in_features, out_features)
