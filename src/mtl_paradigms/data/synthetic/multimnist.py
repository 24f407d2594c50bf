"""Stand-in MNIST from scikit-learn's bundled 8x8 digits, in the MNIST idx files.

scikit-learn ships 1,797 handwritten digits of 8x8 pixels with values 0-16
(``sklearn.datasets.load_digits``, no download). Each is scaled to 0-255, resized to 20x20
(bilinear) and centred in a 28x28 frame like MNIST's digits; a seeded permutation puts
``train_fraction`` of them in the train files and the rest in the t10k files. The four files
are written gzipped under their official names, so :func:`mtl_paradigms.data.mnist.
build_multimnist` reads them exactly as it reads the real download.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mtl_paradigms.data.mnist import MNIST_STEMS, write_idx
from mtl_paradigms.io import atomic_directory

logger = logging.getLogger(__name__)

DIGIT_BOX = 20
FRAME = 28


def sklearn_digits_as_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digits as ``(N, 28, 28)`` uint8 images and ``(N,)`` labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0))[:, None]
    big = F.interpolate(small, size=(DIGIT_BOX, DIGIT_BOX), mode="bilinear", align_corners=False)
    images = np.zeros((len(small), FRAME, FRAME), dtype=np.uint8)
    pad = (FRAME - DIGIT_BOX) // 2
    images[:, pad : pad + DIGIT_BOX, pad : pad + DIGIT_BOX] = (
        big[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()
    )
    return images, digits.target.astype(np.uint8)


def write_synthetic_mnist(
    out_dir: str | os.PathLike[str], train_fraction: float = 0.8, seed: int = 0
) -> Path:
    """Write the four MNIST ``.gz`` idx files into the new folder ``out_dir`` (atomically)."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    images, labels = sklearn_digits_as_mnist()
    order = np.random.default_rng(seed).permutation(len(images))
    cut = round(len(images) * train_fraction)
    parts = {"train": order[:cut], "test": order[cut:]}
    with atomic_directory(out_dir) as tmp:
        for split, index in parts.items():
            image_stem, label_stem = MNIST_STEMS[split]
            write_idx(tmp / f"{image_stem}.gz", images[index])
            write_idx(tmp / f"{label_stem}.gz", labels[index])
    logger.info(
        "wrote MNIST-format digits from scikit-learn to %s (%d train, %d test)",
        out_dir, cut, len(images) - cut,
    )  # fmt: skip
    return Path(out_dir)
