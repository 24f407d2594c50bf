"""Batched data augmentation of MTAN/LibMTL (random scale-crop + horizontal flip), any device.

Per sample (as ``RandomScaleCrop`` of MTAN / LibMTL, vectorised over the batch):

1. draw a scale ``s`` uniformly from ``scales``; the crop is ``h = int(H / s)`` by
   ``w = int(W / s)`` pixels at an integer offset ``(i, j)`` drawn uniformly from
   ``[0, H - h] x [0, W - w]``;
2. resize the crop back to ``H x W``: the image bilinearly (``align_corners=True``: output pixel
   ``y`` samples input row ``i + y (h - 1) / (H - 1)``), every target by nearest neighbour
   (output pixel ``y`` copies input row ``i + floor(y h / H)``, PyTorch's legacy ``"nearest"``);
   so targets are only ever copied, and invalid pixels (label ``-1``, depth ``0``, normal ``0``)
   stay invalid and are never blended into valid ones;
3. divide the depth by ``s`` (zooming in by ``s`` brings the scene ``s`` times closer);
4. with probability 0.5 mirror left-right and negate the normal's x component (camera x axis
   points along image columns).

Targets are keyed by task: ``"segmentation"`` ``(B, H, W)`` (any dtype), ``"depth"``
``(B, 1, H, W)``, ``"normal"`` ``(B, 3, H, W)``; any other key of shape ``(B, H, W)`` or
``(B, C, H, W)`` is cropped and flipped without changing its values.

Random numbers come from ``generator`` on its own device, in a fixed order (scale index, row
offset, column offset, flip), so a generator in the same state gives the same output whatever
device the tensors are on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

DEPTH = "depth"
NORMAL = "normal"
PAPER_SCALES: tuple[float, ...] = (1.0, 1.2, 1.5)


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(s) for s in scales)
    if not values or not all(math.isfinite(s) and s >= 1.0 for s in values):
        raise ValueError(f"scales must be a non-empty list of finite numbers >= 1, got {scales}")
    return values


def _check_batch(images: Tensor, targets: Mapping[str, Tensor]) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    for key, target in targets.items():
        if target.ndim not in (3, 4) or target.shape[0] != b or tuple(target.shape[-2:]) != (h, w):
            raise ValueError(
                f"target {key!r} must be (B, H, W) or (B, C, H, W) matching images "
                f"{tuple(images.shape)}, got {tuple(target.shape)}"
            )
    if NORMAL in targets and (targets[NORMAL].ndim != 4 or targets[NORMAL].shape[1] != 3):
        raise ValueError(
            f"target 'normal' must be (B, 3, H, W), got {tuple(targets[NORMAL].shape)}"
        )


def _gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``out[b, c, y, :] = x[b, c, rows[b, y], :]`` for ``x`` (B, C, H, W), ``rows`` (B, H')."""
    b, c, _, w = x.shape
    return torch.gather(x, 2, rows[:, None, :, None].expand(b, c, rows.shape[1], w))


def _gather_cols(x: Tensor, cols: Tensor) -> Tensor:
    """``out[b, c, :, x] = x[b, c, :, cols[b, x]]`` for ``x`` (B, C, H, W), ``cols`` (B, W')."""
    b, c, h, _ = x.shape
    return torch.gather(x, 3, cols[:, None, None, :].expand(b, c, h, cols.shape[1]))


def _bilinear_crop(images: Tensor, row_src: Tensor, col_src: Tensor, col_order: Tensor) -> Tensor:
    """Sample ``images`` bilinearly at source rows ``row_src`` (B, H) and columns ``col_src``.

    Separable: rows first, then columns; the weights are exactly 0 at integer source positions,
    so an uncropped, unflipped sample is copied exactly. ``col_order`` (B, W) reorders the output
    columns (the flip).
    """
    _, _, h, w = images.shape
    r0 = row_src.floor().long().clamp_(0, h - 1)
    r1 = (r0 + 1).clamp_(max=h - 1)
    wr = (row_src - r0.to(row_src.dtype)).to(images.dtype)[:, None, :, None]
    c0 = col_src.floor().long().clamp_(0, w - 1)
    c1 = (c0 + 1).clamp_(max=w - 1)
    wc = (col_src - c0.to(col_src.dtype)).to(images.dtype)
    c0, c1, wc = c0.gather(1, col_order), c1.gather(1, col_order), wc.gather(1, col_order)
    wc = wc[:, None, None, :]
    blended = _gather_rows(images, r0) * (1 - wr) + _gather_rows(images, r1) * wr
    return _gather_cols(blended, c0) * (1 - wc) + _gather_cols(blended, c1) * wc


