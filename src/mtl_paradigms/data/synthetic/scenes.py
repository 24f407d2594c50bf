"""Procedural 3-D scenes rendered by ray casting, written in the exact MTAN on-disk format.

Stand-ins for NYUv2 (a room) and Cityscapes (a street) that :func:`~mtl_paradigms.data.mtan.
load_mtan` reads like the real data, so every experiment runs end to end without the downloads.

Frames and units
----------------
* World: x right, y up, z forward (horizontal), metres; the ground is the plane ``y = 0``.
* Camera (OpenCV): x right (image columns), y down (image rows), z forward (optical axis).
  Pinhole with square pixels; pixel ``(row v, column u)`` looks along
  ``R @ [(u + 0.5 - W/2)/f, (v + 0.5 - H/2)/f, 1]`` where ``R`` is the camera-to-world rotation
  and ``f`` the focal length in pixels. Pose: height above the ground, pitch (positive = looking
  down), yaw (about world y), all jittered per image; no roll.
* ``depth`` (NYUv2): metres along the optical axis (camera z), ``0`` = invalid.
  ``depth`` (Cityscapes): disparity-like ``DISPARITY_CONSTANT / z`` (``z`` in metres along the
  optical axis; the constant 1.5 m plays baseline·focal, so 3 m → 0.5, 100 m → 0.015; valid
  pixels have median ≈0.09 and 99th percentile ≈0.5), ``0`` = invalid (sky).
* ``normal`` (NYUv2 only): unit vectors in camera coordinates, pointing toward the camera's side
  of the surface; ``0`` = invalid.
* ``image``: RGB in [0, 1]: albedo (per-surface colour × procedural texture) × Lambertian
  shading (ambient + one random directional light + a weak light at the camera), scaled by an
  auto-exposure (99th percentile of the clean image → 0.8–0.95), plus Gaussian noise
  (``noise_std``), clipped. No shadows, no interreflections.

Labels
------
Structural surfaces come first (NYUv2: 0 floor, 1 wall, 2 ceiling; Cityscapes: 0 road,
1 sidewalk incl. curbs, 2 building incl. the far facade), then ``num_classes - 3`` object
categories: category ``k`` is primitive type ``k % 3`` (sphere, box, vertical cylinder) in colour
family ``k // 3`` (a band of hues), so a class is recognisable from shape and hue.
``-1`` = ignore: the sky (Cityscapes) and a 1-pixel band along label boundaries (NYUv2, like the
unlabelled gaps of the real annotation). NYUv2 depth and normals are also invalid where the
surface is seen at a grazing angle (> 85°) and in 0–2 random elliptical "sensor holes".
Cityscapes also gets a finer labelling ``label_19`` (19 ids): coarse class ``c`` owns a
contiguous block of fine ids, and a surface's fine id within the block is its texture kind
(plain, stripes, checker, noise) modulo the block size; ``synthetic.json`` records the map.

Determinism: image ``index`` of ``split`` is drawn from its own stream
``SeedSequence([seed, dataset, split, index])``, so the same settings give byte-identical files
and changing ``num_train`` / ``num_val`` leaves the other images unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from mtl_paradigms.io import write_json
from mtl_paradigms.settings import SettingsError, from_mapping

logger = logging.getLogger(__name__)

SyntheticDataset = Literal["nyuv2", "cityscapes"]

DATASET_CODES: dict[str, int] = {"nyuv2": 0, "cityscapes": 1}
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1}
STRUCTURAL_CLASSES: dict[str, tuple[str, ...]] = {
    "nyuv2": ("floor", "wall", "ceiling"),
    "cityscapes": ("road", "sidewalk", "building"),
}
DEFAULT_NUM_CLASSES: dict[str, int] = {"nyuv2": 13, "cityscapes": 7}
PRIMITIVES: tuple[str, ...] = ("sphere", "box", "cylinder")
TEXTURES: tuple[str, ...] = ("plain", "stripes", "checker", "noise")
FINE_CLASSES = 19
MAX_CLASSES = 64
DISPARITY_CONSTANT = 1.5
HORIZONTAL_FOV_DEG: dict[str, float] = {"nyuv2": 60.0, "cityscapes": 50.0}
FILL_LIGHT = 0.3  # weight of a light at the camera (no surface facing the camera is black)
GRAZING_COS = math.cos(math.radians(85.0))
FORMAT_VERSION = 1
CHUNK = 16  # images per parallel work item
PARALLEL_MIN_PIXELS = 20_000_000  # below this many pixels in total, generate serially
META_FILE = "synthetic.json"
_EPS_T = 1e-9
_EDGE = 1e-6  # metres by which rectangles are widened so that no ray slips between them


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSettings:
    """What to generate. ``num_classes=None`` means 13 (NYUv2) / 7 (Cityscapes)."""

    dataset: SyntheticDataset = "nyuv2"
    num_train: int = 240
    num_val: int = 80
    height: int = 48
    width: int = 64
    num_classes: int | None = None
    max_objects: int = 6
    noise_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_CODES:
            raise SettingsError(
                f"dataset must be one of {list(DATASET_CODES)}, got {self.dataset!r}"
            )
        for name, low in (("num_train", 1), ("num_val", 1), ("height", 8), ("width", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingsError(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int):
            raise SettingsError(f"max_objects must be an integer, got {self.max_objects!r}")
        if not 0 <= self.max_objects <= 64:
            raise SettingsError(f"max_objects must lie in [0, 64], got {self.max_objects}")
        if not (
            isinstance(self.noise_std, int | float)
            and math.isfinite(self.noise_std)
            and self.noise_std >= 0
        ):
            raise SettingsError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise SettingsError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.num_classes is not None:
            low = len(STRUCTURAL_CLASSES[self.dataset]) + 1
            high = FINE_CLASSES if self.dataset == "cityscapes" else MAX_CLASSES
            if (
                isinstance(self.num_classes, bool)
                or not isinstance(self.num_classes, int)
                or not low <= self.num_classes <= high
            ):
                raise SettingsError(
                    f"num_classes must be null or an integer in [{low}, {high}] for "
                    f"{self.dataset}, got {self.num_classes!r}"
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> SyntheticSettings:
        """Build from a plain mapping (YAML/JSON), rejecting unknown keys and wrong types."""
        return from_mapping(cls, data, where="synthetic")

    @property
    def classes(self) -> int:
        """The resolved number of (coarse) segmentation classes."""
        if self.num_classes is None:
            return DEFAULT_NUM_CLASSES[self.dataset]
        return self.num_classes

    @property
    def label_folders(self) -> tuple[str, ...]:
        return ("label",) if self.dataset == "nyuv2" else ("label_7", "label_19")

    @property
    def folders(self) -> tuple[str, ...]:
        if self.dataset == "nyuv2":
            return ("image", "label", "depth", "normal")
        return ("image", "label_7", "label_19", "depth")

    def split_size(self, split: str) -> int:
        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
        return self.num_train if split == "train" else self.num_val


# --------------------------------------------------------------------------------------------
# Class bookkeeping
# --------------------------------------------------------------------------------------------


def num_families(settings: SyntheticSettings) -> int:
    """Colour families needed for ``classes - 3`` object categories of 3 primitive types."""
    categories = settings.classes - len(STRUCTURAL_CLASSES[settings.dataset])
    return math.ceil(categories / len(PRIMITIVES))


def class_names(settings: SyntheticSettings) -> list[str]:
    """Names of the coarse classes, indexed by label id."""
    structural = list(STRUCTURAL_CLASSES[settings.dataset])
    categories = settings.classes - len(structural)
    objects = [
        f"{PRIMITIVES[k % len(PRIMITIVES)]}-hue{k // len(PRIMITIVES)}" for k in range(categories)
    ]
    return structural + objects


def fine_blocks(num_coarse: int) -> list[int]:
    """Number of fine (``label_19``) ids owned by each coarse class: 19 spread evenly."""
    base, extra = divmod(FINE_CLASSES, num_coarse)
    return [base + (1 if c < extra else 0) for c in range(num_coarse)]


def fine_to_coarse(num_coarse: int) -> list[int]:
    """Coarse class of each fine id (length 19)."""
    return [c for c, size in enumerate(fine_blocks(num_coarse)) for _ in range(size)]


def fine_label(coarse: int, texture: int, num_coarse: int) -> int:
    """Fine id of a surface of class ``coarse`` with texture kind ``texture``."""
    blocks = fine_blocks(num_coarse)
    return sum(blocks[:coarse]) + texture % blocks[coarse]


# --------------------------------------------------------------------------------------------
# Camera and shapes (rays are (3, N) arrays of world directions; t is the camera-z depth)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """Pinhole camera; ``rotation`` maps camera to world coordinates (columns: camera axes)."""

    height: int
    width: int
    focal: float
    position: np.ndarray
    rotation: np.ndarray

    def pixel_rays(self) -> np.ndarray:
        """(3, H*W) camera-frame rays ``[x, y, 1]`` of the pixel centres, row-major."""
        v, u = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
        x = (u.ravel() + 0.5 - self.width / 2) / self.focal
        y = (v.ravel() + 0.5 - self.height / 2) / self.focal
        return np.stack([x, y, np.ones_like(x)])

    def world_rays(self) -> np.ndarray:
        """(3, H*W) world directions; a hit at ``position + t * ray`` has camera depth ``t``."""
        return self.rotation @ self.pixel_rays()


def camera_rotation(pitch: float, yaw: float) -> np.ndarray:
    """Camera-to-world rotation for ``pitch`` (down, rad) then ``yaw`` (about world y, rad)."""
    flip_y = np.diag([1.0, -1.0, 1.0])  # camera y points down, world y up
    cp, sp = math.cos(pitch), math.sin(pitch)
    cy, sy = math.cos(yaw), math.sin(yaw)
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return r_yaw @ r_pitch @ flip_y


def _solve(numerator: np.ndarray | float, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(numerator / denominator)


@dataclass(frozen=True)
class Rect:
    """Axis-aligned rectangle ``p[axis] = coord``, ``lo <= p[other axes] <= hi``."""

    axis: int
    coord: float
    lo: tuple[float, float]
    hi: tuple[float, float]

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, None]:
        t = _solve(self.coord - o[self.axis], d[self.axis])
        hit = t > _EPS_T
        for a, lo, hi in zip(self._others(), self.lo, self.hi, strict=True):
            with np.errstate(invalid="ignore"):
                pa = o[a] + t * d[a]
            hit &= (pa >= lo - _EDGE) & (pa <= hi + _EDGE)
        return np.where(hit, t, np.inf), None

    def normal(self, p: np.ndarray, face: np.ndarray, d: np.ndarray, o: np.ndarray) -> np.ndarray:
        n = np.zeros_like(p)
        n[self.axis] = 1.0 if o[self.axis] > self.coord else -1.0
        return n

    def _others(self) -> tuple[int, int]:
        a, b = (i for i in range(3) if i != self.axis)
        return a, b


@dataclass(frozen=True)
class Box:
    """Axis-aligned box ``lo <= p <= hi`` (seen from outside)."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.lo)[:, None]
        hi = np.asarray(self.hi)[:, None]
        t1 = _solve(lo - o[:, None], d)
        t2 = _solve(hi - o[:, None], d)
        near = np.minimum(t1, t2)
        far = np.maximum(t1, t2)
        t_near = near.max(axis=0)
        t_far = far.min(axis=0)
        face = near.argmax(axis=0)
        hit = (t_near <= t_far) & (t_near > _EPS_T)
        return np.where(hit, t_near, np.inf), face

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.lo), np.asarray(self.hi)

    def normal(self, p: np.ndarray, face: np.ndarray, d: np.ndarray, o: np.ndarray) -> np.ndarray:
        n = np.zeros_like(p)
        cols = np.arange(p.shape[1])
        n[face, cols] = -np.sign(d[face, cols])
        return n


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center)
        return c - self.radius, c + self.radius

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, None]:
        oc = o - np.asarray(self.center)
        a = (d * d).sum(axis=0)
        b = oc @ d
        c = oc @ oc - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        hit = (disc >= 0) & (t > _EPS_T)
        return np.where(hit, t, np.inf), None

    def normal(self, p: np.ndarray, face: np.ndarray, d: np.ndarray, o: np.ndarray) -> np.ndarray:
        n = p - np.asarray(self.center)[:, None]
        return n / np.linalg.norm(n, axis=0, keepdims=True)


