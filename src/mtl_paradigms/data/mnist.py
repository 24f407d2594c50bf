"""MNIST idx files and Multi-MNIST (two overlapping digits), built deterministically.

MNIST files (as torchvision downloads them)
-------------------------------------------
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or ``.gz``, in a folder (or torchvision's
``MNIST/raw/``). idx: big-endian ``int32`` magic (``0x803`` images, ``0x801`` labels), the
dimensions, then ``uint8`` data.

Multi-MNIST (:func:`build_multimnist`)
--------------------------------------
As Sener & Koltun (2018): image ``i`` of a split puts digit ``i`` (the *left* one) at the top
left of a ``canvas x canvas`` canvas and a digit ``j`` drawn by a seeded permutation (the *right*
one) ``shift`` pixels down and right, overlays them (pixel maximum) and resizes the canvas to
``size x size`` (bilinear). Tasks of Gama & Grassi: CL/CR classify the left/right digit, RL/RR
reconstruct it: ``recon_left`` / ``recon_right`` are the same canvas with that digit alone.

Written as ``<out>/{train,test}/{image,recon_left,recon_right}.npy`` ``(N, 1, size, size)``
uint8, ``{label_left,label_right}.npy`` ``(N,)`` uint8, and ``multimnist.json``. ``train`` comes
from the MNIST train files, ``test`` from t10k; :func:`multimnist_splits` holds out a
validation set from ``train`` as the main experiment does.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtl_paradigms.data.mtan import DatasetError, holdout_indices
from mtl_paradigms.data.npyfile import load_npy
from mtl_paradigms.io import atomic_directory, write_json

logger = logging.getLogger(__name__)

MNIST_STEMS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
RAW_FILES: tuple[str, ...] = tuple(f"{s}.gz" for pair in MNIST_STEMS.values() for s in pair)
IMAGE_MAGIC, LABEL_MAGIC = 0x803, 0x801
META_FILE = "multimnist.json"
ARRAYS: tuple[str, ...] = ("image", "recon_left", "recon_right", "label_left", "label_right")
TASKS: tuple[str, ...] = ("CL", "CR", "RL", "RR")
_REPAIR = (
    "the file is damaged or incomplete (an interrupted write or copy): delete the Multi-MNIST "
    "folder and run mtlp build-multimnist again"
)


# --------------------------------------------------------------------------------------------
# idx files
# --------------------------------------------------------------------------------------------


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Write a uint8 array as an idx file (gzipped, byte-reproducibly, if the name ends .gz)."""
    data = np.ascontiguousarray(array, dtype=np.uint8)
    magic = 0x800 | data.ndim
    payload = struct.pack(f">i{data.ndim}i", magic, *data.shape) + data.tobytes()
    p = Path(path)
    if p.suffix == ".gz":
        with open(p, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(payload)
    else:
        p.write_bytes(payload)
    return p


def read_idx(path: str | os.PathLike[str], magic: int) -> np.ndarray:
    """The uint8 array of an idx file (plain or .gz); :class:`DatasetError` names a bad file."""
    p = Path(path)
    try:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise DatasetError(f"{p}: cannot be read ({err})") from err
    if len(data) < 8:
        raise DatasetError(f"{p}: too short for an idx header")
    (got,) = struct.unpack(">i", data[:4])
    if got != magic:
        raise DatasetError(f"{p}: idx magic {got:#x}, expected {magic:#x}")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(shape)):
        raise DatasetError(
            f"{p}: header announces shape {shape} ({int(np.prod(shape))} bytes), found "
            f"{len(body)} bytes (truncated?)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def find_mnist_file(root: Path, stem: str) -> Path:
    for folder in (root, root / "MNIST" / "raw", root / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise DatasetError(f"{root}: {stem}.gz (or {stem}) is missing; expected {list(RAW_FILES)}")


def read_mnist(root: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28), labels (N,))`` of the MNIST ``train`` or ``test`` files."""
    if split not in MNIST_STEMS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(root)
    image_stem, label_stem = MNIST_STEMS[split]
    image_path = find_mnist_file(base, image_stem)
    label_path = find_mnist_file(base, label_stem)
    images = read_idx(image_path, IMAGE_MAGIC)
    labels = read_idx(label_path, LABEL_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{image_path}: {images.shape[0]} images but {label_path} has {labels.shape[0]} labels"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{label_path}: labels must be digits 0..9, found {labels.max()}")
    return images, labels


# --------------------------------------------------------------------------------------------
# Multi-MNIST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MultiMNISTSettings:
    """Canvas, shift of the right digit, output size and the pairing seed."""

    canvas: int = 36
    shift: int = 8
    size: int = 28
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shift < 0 or self.size < 8 or self.canvas < 8:
            raise ValueError(f"invalid Multi-MNIST geometry {self}")


def _place(digits: np.ndarray, canvas: int, offset: int) -> np.ndarray:
    n, h, w = digits.shape
    if offset + h > canvas or offset + w > canvas:
        raise ValueError(f"a {h}x{w} digit shifted by {offset} does not fit a {canvas} canvas")
    out = np.zeros((n, canvas, canvas), dtype=np.uint8)
    out[:, offset : offset + h, offset : offset + w] = digits
    return out


def _resize(canvas: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(canvas.astype(np.float32))[:, None]
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


def make_multimnist(
    images: np.ndarray, labels: np.ndarray, settings: MultiMNISTSettings, split: str
) -> dict[str, np.ndarray]:
    """The Multi-MNIST arrays of one split (see the module doc)."""
    code = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, code]))
    partner = rng.permutation(len(images))
    left = _place(images, settings.canvas, 0)
    right = _place(images[partner], settings.canvas, settings.shift)
    return {
        "image": _resize(np.maximum(left, right), settings.size),
        "recon_left": _resize(left, settings.size),
        "recon_right": _resize(right, settings.size),
        "label_left": labels.astype(np.uint8),
        "label_right": labels[partner].astype(np.uint8),
    }


def build_multimnist(
    mnist_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    settings: MultiMNISTSettings = MultiMNISTSettings(),
) -> Path:
    """Read the MNIST files under ``mnist_dir`` and write Multi-MNIST to ``out_dir`` (atomic)."""
    sources = {split: read_mnist(mnist_dir, split) for split in MNIST_STEMS}
    with atomic_directory(out_dir) as tmp:
        counts = {}
        for split, (images, labels) in sources.items():
            (tmp / split).mkdir()
            arrays = make_multimnist(images, labels, settings, split)
            for name, array in arrays.items():
                np.save(tmp / split / f"{name}.npy", array, allow_pickle=False)
            counts[split] = len(images)
        write_json(
            tmp / META_FILE,
            {
                "canvas": settings.canvas,
                "shift": settings.shift,
                "size": settings.size,
                "seed": settings.seed,
                "splits": counts,
                "tasks": {"CL": "label_left", "CR": "label_right", "RL": "recon_left",
                          "RR": "recon_right"},
                "source": str(mnist_dir),
            },
        )  # fmt: skip
    logger.info("built Multi-MNIST %s from %s: %s", out_dir, mnist_dir, counts)
    return Path(out_dir)


def load_multimnist(root: str | os.PathLike[str], split: str) -> dict[str, np.ndarray]:
    """The arrays of one split, checked against ``multimnist.json``; errors name the file."""
    base = Path(root)
    meta_path = base / META_FILE
    if not meta_path.is_file():
        raise DatasetError(f"{meta_path}: missing; {base} is not a Multi-MNIST folder")
    meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    n, size = int(meta["splits"][split]), int(meta["size"])
    expected = {
        "image": (n, 1, size, size),
        "recon_left": (n, 1, size, size),
        "recon_right": (n, 1, size, size),
        "label_left": (n,),
        "label_right": (n,),
    }
    out: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        path = base / split / f"{name}.npy"
        if not path.is_file():
            raise DatasetError(f"{path}: missing from the Multi-MNIST folder")
        array = load_npy(path, advice=_REPAIR)
        if array.shape != shape or array.dtype != np.uint8:
            raise DatasetError(f"{path}: expected {shape} uint8, got {array.shape} {array.dtype}")
        out[name] = array
    return out


def multimnist_splits(
    root: str | os.PathLike[str], val_size: int, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, val, test): ``val_size`` held out of ``train`` by a seeded permutation."""
    full = load_multimnist(root, "train")
    train_idx, val_idx = holdout_indices(len(full["image"]), val_size, seed)
    pick = lambda idx: {k: v[idx] for k, v in full.items()}  # noqa: E731
    return pick(train_idx), pick(val_idx), load_multimnist(root, "test")


def task_names() -> Sequence[str]:
    return TASKS
