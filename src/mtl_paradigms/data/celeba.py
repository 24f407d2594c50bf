"""CelebA: the official files, a compact memory-mapped form, and in-memory attribute splits.

Official files (read as is; ``torchvision.datasets.CelebA`` reads the same layout)
---------------------------------------------------------------------------------
* ``img_align_celeba.zip`` holding ``img_align_celeba/<nnnnnn>.jpg`` (aligned and cropped,
  178 wide x 218 high), or that folder extracted;
* ``list_attr_celeba.txt``: line 1 the number of images, line 2 the 40 attribute names, then one
  line per image: ``<file> v_1 .. v_40`` with ``v`` in {-1, 1}, separated by one or more spaces;
* ``list_eval_partition.txt``: ``<file> p`` per image, ``p`` = 0 train, 1 validation, 2 test
  (162,770 / 19,867 / 19,962).

Prepared form (:func:`prepare_celeba`, built once)
-------------------------------------------------
A folder with ``images.npy`` ``(N, S, S, 3)`` uint8 (centre square crop, resized to ``S``;
the paper's ``S`` is 64), ``attributes.npy`` ``(N, A)`` uint8 in {0, 1}, ``partition.npy``
``(N,)`` uint8 and ``celeba.json`` (attribute names, size, counts, source). Images are in the
order of ``list_attr_celeba.txt``. The arrays are opened memory-mapped, so a split is read
without decoding a JPEG again; 202,599 images at 64x64 take 2.5 GB.

In memory (:class:`AttributeSplit`): images ``(N, 3, S, S)`` uint8 (the model scales them to
[0, 1]); targets: attribute name -> ``(N,)`` float32 in {0, 1}. Splits: the official partition.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from mtl_paradigms.data.archives import check_member_name
from mtl_paradigms.data.errors import DatasetError
from mtl_paradigms.data.npyfile import load_npy
from mtl_paradigms.io import atomic_directory

if TYPE_CHECKING:  # torch is imported where tensors are made: preparing needs none
    import torch
    from torch import Tensor
from mtl_paradigms.io import write_json

logger = logging.getLogger(__name__)

IMAGES_ZIP = "img_align_celeba.zip"
IMAGES_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
RAW_FILES: tuple[str, ...] = (IMAGES_ZIP, ATTR_FILE, PARTITION_FILE)
META_FILE = "celeba.json"
PREPARED_ARRAYS: tuple[str, ...] = ("images.npy", "attributes.npy", "partition.npy")
SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_REPAIR = (
    "the file is damaged or incomplete (an interrupted write or copy): delete the prepared "
    "folder and run mtlp prepare-celeba again"
)
#: the official numbers of images per partition (train, val, test).
OFFICIAL_SIZES: dict[str, int] = {"train": 162_770, "val": 19_867, "test": 19_962}
OFFICIAL_ATTRIBUTES = 40
PAPER_SIZE = 64
LOAD_THREADS = 4
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


# --------------------------------------------------------------------------------------------
# In-memory split
# --------------------------------------------------------------------------------------------


@dataclass
class AttributeSplit:
    """Images and binary attributes of one split; the interface of ``MTANSplit``.

    ``images``: ``(N, 3, H, W)`` uint8 (or float). ``targets``: name -> ``(N,)`` float32 {0, 1}.
    """

    images: Tensor
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        n = self.images.shape[0]
        for name, target in self.targets.items():
            if tuple(target.shape) != (n,):
                raise ValueError(
                    f"target {name!r} has shape {tuple(target.shape)}, expected ({n},)"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.targets)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> AttributeSplit:
        import torch

        index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.device)
        return AttributeSplit(
            self.images.index_select(0, index),
            {t: v.index_select(0, index) for t, v in self.targets.items()},
        )

    def batch(self, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.images[indices], {t: v[indices] for t, v in self.targets.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AttributeSplit:
        return AttributeSplit(
            self.images.to(device, non_blocking=non_blocking),
            {t: v.to(device, non_blocking=non_blocking) for t, v in self.targets.items()},
        )


# --------------------------------------------------------------------------------------------
# The official text files
# --------------------------------------------------------------------------------------------


def read_attributes(path: str | os.PathLike[str]) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, file names, ``(N, A)`` uint8 {0,1}) of ``list_attr_celeba.txt``."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: attribute file is missing")
    lines = p.read_text(encoding="utf-8").splitlines()
    if len(lines) < 3:
        raise DatasetError(f"{p}: expected a count line, a header line and image lines")
    try:
        count = int(lines[0].strip())
    except ValueError as err:
        raise DatasetError(f"{p}: line 1 must be the number of images, got {lines[0]!r}") from err
    names = lines[1].split()
    bad = [n for n in names if not _NAME.match(n)]
    if not names or bad or len(set(names)) != len(names):
        raise DatasetError(f"{p}: line 2 must list distinct attribute names, got {lines[1]!r}")
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise DatasetError(f"{p}: line 1 announces {count} images, the file lists {len(rows)}")
    files: list[str] = []
    values = np.empty((count, len(names)), dtype=np.int8)
    for i, row in enumerate(rows):
        if len(row) != len(names) + 1:
            raise DatasetError(
                f"{p}: line {i + 3} has {len(row) - 1} values, expected {len(names)} ({row[0]})"
            )
        files.append(row[0])
        try:
            values[i] = [int(v) for v in row[1:]]
        except ValueError as err:
            raise DatasetError(f"{p}: line {i + 3} holds a non-integer value") from err
    if not np.isin(values, (-1, 1)).all():
        raise DatasetError(f"{p}: attribute values must be -1 or 1")
    if len(set(files)) != len(files):
        raise DatasetError(f"{p}: file names repeat")
    return names, files, (values > 0).astype(np.uint8)


def read_partition(path: str | os.PathLike[str], files: Sequence[str]) -> np.ndarray:
    """``(N,)`` uint8 partition of ``files`` (in that order) from ``list_eval_partition.txt``."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: partition file is missing")
    lookup: dict[str, int] = {}
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DatasetError(f"{p}: line {number} must be '<file> <0|1|2>', got {line!r}")
        lookup[parts[0]] = int(parts[1])
    missing = [f for f in files if f not in lookup]
    if missing:
        raise DatasetError(
            f"{p}: no partition for {len(missing)} image(s) of the attribute file, e.g. "
            f"{missing[0]}"
        )
    return np.array([lookup[f] for f in files], dtype=np.uint8)