@dataclass(frozen=True)
class Cylinder:
    """Vertical cylinder: axis through ``(x, z)``, ``bottom <= y <= top``. Faces: 0 side, 1 top,
    2 bottom."""

    x: float
    z: float
    radius: float
    bottom: float
    top: float

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius
        return (
            np.array([self.x - r, self.bottom, self.z - r]),
            np.array([self.x + r, self.top, self.z + r]),
        )

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ox, oz = o[0] - self.x, o[2] - self.z
        a = d[0] ** 2 + d[2] ** 2
        b = d[0] * ox + d[2] * oz
        c = ox * ox + oz * oz - self.radius**2
        disc = b * b - a * c
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            y_side = o[1] + t_side * d[1]
        side = (disc >= 0) & (t_side > _EPS_T) & (y_side >= self.bottom) & (y_side <= self.top)
        candidates = [np.where(side, t_side, np.inf)]
        for cap in (self.top, self.bottom):
            t = _solve(cap - o[1], d[1])
            with np.errstate(invalid="ignore"):
                rx, rz = ox + t * d[0], oz + t * d[2]
            ok = (t > _EPS_T) & (rx * rx + rz * rz <= self.radius**2)
            candidates.append(np.where(ok, t, np.inf))
        stacked = np.stack(candidates)
        face = stacked.argmin(axis=0)
        return stacked.min(axis=0), face

    def normal(self, p: np.ndarray, face: np.ndarray, d: np.ndarray, o: np.ndarray) -> np.ndarray:
        n = np.zeros_like(p)
        n[0] = (p[0] - self.x) / self.radius
        n[2] = (p[2] - self.z) / self.radius
        n[:, face == 1] = np.array([[0.0], [1.0], [0.0]])
        n[:, face == 2] = np.array([[0.0], [-1.0], [0.0]])
        side = face == 0
        n[:, side] /= np.linalg.norm(n[:, side], axis=0, keepdims=True)
        return n


