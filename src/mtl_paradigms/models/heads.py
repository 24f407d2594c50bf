"""Task heads: MTAN's SegNet head and the DeepLabV3 (ASPP) head.

A head maps the shared representation to one task's raw output (no final activation, no
normalisation: losses and metrics live in :mod:`mtl_paradigms.tasks`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

#: Atrous rates of the ASPP module for output stride 8 (torchvision's and LibMTL's default).
ASPP_RATES: tuple[int, int, int] = (12, 24, 36)


def segnet_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """MTAN's task head: ``Conv3x3(in, in)`` then ``Conv1x1(in, out)``, both with bias."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, kernel_size=3, padding=1),
        nn.Conv2d(in_channels, out_channels, kernel_size=1),
    )


def aspp_head(
    in_channels: int,
    out_channels: int,
    channels: int = 256,
    rates: Sequence[int] = ASPP_RATES,
) -> nn.Sequential:
    """DeepLabV3 head: torchvision's ``ASPP``, ``Conv3x3-BN-ReLU``, ``Conv1x1`` to the output.

    With ``channels=256`` this is exactly torchvision's ``DeepLabHead(in_channels,
    out_channels)`` (same modules, names and shapes; tested); ``channels`` only narrows it for
    smoke runs. ASPP's image-pooling branch applies BatchNorm to a 1x1 map, so in training mode
    the batch must hold at least two images.
    """
    from torchvision.models.segmentation.deeplabv3 import ASPP  # lazily: a costly import

    return nn.Sequential(
        ASPP(in_channels, list(rates), out_channels=channels),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, out_channels, kernel_size=1),
    )