def augment_batch(
    images: Tensor,
    targets: Mapping[str, Tensor],
    generator: torch.Generator,
    scales: Sequence[float] = PAPER_SCALES,
    flip: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Random scale-crop and horizontal flip of a batch (conventions in the module doc).

    ``images`` ``(B, C, H, W)`` float; ``targets`` as in the module doc, on the same device.
    Returns new tensors of the same shapes and dtypes. ``scales=(1.0,)`` with ``flip=False``
    is the identity.
    """
    scale_values = _check_scales(scales)
    _check_batch(images, targets)
    if images.shape[0] == 0:
        return images, dict(targets)
    b, _, h, w = images.shape
    device = images.device
    gen_device = generator.device

    # Random draws, in a fixed order, on the generator's device.
    scale_idx = torch.randint(len(scale_values), (b,), generator=generator, device=gen_device)
    u_row = torch.rand(b, generator=generator, device=gen_device, dtype=torch.float64)
    u_col = torch.rand(b, generator=generator, device=gen_device, dtype=torch.float64)
    flip_draw = torch.rand(b, generator=generator, device=gen_device)

    # Per-sample parameters, computed beside the draws. Crop sizes exactly as MTAN:
    # int(H / s), int(W / s).
    crop_h = torch.tensor([int(h / s) for s in scale_values], device=gen_device)[scale_idx]
    crop_w = torch.tensor([int(w / s) for s in scale_values], device=gen_device)[scale_idx]
    top = (u_row * (h - crop_h + 1)).floor().long().clamp_(max=h - crop_h)
    left = (u_col * (w - crop_w + 1)).floor().long().clamp_(max=w - crop_w)
    flips = (flip_draw < 0.5) if flip else torch.zeros(b, dtype=torch.bool, device=gen_device)
    scale = torch.tensor(scale_values, device=gen_device, dtype=torch.float64)[scale_idx]
    # One transfer to the batch's device (float64 holds these integers exactly). From a CPU
    # generator to a GPU batch it is one host-to-device copy without a stream synchronisation
    # (non_blocking: the host buffer is staged before the call returns), where a copy per
    # parameter would each wait for the GPU to finish the previous step.
    params = torch.stack([crop_h.double(), crop_w.double(), top.double(), left.double(),
                          flips.double(), scale])  # fmt: skip
    params = params.to(device, non_blocking=True)
    crop_h, crop_w, top, left = (params[i].long() for i in range(4))
    flipped, scale = params[4] > 0.5, params[5]

    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    # Output column order: reversed for flipped samples.
    col_order = torch.where(flipped[:, None], (w - 1 - xs)[None, :], xs[None, :])

    # Nearest-neighbour source pixels (integer arithmetic, PyTorch's legacy "nearest").
    near_rows = top[:, None] + (ys[None, :] * crop_h[:, None]) // h
    near_cols = (left[:, None] + (xs[None, :] * crop_w[:, None]) // w).gather(1, col_order)

    # Bilinear source coordinates with align_corners=True.
    row_src = top[:, None].float() + _corner_aligned(ys, crop_h, h)
    col_src = left[:, None].float() + _corner_aligned(xs, crop_w, w)
    out_images = _bilinear_crop(images, row_src, col_src, col_order)

    out_targets: dict[str, Tensor] = {}
    for key, target in targets.items():
        as_4d = target[:, None] if target.ndim == 3 else target
        moved = _gather_cols(_gather_rows(as_4d, near_rows), near_cols)
        if key == DEPTH:
            moved = moved / scale.to(moved.dtype)[:, None, None, None]
        elif key == NORMAL:
            sign = torch.where(flipped, -1.0, 1.0).to(moved.dtype)
            moved = torch.cat([moved[:, :1] * sign[:, None, None, None], moved[:, 1:]], dim=1)
        out_targets[key] = moved[:, 0] if target.ndim == 3 else moved
    return out_images, out_targets


def _corner_aligned(positions: Tensor, crop: Tensor, size: int) -> Tensor:
    """``positions * (crop - 1) / (size - 1)`` per sample (B, size), exact for integer results."""
    if size == 1:
        return torch.zeros(crop.shape[0], 1, device=positions.device)
    numerator = (positions[None, :] * (crop[:, None] - 1)).float()
    return numerator / float(size - 1)


def normalize_normals(normals: Tensor, dim: int = 1, eps: float = 1e-12) -> Tensor:
    """Scale vectors along ``dim`` to unit length; (near-)zero vectors (invalid) become 0."""
    norm = normals.norm(dim=dim, keepdim=True)
    safe = torch.where(norm > eps, norm, torch.ones_like(norm))
    return torch.where(norm > eps, normals / safe, torch.zeros_like(normals))