Shape = Rect | Box | Sphere | Cylinder


# --------------------------------------------------------------------------------------------
# Materials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """Albedo ``color * (1 - amplitude * pattern(p))`` with a solid (3-D) procedural texture."""

    color: np.ndarray
    texture: int
    scale: float
    amplitude: float
    directions: np.ndarray  # (3, 3): unit directions of the stripe / noise waves
    phases: np.ndarray  # (3,)
    offset: np.ndarray  # (3,)

    def albedo(self, p: np.ndarray) -> np.ndarray:
        """(3, M) albedo at world points ``p`` (3, M)."""
        kind = TEXTURES[self.texture]
        if kind == "plain":
            pattern = np.zeros(p.shape[1])
        elif kind == "stripes":
            wave = np.sin(2 * np.pi * (self.directions[0] @ p) / self.scale + self.phases[0])
            pattern = (wave > 0).astype(np.float64)
        elif kind == "checker":
            cells = np.floor((p + self.offset[:, None]) / self.scale).sum(axis=0)
            pattern = np.mod(cells, 2.0)
        else:  # smooth noise: a sum of three plane waves
            waves = np.sin(2 * np.pi * (self.directions @ p) / self.scale + self.phases[:, None])
            pattern = 0.5 + waves.sum(axis=0) / 6.0
        return self.color[:, None] * (1.0 - self.amplitude * pattern)[None, :]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = math.floor(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array(
        [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float64
    )


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, 3))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _material(
    rng: np.random.Generator, color: np.ndarray, scale_range: tuple[float, float]
) -> Material:
    return Material(
        color=color,
        texture=int(rng.integers(len(TEXTURES))),
        scale=float(rng.uniform(*scale_range)),
        amplitude=float(rng.uniform(0.25, 0.6)),
        directions=_unit(rng, 3),
        phases=rng.uniform(0, 2 * np.pi, size=3),
        offset=rng.uniform(0, 10, size=3),
    )