def find_raw(root: str | os.PathLike[str]) -> Path:
    """The folder holding the official files: ``root`` or its ``celeba/`` (torchvision)."""
    base = Path(root)
    for candidate in (base, base / "celeba"):
        if (candidate / ATTR_FILE).is_file():
            return candidate
    raise DatasetError(
        f"{base}: {ATTR_FILE} is missing. Expected {', '.join(RAW_FILES)} (or the extracted "
        f"{IMAGES_DIR}/ folder) in {base}"
    )


class _ImageSource:
    """Reads images by file name from the zip or the extracted folder."""

    def __init__(self, raw: Path) -> None:
        self.raw = raw
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, str] = {}
        if (raw / IMAGES_ZIP).is_file():
            try:
                self.zip = zipfile.ZipFile(raw / IMAGES_ZIP)
            except zipfile.BadZipFile as err:
                raise DatasetError(f"{raw / IMAGES_ZIP}: not a readable zip ({err})") from err
            for name in self.zip.namelist():
                check_member_name(name, raw / IMAGES_ZIP)
                if not name.endswith("/"):
                    self.members[name.rsplit("/", 1)[-1]] = name
            self.where = str(raw / IMAGES_ZIP)
        elif (raw / IMAGES_DIR).is_dir():
            self.where = str(raw / IMAGES_DIR)
        else:
            raise DatasetError(f"{raw}: neither {IMAGES_ZIP} nor a {IMAGES_DIR}/ folder")

    def check(self, files: Sequence[str]) -> None:
        if self.zip is not None:
            missing = [f for f in files if f not in self.members]
        else:
            missing = [f for f in files if not (self.raw / IMAGES_DIR / f).is_file()]
        if missing:
            raise DatasetError(
                f"{self.where}: {len(missing)} image(s) listed in {ATTR_FILE} are missing, e.g. "
                f"{missing[0]}"
            )

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(self.members[name])
        return (self.raw / IMAGES_DIR / name).read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _decode(data: bytes, size: int, where: str) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at a reduced scale (fast)
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"{where}: cannot be decoded as an image ({err})") from err
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    box = (left, top, left + side, top + side)
    out = rgb.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return np.asarray(out, dtype=np.uint8)


