"""A synthetic CelebA: procedural "faces" with binary attributes, in the official file layout.

Writes exactly what the real download gives (:mod:`mtl_paradigms.data.celeba`):
``img_align_celeba.zip`` (``img_align_celeba/<nnnnnn>.jpg``, 178 wide x 218 high, JPEG),
``list_attr_celeba.txt`` (count, names, ``-1``/``1`` table) and ``list_eval_partition.txt``
(0/1/2), so the same prepare step and loader serve both.

An image is a background, a face (ellipse) with hair, eyes and a mouth, and optional parts;
each attribute toggles one visual cue. The attributes differ in frequency (5 %-50 %) and in how
hard they are to see at 32-64 pixels (a large colour change vs a few dark pixels), and two are
correlated as in CelebA (``Mustache`` only on ``Male`` faces):

=====================  =========  ===========================================================
attribute              frequency  cue
=====================  =========  ===========================================================
Dark_Background        0.50       background brightness (easy)
Bright_Light           0.50       global illumination gain (easy, overlaps the above)
Red_Face               0.30       reddish skin tone (easy)
Large_Face             0.40       face 25 % larger (medium)
Male                   0.42       narrower jaw, thicker eyebrows (medium)
Smiling                0.45       mouth curved (ends up) instead of straight (medium, small)
Striped_Background     0.25       diagonal stripes in the background (medium)
Blond_Hair             0.15       yellow instead of dark hair (easy, rare)
Wearing_Hat            0.15       a hat band over the hair (easy, rare)
Eyeglasses             0.07       rings around the eyes (hard, rare)
Mustache               0.12·Male  a thin dark bar above the mouth (hard, rare)
Head_Turned            0.35       face shifted sideways, eyes off-centre (hard)
Noisy                  0.20       strong pixel noise (hard)
=====================  =========  ===========================================================

Deterministic: image ``i`` is drawn from ``SeedSequence([seed, i])``; the first ``train``
fraction of the files are partition 0, then validation (1), then test (2), like the official
numbering.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mtl_paradigms.data.celeba import ATTR_FILE, IMAGES_DIR, IMAGES_ZIP, PARTITION_FILE
from mtl_paradigms.io import atomic_directory
from mtl_paradigms.settings import SettingsError, from_mapping

logger = logging.getLogger(__name__)

WIDTH, HEIGHT = 178, 218  # the official aligned images
ZIP_DATE = (2015, 1, 1, 0, 0, 0)  # fixed member times: the same settings give the same bytes
#: attribute -> frequency (Mustache: probability given Male).
ATTRIBUTES: dict[str, float] = {
    "Dark_Background": 0.50,
    "Bright_Light": 0.50,
    "Red_Face": 0.30,
    "Large_Face": 0.40,
    "Male": 0.42,
    "Smiling": 0.45,
    "Striped_Background": 0.25,
    "Blond_Hair": 0.15,
    "Wearing_Hat": 0.15,
    "Eyeglasses": 0.07,
    "Mustache": 0.12 / 0.42,
    "Head_Turned": 0.35,
    "Noisy": 0.20,
}


@dataclass(frozen=True)
class SyntheticCelebASettings:
    """How many images, the split fractions, JPEG quality and the seed."""

    num_images: int = 1000
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    jpeg_quality: int = 90
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.num_images, bool) or self.num_images < 3:
            raise SettingsError(f"num_images must be an integer >= 3, got {self.num_images!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise SettingsError(f"{name} must lie in (0, 0.5), got {value!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise SettingsError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        if isinstance(self.seed, bool) or self.seed < 0:
            raise SettingsError(f"seed must be a non-negative integer, got {self.seed!r}")
        counts = self.split_counts()
        if min(counts) < 1:
            raise SettingsError(f"num_images {self.num_images} leaves an empty split {counts}")

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> SyntheticCelebASettings:
        return from_mapping(cls, data, where="celeba.synthetic")

    def split_counts(self) -> tuple[int, int, int]:
        val = round(self.num_images * self.val_fraction)
        test = round(self.num_images * self.test_fraction)
        return self.num_images - val - test, val, test


_GRID = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    out = {name: bool(rng.random() < p) for name, p in ATTRIBUTES.items()}
    out["Mustache"] = out["Mustache"] and out["Male"]
    return out


def render_face(attrs: dict[str, bool], rng: np.random.Generator) -> np.ndarray:
    """One ``HEIGHT x WIDTH x 3`` uint8 image showing ``attrs`` (see the module table)."""
    y, x = _GRID
    base = rng.uniform(0.15, 0.3) if attrs["Dark_Background"] else rng.uniform(0.6, 0.8)
    tint = rng.uniform(-0.08, 0.08, size=3)
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.float32)
    img[:] = base + tint
    if attrs["Striped_Background"]:
        period = rng.uniform(12, 20)
        stripes = (np.sin((x + y) * 2 * math.pi / period) > 0).astype(np.float32)
        img += (stripes * 0.25 - 0.12)[..., None]

    cx = WIDTH / 2 + rng.normal(0, 3) + (rng.choice([-1, 1]) * 18 if attrs["Head_Turned"] else 0)
    cy = HEIGHT * 0.55 + rng.normal(0, 3)
    scale = (1.25 if attrs["Large_Face"] else 1.0) * rng.uniform(0.95, 1.05)
    rx = (36 if attrs["Male"] else 42) * scale
    ry = 52 * scale

    def ellipse(ex: float, ey: float, ax: float, ay: float) -> np.ndarray:
        return ((x - ex) / ax) ** 2 + ((y - ey) / ay) ** 2 <= 1.0

    hair = ellipse(cx, cy - 0.35 * ry, rx * 1.12, ry * 0.85)
    hair_color = (
        np.array([0.9, 0.78, 0.3]) if attrs["Blond_Hair"] else np.array([0.2, 0.13, 0.08])
    ) + rng.normal(0, 0.04, 3)
    img[hair] = hair_color
    skin = np.array([0.85, 0.45, 0.4]) if attrs["Red_Face"] else np.array([0.87, 0.72, 0.6])
    skin = skin + rng.normal(0, 0.03, 3)
    face = ellipse(cx, cy, rx, ry)
    img[face] = skin
    if attrs["Wearing_Hat"]:
        band = (np.abs(y - (cy - 0.95 * ry)) < 0.25 * ry) & (np.abs(x - cx) < rx * 1.25)
        img[band] = np.array([0.1, 0.25, 0.6]) + rng.normal(0, 0.04, 3)

    eye_dx, eye_y = 0.4 * rx, cy - 0.2 * ry
    shift = 6.0 * scale if attrs["Head_Turned"] else 0.0
    for side in (-1, 1):
        ex = cx + side * eye_dx + shift
        img[ellipse(ex, eye_y, 4 * scale, 3 * scale)] = 0.08
        brow = (np.abs(y - (eye_y - 9 * scale)) < (2.5 if attrs["Male"] else 1.2) * scale) & (
            np.abs(x - ex) < 8 * scale
        )
        img[brow] = hair_color * 0.6
        if attrs["Eyeglasses"]:
            r = np.hypot(x - ex, y - eye_y)
            img[(r > 9 * scale) & (r < 11 * scale)] = 0.05
    mouth_y, half = cy + 0.5 * ry, 0.35 * rx
    dx = (x - cx - shift) / half
    curve = mouth_y + (6 * scale * (1 - dx**2) - 3 * scale if attrs["Smiling"] else 0.0)
    mouth = (np.abs(dx) <= 1) & (np.abs(y - curve) < 1.8 * scale)
    img[mouth] = np.array([0.55, 0.12, 0.15])
    if attrs["Mustache"]:
        bar = (np.abs(y - (mouth_y - 7 * scale)) < 1.6 * scale) & (np.abs(dx) <= 0.8)
        img[bar] = 0.1

    img *= rng.uniform(1.15, 1.3) if attrs["Bright_Light"] else rng.uniform(0.8, 0.95)
    sigma = 0.12 if attrs["Noisy"] else 0.02
    img += sigma * rng.standard_normal(size=img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def file_name(index: int) -> str:
    """The official naming: ``000001.jpg`` for index 0."""
    return f"{index + 1:06d}.jpg"


def write_synthetic_celeba(
    settings: SyntheticCelebASettings,
    out_dir: str | os.PathLike[str],
    progress: bool = False,
) -> Path:
    """Write the three official files into the new folder ``out_dir`` (atomically)."""
    from PIL import Image

    started = time.perf_counter()
    names = list(ATTRIBUTES)
    train, val, _ = settings.split_counts()
    rows: list[str] = []
    partition: list[str] = []
    with atomic_directory(out_dir) as tmp:
        with zipfile.ZipFile(tmp / IMAGES_ZIP, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(zipfile.ZipInfo(f"{IMAGES_DIR}/", ZIP_DATE), b"")
            bar = tqdm(range(settings.num_images), desc="synthetic celeba", disable=not progress)
            for i in bar:
                rng = np.random.default_rng(np.random.SeedSequence([settings.seed, i]))
                attrs = sample_attributes(rng)
                buffer = io.BytesIO()
                Image.fromarray(render_face(attrs, rng)).save(
                    buffer, format="JPEG", quality=settings.jpeg_quality
                )
                info = zipfile.ZipInfo(f"{IMAGES_DIR}/{file_name(i)}", ZIP_DATE)
                zf.writestr(info, buffer.getvalue())
                values = " ".join(f"{1 if attrs[n] else -1:2d}" for n in names)
                rows.append(f"{file_name(i)} {values}")
                part = 0 if i < train else 1 if i < train + val else 2
                partition.append(f"{file_name(i)} {part}")
        header = " ".join(names) + " "
        text = f"{settings.num_images}\n{header}\n" + "\n".join(rows) + "\n"
        (tmp / ATTR_FILE).write_text(text, encoding="utf-8")
        (tmp / PARTITION_FILE).write_text("\n".join(partition) + "\n", encoding="utf-8")
    logger.info(
        "wrote %d synthetic CelebA-format images (%d attributes) to %s in %.1f s",
        settings.num_images, len(names), out_dir, time.perf_counter() - started,
    )  # fmt: skip
    return Path(out_dir)