def _structural_color(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Muted colours (low saturation) for walls, floors, roads, ...; objects are saturated."""
    ranges = {
        "floor": ((0.04, 0.12), (0.25, 0.55), (0.35, 0.7)),
        "wall": ((0.0, 1.0), (0.0, 0.2), (0.6, 0.9)),
        "ceiling": ((0.0, 1.0), (0.0, 0.05), (0.8, 0.95)),
        "road": ((0.0, 1.0), (0.0, 0.06), (0.22, 0.4)),
        "sidewalk": ((0.0, 1.0), (0.0, 0.1), (0.5, 0.68)),
        "building": ((0.0, 1.0), (0.08, 0.35), (0.4, 0.8)),
    }[kind]
    return _hsv_to_rgb(*(float(rng.uniform(*r)) for r in ranges))


def _object_color(rng: np.random.Generator, family: int, families: int) -> np.ndarray:
    """Saturated colour with hue inside band ``family`` of ``families`` (80 % of the band)."""
    hue = (family + 0.1 + 0.8 * rng.uniform()) / families
    return _hsv_to_rgb(hue % 1.0, float(rng.uniform(0.55, 0.9)), float(rng.uniform(0.45, 0.9)))


# --------------------------------------------------------------------------------------------
# Scene layouts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surface:
    """A shape with its coarse label, fine (``label_19``) label, kind and material.

    ``fine`` equals ``label`` for NYUv2, which has no finer labelling.
    """

    kind: str
    shape: Shape
    label: int
    fine: int
    material: Material


@dataclass(frozen=True)
class Scene:
    """A rendered scene: the arrays as written to disk plus what produced them."""

    arrays: dict[str, np.ndarray]
    camera: Camera
    surfaces: tuple[Surface, ...]
    surface_ids: np.ndarray  # (H, W) index into surfaces, -1 = nothing hit (sky)
    light: np.ndarray  # (3,) unit direction toward the light, world frame


def _make_camera(
    settings: SyntheticSettings, position: np.ndarray, pitch: float, yaw: float
) -> Camera:
    fov = math.radians(HORIZONTAL_FOV_DEG[settings.dataset])
    focal = (settings.width / 2) / math.tan(fov / 2)
    return Camera(settings.height, settings.width, focal, position, camera_rotation(pitch, yaw))


def _surface(
    settings: SyntheticSettings,
    kind: str,
    shape: Shape,
    label: int,
    material: Material,
) -> Surface:
    fine = label
    if settings.dataset == "cityscapes":
        fine = fine_label(label, material.texture, settings.classes)
    return Surface(kind, shape, label, fine, material)


def _room(settings: SyntheticSettings, rng: np.random.Generator) -> tuple[Camera, list[Surface]]:
    """A closed box room around the camera: floor, four walls, ceiling (NYUv2 stand-in)."""
    half_w = rng.uniform(1.8, 3.5)
    back, front = rng.uniform(4.0, 8.0), -rng.uniform(0.5, 1.5)
    ceiling = rng.uniform(2.5, 3.2)
    cam = np.array([rng.uniform(-0.4, 0.4) * half_w, rng.uniform(1.0, 1.7), 0.0])
    pitch, yaw = math.radians(rng.uniform(-5, 25)), math.radians(rng.uniform(-25, 25))
    camera = _make_camera(settings, cam, pitch, yaw)
    floor_id, wall_id, ceiling_id = 0, 1, 2
    tex = (0.15, 0.6)
    wall_color = _structural_color(rng, "wall")
    x_span, y_span, z_span = (-half_w, half_w), (0.0, ceiling), (front, back)
    rects = [
        ("floor", Rect(1, 0.0, (x_span[0], z_span[0]), (x_span[1], z_span[1])), floor_id),
        ("ceiling", Rect(1, ceiling, (x_span[0], z_span[0]), (x_span[1], z_span[1])), ceiling_id),
        ("wall", Rect(0, -half_w, (y_span[0], z_span[0]), (y_span[1], z_span[1])), wall_id),
        ("wall", Rect(0, half_w, (y_span[0], z_span[0]), (y_span[1], z_span[1])), wall_id),
        ("wall", Rect(2, back, (x_span[0], y_span[0]), (x_span[1], y_span[1])), wall_id),
        ("wall", Rect(2, front, (x_span[0], y_span[0]), (x_span[1], y_span[1])), wall_id),
    ]
    surfaces = []
    for kind, rect, label in rects:
        # Walls share a base colour, varied slightly per wall.
        base = wall_color if kind == "wall" else _structural_color(rng, kind)
        color = np.clip(base * rng.uniform(0.9, 1.1), 0, 1) if kind == "wall" else base
        surfaces.append(_surface(settings, kind, rect, label, _material(rng, color, tex)))
    for category in _object_categories(settings, rng):
        surfaces.append(_room_object(settings, rng, category, camera, half_w, back))
    return camera, surfaces


def _object_categories(settings: SyntheticSettings, rng: np.random.Generator) -> list[int]:
    categories = settings.classes - len(STRUCTURAL_CLASSES[settings.dataset])
    low = (settings.max_objects + 1) // 2
    count = int(rng.integers(low, settings.max_objects + 1))
    return [int(k) for k in rng.integers(categories, size=count)]


def _in_view(
    rng: np.random.Generator, camera: Camera, near: float, far: float
) -> tuple[float, float]:
    """Ground position (x, z) in front of the camera within ~80 % of its horizontal view."""
    forward = camera.rotation[:, 2]
    yaw = math.atan2(forward[0], forward[2])
    half_fov = math.atan(camera.width / 2 / camera.focal)
    angle = yaw + rng.uniform(-0.8, 0.8) * half_fov
    dist = rng.uniform(near, far)
    return camera.position[0] + dist * math.sin(angle), camera.position[2] + dist * math.cos(angle)


def _object_identity(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    category: int,
    scale_range: tuple[float, float],
) -> tuple[str, int, Material]:
    """Object category ``k``: shape ``k % 3``, class id after the structural classes, a colour
    from hue band ``k // 3`` and a material whose texture scale is drawn from ``scale_range``."""
    kind = PRIMITIVES[category % len(PRIMITIVES)]
    label = len(STRUCTURAL_CLASSES[settings.dataset]) + category
    color = _object_color(rng, category // len(PRIMITIVES), num_families(settings))
    return kind, label, _material(rng, color, scale_range)


def _room_object(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    category: int,
    camera: Camera,
    half_w: float,
    back: float,
) -> Surface:
    kind, label, material = _object_identity(settings, rng, category, (0.05, 0.25))
    x, z = _in_view(rng, camera, 1.6, back)
    shape: Shape
    if kind == "sphere":
        r = rng.uniform(0.15, 0.5)
        x, z = _clamp_xz(x, z, r, half_w, back)
        shape = Sphere((x, r, z), r)
    elif kind == "box":
        hx, hz, height = rng.uniform(0.15, 0.6), rng.uniform(0.15, 0.6), rng.uniform(0.2, 1.2)
        x, z = _clamp_xz(x, z, max(hx, hz), half_w, back)
        shape = Box((x - hx, 0.0, z - hz), (x + hx, height, z + hz))
    else:
        r, height = rng.uniform(0.1, 0.4), rng.uniform(0.3, 1.5)
        x, z = _clamp_xz(x, z, r, half_w, back)
        shape = Cylinder(x, z, r, 0.0, height)
    return _surface(settings, kind, shape, label, material)


def _clamp_xz(x: float, z: float, size: float, half_w: float, back: float) -> tuple[float, float]:
    margin = size + 0.02
    return (
        float(np.clip(x, -half_w + margin, half_w - margin)),
        float(np.clip(z, 1.0 + margin, back - margin)),
    )


def _street(settings: SyntheticSettings, rng: np.random.Generator) -> tuple[Camera, list[Surface]]:
    """A straight street: road, raised sidewalks with curbs, facades, a far facade, sky."""
    road, walk, curb = rng.uniform(3.5, 7.0), rng.uniform(2.0, 4.0), rng.uniform(0.1, 0.2)
    facade = road + walk
    far = rng.uniform(60.0, 150.0)
    near = -5.0
    cam = np.array([rng.uniform(-0.6, 0.6) * road, rng.uniform(1.2, 1.7), 0.0])
    pitch, yaw = math.radians(rng.uniform(-3, 4)), math.radians(rng.uniform(-8, 8))
    camera = _make_camera(settings, cam, pitch, yaw)
    tex = (0.4, 2.5)
    surfaces = [
        _surface(
            settings,
            "road",
            Rect(1, 0.0, (-road, near), (road, far)),
            0,
            _material(rng, _structural_color(rng, "road"), tex),
        )
    ]
    walk_material = _material(rng, _structural_color(rng, "sidewalk"), tex)
    for side in (-1.0, 1.0):
        lo_x, hi_x = sorted((side * road, side * facade))
        surfaces.append(
            _surface(
                settings, "sidewalk", Rect(1, curb, (lo_x, near), (hi_x, far)), 1, walk_material
            )
        )
        surfaces.append(
            _surface(
                settings, "curb", Rect(0, side * road, (0.0, near), (curb, far)), 1, walk_material
            )
        )
        z = near
        while z < far:
            length = rng.uniform(8.0, 25.0)
            height = rng.uniform(3.0, 14.0)
            end = min(z + length, far)
            material = _material(rng, _structural_color(rng, "building"), tex)
            rect = Rect(0, side * facade, (0.0, z), (height, end))
            surfaces.append(_surface(settings, "building", rect, 2, material))
            z = end
    far_wall = Rect(2, far, (-facade - 60.0, 0.0), (facade + 60.0, rng.uniform(3.0, 15.0)))
    surfaces.append(
        _surface(
            settings,
            "building",
            far_wall,
            2,
            _material(rng, _structural_color(rng, "building"), tex),
        )
    )
    for category in _object_categories(settings, rng):
        surfaces.append(_street_object(settings, rng, category, road, facade, curb))
    return camera, surfaces


def _street_object(
    settings: SyntheticSettings,
    rng: np.random.Generator,
    category: int,
    road: float,
    facade: float,
    curb: float,
) -> Surface:
    """Boxes stand on the road (vehicles), spheres and cylinders on the sidewalks."""
    kind, label, material = _object_identity(settings, rng, category, (0.1, 0.6))
    z = rng.uniform(5.0, 45.0)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    shape: Shape
    if kind == "box":
        hx, hz, height = rng.uniform(0.8, 1.0), rng.uniform(1.8, 2.4), rng.uniform(1.3, 1.8)
        x = rng.uniform(-road + hx + 0.2, road - hx - 0.2)
        shape = Box((x - hx, 0.0, z - hz), (x + hx, height, z + hz))
    elif kind == "sphere":
        r = rng.uniform(0.4, 1.3)
        x = side * rng.uniform(road + 0.1, facade - 0.1)
        shape = Sphere((x, curb + r, z), r)
    else:
        r, height = rng.uniform(0.1, 0.35), rng.uniform(1.5, 6.0)
        x = side * rng.uniform(road + r + 0.05, facade - r - 0.05)
        shape = Cylinder(x, z, r, curb, curb + height)
    return _surface(settings, kind, shape, label, material)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def screen_window(camera: Camera, shape: Shape) -> tuple[int, int, int, int] | None:
    """Pixel window ``(v0, v1, u0, u1)`` (half-open) containing the image of ``shape``.

    The projection of the shape's axis-aligned bounding box's corners bounds its image (a convex
    hull projects inside the hull of the projected corners). ``None`` means "test every pixel":
    a shape without bounds (a rectangle) or with a corner at or behind the camera plane.
    """
    if isinstance(shape, Rect):
        return None
    lo, hi = shape.bounds()
    corners = np.array(np.meshgrid(*zip(lo, hi, strict=True), indexing="ij")).reshape(3, -1)
    cam = camera.rotation.T @ (corners - camera.position[:, None])
    if np.any(cam[2] <= 1e-3):
        return None
    u = cam[0] / cam[2] * camera.focal + camera.width / 2
    v = cam[1] / cam[2] * camera.focal + camera.height / 2
    u0 = max(math.floor(u.min()) - 1, 0)
    u1 = min(math.ceil(u.max()) + 1, camera.width)
    v0 = max(math.floor(v.min()) - 1, 0)
    v1 = min(math.ceil(v.max()) + 1, camera.height)
    return v0, max(v1, v0), u0, max(u1, u0)


def _cast(camera: Camera, rays: np.ndarray, surfaces: list[Surface]) -> tuple[np.ndarray, ...]:
    """Nearest hit per ray: (t, surface index or -1, face).

    Bounded shapes are only tested on the pixels of their :func:`screen_window`.
    """
    n = rays.shape[1]
    origin = camera.position
    best = np.full(n, np.inf)
    ids = np.full(n, -1, dtype=np.int64)
    faces = np.zeros(n, dtype=np.int64)
    pixels = np.arange(n).reshape(camera.height, camera.width)
    for k, surface in enumerate(surfaces):
        window = screen_window(camera, surface.shape)
        if window is None:
            index = pixels.ravel()
            t, face = surface.shape.intersect(origin, rays)
        else:
            v0, v1, u0, u1 = window
            index = pixels[v0:v1, u0:u1].ravel()
            if index.size == 0:
                continue
            t, face = surface.shape.intersect(origin, rays[:, index])
        closer = t < best[index]
        hits = index[closer]
        best[hits] = t[closer]
        ids[hits] = k
        if face is not None:
            faces[hits] = face[closer]
    return best, ids, faces


def _sky(rays: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky colour per ray (3, M): horizon haze to zenith blue."""
    up = rays[1] / np.linalg.norm(rays, axis=0)
    mix = np.clip(up * 4.0, 0.0, 1.0)[None, :]
    horizon = np.array([0.78, 0.82, 0.86]) * rng.uniform(0.9, 1.05)
    zenith = np.array([0.35, 0.55, 0.88]) * rng.uniform(0.85, 1.05)
    return horizon[:, None] * (1 - mix) + zenith[:, None] * mix


def _random_light(rng: np.random.Generator) -> np.ndarray:
    elevation = math.radians(rng.uniform(30.0, 75.0))
    azimuth = rng.uniform(0.0, 2 * math.pi)
    return np.array(
        [
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
            math.cos(elevation) * math.cos(azimuth),
        ]
    )


def _ellipse_holes(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) mask of 0–2 random ellipses (sensor drop-outs)."""
    mask = np.zeros((height, width), dtype=bool)
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    for _ in range(int(rng.integers(0, 3))):
        cv, cu = rng.uniform(0, height), rng.uniform(0, width)
        rv, ru = rng.uniform(0.02, 0.08) * width, rng.uniform(0.02, 0.08) * width
        mask |= ((v - cv) / rv) ** 2 + ((u - cu) / ru) ** 2 <= 1.0
    return mask


def _boundary(label: np.ndarray) -> np.ndarray:
    """(H, W) mask of pixels whose right or lower neighbour has another label."""
    edge = np.zeros(label.shape, dtype=bool)
    edge[:, :-1] |= label[:, :-1] != label[:, 1:]
    edge[:-1, :] |= label[:-1, :] != label[1:, :]
    return edge


def render_scene(settings: SyntheticSettings, split: str, index: int) -> Scene:
    """Draw and render image ``index`` of ``split`` (conventions in the module doc)."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    settings.split_size(split)  # validates the split name
    seq = np.random.SeedSequence(
        [settings.seed, DATASET_CODES[settings.dataset], SPLIT_CODES[split], int(index)]
    )
    rng = np.random.default_rng(seq)
    layout = _room if settings.dataset == "nyuv2" else _street
    camera, surfaces = layout(settings, rng)
    light = _random_light(rng)
    ambient = rng.uniform(0.25, 0.45)
    tint = np.array([1.0, rng.uniform(0.92, 1.0), rng.uniform(0.82, 1.0)])

    h, w = settings.height, settings.width
    rays = camera.world_rays()
    t, ids, faces = _cast(camera, rays, surfaces)
    hit = ids >= 0
    normal_w = np.zeros((3, h * w))
    albedo = np.zeros((3, h * w))
    labels = np.full(h * w, -1, dtype=np.int64)
    fine = np.full(h * w, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    starts = np.searchsorted(ids[order], np.arange(len(surfaces) + 1))
    for k, surface in enumerate(surfaces):
        sel = order[starts[k] : starts[k + 1]]
        if sel.size == 0:
            continue
        d = rays[:, sel]
        p = camera.position[:, None] + t[sel] * d
        normal_w[:, sel] = surface.shape.normal(p, faces[sel], d, camera.position)
        albedo[:, sel] = surface.material.albedo(p)
        labels[sel] = surface.label
        fine[sel] = surface.fine

    # Shading: ambient + directional light + a fill light at the camera (cosine to the viewer).
    cos_view = -(normal_w * rays).sum(axis=0) / np.linalg.norm(rays, axis=0)
    shade = (
        ambient
        + (1 - ambient) * np.clip(light @ normal_w, 0.0, None)
        + FILL_LIGHT * np.clip(cos_view, 0.0, None)
    )
    color = albedo * (shade[None, :] * tint[:, None])
    color[:, ~hit] = _sky(rays[:, ~hit], rng)

    # Auto-exposure: the 99th percentile of the noise-free image lands in [0.8, 0.95].
    exposure = rng.uniform(0.8, 0.95) / max(float(np.quantile(color, 0.99)), 1e-6)
    noise = rng.standard_normal(size=(h, w, 3), dtype=np.float32) * np.float32(settings.noise_std)
    image = (exposure * color.T.reshape(h, w, 3)).astype(np.float32) + noise
    image = np.clip(image, 0.0, 1.0)
    normal_c = (camera.rotation.T @ normal_w).T.reshape(h, w, 3)
    depth = np.where(hit, t, 0.0).reshape(h, w)
    label = labels.reshape(h, w)

    arrays: dict[str, np.ndarray] = {"image": image}
    if settings.dataset == "nyuv2":
        facing = np.abs(cos_view).reshape(h, w)
        invalid = (~hit).reshape(h, w) | (facing < GRAZING_COS) | _ellipse_holes(rng, h, w)
        label = np.where(_boundary(label), -1, label)
        arrays["label"] = label.astype(np.float32)
        arrays["depth"] = np.where(invalid, 0.0, depth)[:, :, None].astype(np.float32)
        arrays["normal"] = np.where(invalid[:, :, None], 0.0, normal_c).astype(np.float32)
    else:
        arrays["label_7"] = label.astype(np.float32)
        arrays["label_19"] = fine.reshape(h, w).astype(np.float32)
        with np.errstate(divide="ignore"):
            disparity = np.where(depth > 0, DISPARITY_CONSTANT / depth, 0.0)
        arrays["depth"] = disparity[:, :, None].astype(np.float32)
    return Scene(arrays, camera, tuple(surfaces), ids.reshape(h, w), light)


def generate_scene(settings: SyntheticSettings, split: str, index: int) -> dict[str, np.ndarray]:
    """Arrays of image ``index`` of ``split``, keyed by folder, exactly as written to disk.

    NYUv2: ``image`` (H, W, 3), ``label`` (H, W), ``depth`` (H, W, 1), ``normal`` (H, W, 3);
    Cityscapes: ``image``, ``label_7``, ``label_19``, ``depth``. All float32.
    """
    return render_scene(settings, split, index).arrays


# --------------------------------------------------------------------------------------------
# Writing a dataset
# --------------------------------------------------------------------------------------------


def metadata(settings: SyntheticSettings) -> dict[str, Any]:
    """Contents of ``synthetic.json`` (deterministic: no timestamps)."""
    names = class_names(settings)
    meta: dict[str, Any] = {
        "format": "mtan",
        "generator": "mtl_paradigms.data.synthetic",
        "version": FORMAT_VERSION,
        "settings": dataclasses.asdict(settings),
        "sizes": {"train": settings.num_train, "val": settings.num_val},
        "folders": list(settings.folders),
        "class_names": {settings.label_folders[0]: names},
        "num_classes": {settings.label_folders[0]: settings.classes},
        "conventions": {
            "camera_frame": "OpenCV: x right, y down, z forward",
            "depth": (
                "metres along the optical axis, 0 invalid"
                if settings.dataset == "nyuv2"
                else f"disparity-like {DISPARITY_CONSTANT}/z (z in metres), 0 invalid (sky)"
            ),
            "ignore_label": -1,
        },
    }
    if settings.dataset == "cityscapes":
        meta["num_classes"]["label_19"] = FINE_CLASSES
        meta["label_19_to_label_7"] = fine_to_coarse(settings.classes)
    return meta


def write_synthetic_mtan(
    settings: SyntheticSettings,
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Path:
    """Generate the dataset into a temporary folder beside ``out_dir``, then rename it into place.

    Layout ``{train,val}/<folder>/{i}.npy`` (folders: :attr:`SyntheticSettings.folders`) plus
    ``synthetic.json`` (:func:`metadata`). An existing ``out_dir`` raises
    :class:`FileExistsError` unless ``overwrite``; an interrupted run leaves no ``out_dir``.
    ``workers`` processes render in parallel (``None``: one for small datasets, else one per
    available CPU, at most 8); every image has its own seed, so the files do not depend on it.
    """
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists (pass overwrite=True to replace it)")
    processes = _resolve_workers(settings, workers)
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        _write_all(settings, tmp, progress, processes)
        write_json(tmp / META_FILE, metadata(settings))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = settings.num_train + settings.num_val
    elapsed = time.perf_counter() - started
    logger.info(
        "wrote synthetic %s (%d images, %dx%d) to %s in %.1f s (%.0f images/s)",
        settings.dataset,
        total,
        settings.height,
        settings.width,
        target,
        elapsed,
        total / max(elapsed, 1e-9),
    )
    return target


def _resolve_workers(settings: SyntheticSettings, workers: int | None) -> int:
    if workers is not None:
        if isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
        return workers
    pixels = (settings.num_train + settings.num_val) * settings.height * settings.width
    if pixels < PARALLEL_MIN_PIXELS:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _write_chunk(settings: SyntheticSettings, root: Path, split: str, indices: range) -> int:
    for index in indices:
        for folder, array in generate_scene(settings, split, index).items():
            np.save(root / split / folder / f"{index}.npy", array, allow_pickle=False)
    return len(indices)


def _write_all(settings: SyntheticSettings, root: Path, progress: bool, workers: int) -> None:
    total = settings.num_train + settings.num_val
    chunks: list[tuple[str, range]] = []
    for split in SPLIT_CODES:
        for folder in settings.folders:
            (root / split / folder).mkdir(parents=True)
        n = settings.split_size(split)
        chunks.extend((split, range(i, min(i + CHUNK, n))) for i in range(0, n, CHUNK))
    with tqdm(total=total, desc=f"synthetic {settings.dataset}", disable=not progress) as bar:
        if workers == 1:
            for split, indices in chunks:
                bar.update(_write_chunk(settings, root, split, indices))
            return
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_write_chunk, settings, root, *chunk) for chunk in chunks]
            try:
                for future in as_completed(futures):
                    bar.update(future.result())
            except BaseException:
                for future in futures:
                    future.cancel()
                raise


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    if not target.exists():
        os.rename(tmp, target)
        return
    if not overwrite:
        raise FileExistsError(f"{target}: appeared while generating; not replaced")
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / "replaced")
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