def prepare_celeba(
    raw_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    size: int = PAPER_SIZE,
    progress: bool = False,
    threads: int = LOAD_THREADS,
) -> Path:
    """Decode the official files once into the prepared form (module doc); atomic.

    Every problem raises :class:`DatasetError` naming the file; ``out_dir`` then does not exist.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    started = time.perf_counter()
    raw = find_raw(raw_dir)
    names, files, attributes = read_attributes(raw / ATTR_FILE)
    partition = read_partition(raw / PARTITION_FILE, files)
    source = _ImageSource(raw)
    try:
        source.check(files)
        with atomic_directory(out_dir) as tmp:
            images = np.lib.format.open_memmap(
                tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(files), size, size, 3)
            )

            def one(i: int) -> None:
                images[i] = _decode(source.read(files[i]), size, f"{source.where}: {files[i]}")

            with (
                ThreadPoolExecutor(max_workers=max(1, threads)) as pool,
                tqdm(total=len(files), desc="prepare celeba", disable=not progress) as bar,
            ):
                for _ in pool.map(one, range(len(files))):
                    bar.update()
            images.flush()
            np.save(tmp / "attributes.npy", attributes, allow_pickle=False)
            np.save(tmp / "partition.npy", partition, allow_pickle=False)
            counts = {s: int((partition == c).sum()) for s, c in SPLIT_CODES.items()}
            write_json(
                tmp / META_FILE,
                {
                    "attributes": names,
                    "size": size,
                    "num_images": len(files),
                    "splits": counts,
                    "crop": "centre square, then bilinear resize",
                    "source": str(raw),
                    "first_file": files[0],
                },
            )
    finally:
        source.close()
    if len(names) != OFFICIAL_ATTRIBUTES or counts != OFFICIAL_SIZES:
        logger.info("%s: %d attributes, splits %s (not official CelebA)", raw, len(names), counts)
    logger.info(
        "prepared %d CelebA-format images (%dx%d, %d attributes) into %s in %.1f s",
        len(files), size, size, len(names), out_dir, time.perf_counter() - started,
    )  # fmt: skip
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# The prepared form
# --------------------------------------------------------------------------------------------


def read_meta(root: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing; {root} is not a prepared CelebA folder (mtlp prepare-celeba)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        names = list(meta["attributes"])
        int(meta["size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path}: malformed ({err})") from err
    if not names:
        raise DatasetError(f"{path}: lists no attributes")
    return meta


def attribute_names(root: str | os.PathLike[str]) -> list[str]:
    """The attribute names of a prepared folder (the tasks, in order)."""
    return list(read_meta(root)["attributes"])


def open_prepared(root: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and the three arrays, memory-mapped and checked (shapes, dtypes, values)."""
    base = Path(root)
    meta = read_meta(base)
    arrays: dict[str, np.ndarray] = {}
    for name in PREPARED_ARRAYS:
        path = base / name
        if not path.is_file():
            raise DatasetError(f"{path}: missing from the prepared CelebA folder")
        arrays[name] = load_npy(path, mmap_mode="r", advice=_REPAIR)
    n, size, a = int(meta["num_images"]), int(meta["size"]), len(meta["attributes"])
    expected = {
        "images.npy": ((n, size, size, 3), np.uint8),
        "attributes.npy": ((n, a), np.uint8),
        "partition.npy": ((n,), np.uint8),
    }
    for name, (shape, dtype) in expected.items():
        array = arrays[name]
        if array.shape != shape or array.dtype != dtype:
            raise DatasetError(
                f"{base / name}: expected shape {shape} {np.dtype(dtype)}, got {array.shape} "
                f"{array.dtype}"
            )
    if int(arrays["attributes.npy"].max(initial=0)) > 1:
        raise DatasetError(f"{base / 'attributes.npy'}: values must be 0 or 1")
    if int(arrays["partition.npy"].max(initial=0)) > 2:
        raise DatasetError(f"{base / 'partition.npy'}: values must be 0, 1 or 2")
    return meta, arrays


def load_celeba_split(
    root: str | os.PathLike[str], split: str, attributes: Sequence[str] | None = None
) -> AttributeSplit:
    """One official split of a prepared folder (``train``, ``val`` or ``test``)."""
    if split not in SPLIT_CODES:
        raise ValueError(f"split must be one of {list(SPLIT_CODES)}, got {split!r}")
    meta, arrays = open_prepared(root)
    names = list(meta["attributes"])
    chosen = names if attributes is None else list(attributes)
    unknown = [a for a in chosen if a not in names]
    if unknown or not chosen:
        raise ValueError(f"unknown attribute(s) {unknown} of {root}; available: {names}")
    index = np.flatnonzero(arrays["partition.npy"] == SPLIT_CODES[split])
    if index.size == 0:
        raise DatasetError(f"{Path(root) / 'partition.npy'}: the {split} split is empty")
    import torch

    images = torch.from_numpy(np.ascontiguousarray(arrays["images.npy"][index]))
    columns = arrays["attributes.npy"][index]
    targets = {a: torch.from_numpy(columns[:, names.index(a)].astype(np.float32)) for a in chosen}
    return AttributeSplit(images.permute(0, 3, 1, 2).contiguous(), targets)


def celeba_splits(
    root: str | os.PathLike[str], attributes: Sequence[str] | None = None
) -> tuple[AttributeSplit, AttributeSplit, AttributeSplit]:
    """(train, val, test) as the official partition."""
    return tuple(load_celeba_split(root, s, attributes) for s in ("train", "val", "test"))  # type: ignore[return-value]
