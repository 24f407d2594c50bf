"""DeepLabV3 as used by LibMTL / Elich et al.: dilated ResNet-50 encoder + one ASPP head per task.

Encoder: torchvision's ResNet-50 built with ``replace_stride_with_dilation=[False, True, True]``
(output stride 8: layer3 dilation 2, layer4 dilation 4); the shared part is the stem (conv1,
bn1, relu, maxpool) and layer1-layer4; ``avgpool`` and ``fc`` are dropped. Its representation
has 2048 channels at 1/8 of the input size (rounded up by the strided convolutions). Heads:
:func:`mtl_paradigms.models.heads.aspp_head` (= torchvision's ``DeepLabHead``); their outputs are
bilinearly upsampled to the input size by :class:`~mtl_paradigms.models.base.MultiTaskModel`.

``pretrained=True`` loads torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (a download into the
torch hub cache on first use); the heads are always freshly initialised.

``width``: ``1.0`` (the default) is the paper's network. Other values build a narrower variant
for smoke runs only: torchvision's ``ResNet(Bottleneck, [3, 4, 6, 3])`` with
``width_per_group = max(4, round(64 * width))`` (the inner 3x3 width of every bottleneck; block
outputs keep 256-2048 channels) and ASPP heads with ``max(4, round(256 * width))`` channels.
Pretrained weights exist only for ``width=1.0``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor, nn

from mtl_paradigms.models.base import take_resnet_trunk

if TYPE_CHECKING:  # torchvision is imported where it is used: importing it costs ~2 s
    import torchvision.models

logger = logging.getLogger(__name__)

RESNET50_OUT_CHANNELS = 2048
OUTPUT_STRIDE = 8


def deeplab_widths(width: float = 1.0) -> tuple[int, int]:
    """``(width_per_group, aspp_channels)`` for ``width``; ``(64, 256)`` at ``width=1``."""
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(4, round(64 * width)), max(4, round(256 * width))


class DilatedResNetEncoder(nn.Module):
    """The stem and layer1-4 of a torchvision ResNet (no pooling head)."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        take_resnet_trunk(self, resnet)
        self.out_channels = RESNET50_OUT_CHANNELS

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.conv1.in_channels:
            raise ValueError(
                f"DeepLabV3 expects a batch N x {self.conv1.in_channels} x H x W, "
                f"got {tuple(x.shape)}"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def dilated_resnet50(width: float = 1.0, pretrained: bool = False) -> DilatedResNetEncoder:
    """The shared DeepLabV3 encoder (output stride 8); see the module docstring for ``width``."""
    import torchvision.models

    width_per_group, _ = deeplab_widths(width)
    if pretrained and width != 1.0:
        raise ValueError(f"ImageNet weights exist only for width 1.0, got width={width}")
    weights = None
    if pretrained:
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
        logger.info("loading torchvision ImageNet weights %s for the ResNet-50 encoder", weights)
    resnet = torchvision.models.resnet50(
        weights=weights,
        replace_stride_with_dilation=[False, True, True],
        width_per_group=width_per_group,
    )
    return DilatedResNetEncoder(resnet)
