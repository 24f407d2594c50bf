"""ResNet-18 with one linear layer per task: the CelebA network of Elich et al. (2024).

Encoder: ResNet-18 (He et al. 2016; BasicBlocks [2, 2, 2, 2], widths 64-512) without its ``fc``
layer: stem, layer1-layer4 and global average pooling, giving a 512-dimensional representation
``z`` (the shared part). It is built here with torchvision's module names and initialisation
(Kaiming-normal convolutions, BatchNorm weight 1 / bias 0), so torchvision's state dicts load
into it; building it without importing torchvision saves seconds per training job. Heads: one
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

from mtl_paradigms.models.base import take_resnet_trunk

logger = logging.getLogger(__name__)

RESNET18_FEATURES = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet up to global average pooling: ``(N, 3, H, W) -> (N, 512)``."""

    def __init__(self, resnet: nn.Module, out_channels: int) -> None:
        super().__init__()
        take_resnet_trunk(self, resnet)
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


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (ResNet-18/34)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class _ResNet18Body(nn.Module):
    """The modules of torchvision's ``resnet18`` up to ``avgpool``, under the same names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        widths, channels = (64, 128, 256, 512), 64
        for i, width in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = nn.Sequential(BasicBlock(channels, width, stride), BasicBlock(width, width))
            setattr(self, f"layer{i}", layer)
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)


def resnet18_encoder(pretrained: bool = False) -> ResNetEncoder:
    """The shared ResNet-18 encoder; torchvision's ImageNet weights with ``pretrained``."""
    encoder = ResNetEncoder(_ResNet18Body(), RESNET18_FEATURES)
    if pretrained:
        import torchvision.models  # only here: importing torchvision costs seconds

        weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        logger.info("loading torchvision ImageNet weights %s for the ResNet-18 encoder", weights)
        state = weights.get_state_dict(progress=False, check_hash=True)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(("mean", "std")) for k in missing):
            raise RuntimeError(f"ResNet-18 weights do not fit: {missing=} {unexpected=}")
    return encoder


def linear_head(in_features: int, out_features: int) -> nn.Linear:
    """One linear layer from the pooled representation to a task's output (a logit)."""
    return nn.Linear(in_features, out_features)
