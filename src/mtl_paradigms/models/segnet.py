"""SegNet as in MTAN's hard-parameter-sharing baseline ("split", standard type).

Layout (Liu et al., MTAN, ``model_segnet_split``; LibMTL's NYUv2 SegNet example): filters
``f = [64, 128, 256, 512, 512]``; every convolution is a 3x3 ``Conv-BN-ReLU`` block.

* Encoder stage ``i`` (``i = 0..4``): one block ``f[i-1] -> f[i]`` (the first takes the 3 image
  channels) then 1, 1, 2, 2, 2 blocks ``f[i] -> f[i]`` (2, 2, 3, 3, 3 convolutions per stage),
  followed by 2x2 max-pooling that keeps its indices.
* Decoder stage ``i`` (deepest first): 2x2 max-unpooling with the indices of encoder stage ``i``,
  one block ``f[i] -> f[i-1]`` (``f[0] -> f[0]`` for stage 0), then 1, 1, 2, 2, 2 blocks
  ``f[i-1] -> f[i-1]``.

The whole encoder-decoder is shared; its output has ``f[0]`` channels at the input resolution.
A task head (:func:`mtl_paradigms.models.heads.segnet_head`) is ``Conv3x3(f[0], f[0])`` then
``Conv1x1(f[0], out_channels)`` with no normalisation or activation in between, as in MTAN.
Initialisation as MTAN: Xavier-normal convolution weights, zero biases, BatchNorm weight 1 and
bias 0 (:func:`init_mtan_`).

Width: ``width`` multiplies every filter count (``max(4, round(f * width))``), so that
``width=0.125`` gives ``[8, 16, 32, 64, 64]`` for CPU smoke runs; ``width=1`` is the paper's.

Input size: five 2x2 poolings. For ``H`` and ``W`` divisible by 32 (the paper's 288x384 and
128x256) this is exactly MTAN's network. Other sizes are supported rather than padded: pooling
floors odd sizes and unpooling (:func:`max_unpool`) restores the recorded pre-pooling size, so
the output always has the input's size (e.g. the 48x64 smoke size: 48 -> 24 -> 12 -> 6 -> 3 -> 1);
the last row/column of an odd-sized map then does not reach deeper stages. ``H`` and ``W`` must
be at least 32 (each of the five poolings needs a map of at least 2x2); smaller inputs raise
``ValueError``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

SEGNET_FILTERS: tuple[int, ...] = (64, 128, 256, 512, 512)
#: Convolutions per encoder stage (and per mirrored decoder stage).
SEGNET_CONVS_PER_STAGE: tuple[int, ...] = (2, 2, 3, 3, 3)
#: Smallest input height/width: five 2x2 poolings.
SEGNET_MIN_SIZE = 2 ** len(SEGNET_FILTERS)


def segnet_filters(width: float = 1.0) -> tuple[int, ...]:
    """Filter counts for ``width``: ``max(4, round(f * width))`` for MTAN's filters."""
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    return tuple(max(4, round(f * width)) for f in SEGNET_FILTERS)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (with bias, as MTAN), BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _stage(in_channels: int, out_channels: int, num_convs: int) -> nn.Sequential:
    blocks = [conv_bn_relu(in_channels, out_channels)]
    blocks += [conv_bn_relu(out_channels, out_channels) for _ in range(num_convs - 1)]
    return nn.Sequential(*blocks)


def init_mtan_(module: nn.Module) -> nn.Module:
    """MTAN's initialisation, in place: Xavier-normal weights, zero biases, BatchNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def max_unpool(x: Tensor, indices: Tensor, size: tuple[int, int]) -> Tensor:
    """Max-unpooling: place ``x`` at ``indices`` (from ``max_pool2d``) of a zero ``size`` map.

    The same result as ``F.max_unpool2d(x, indices, 2, 2, output_size=size)`` (tested), written as
    a scatter because torch flags ``max_unpool2d`` as nondeterministic and refuses it under
    ``torch.use_deterministic_algorithms(True)``; 2x2/stride-2 pooling indices are unique, so
    the scatter is deterministic.
    """
    n, c = x.shape[:2]
    out = x.new_zeros(n, c, size[0] * size[1])
    out = out.scatter(2, indices.flatten(2), x.flatten(2))
    return out.view(n, c, *size)


class SegNetEncoderDecoder(nn.Module):
    """The shared SegNet trunk: image ``N x 3 x H x W`` -> features ``N x f[0] x H x W``."""

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        self.filters = segnet_filters(width)
        f = self.filters
        self.down = nn.ModuleList(
            _stage(in_channels if i == 0 else f[i - 1], f[i], n)
            for i, n in enumerate(SEGNET_CONVS_PER_STAGE)
        )
        self.up = nn.ModuleList(
            _stage(f[i], f[max(i - 1, 0)], n) for i, n in enumerate(SEGNET_CONVS_PER_STAGE)
        )
        self.in_channels = in_channels
        self.out_channels = f[0]
        init_mtan_(self)

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SegNet expects a batch N x {self.in_channels} x H x W, got {tuple(x.shape)}"
            )
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if h < SEGNET_MIN_SIZE or w < SEGNET_MIN_SIZE:
            raise ValueError(
                f"SegNet needs H and W of at least {SEGNET_MIN_SIZE} (five 2x2 max-poolings), "
                f"got {h}x{w}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        indices: list[Tensor] = []
        sizes: list[tuple[int, int]] = []
        for stage in self.down:
            x = stage(x)
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
            x, idx = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
            indices.append(idx)
        for i in reversed(range(len(self.up))):
            x = max_unpool(x, indices[i], sizes[i])
            x = self.up[i](x)
        return x
