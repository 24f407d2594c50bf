"""NYUv2 and Cityscapes in the MTAN preprocessing: on-disk format, validation and loading.

On-disk format (Liu et al., MTAN; read as is, never modified)
-------------------------------------------------------------
``<root>/{train,val}/<modality>/{i}.npy`` for ``i = 0 .. N-1`` (contiguous), one array per file:

* ``image``: ``H x W x 3`` float, RGB in [0, 1].
* ``label`` (NYUv2, 13 classes), ``label_7`` / ``label_19`` (Cityscapes, 7 / 19 classes):
  ``H x W``, float or integer, class ids ``0 .. C-1``, ``-1`` = ignore.
* ``depth``: ``H x W x 1`` (or ``H x W``); NYUv2 metres, Cityscapes disparity-like (≈0–0.5);
  ``0`` = invalid.
* ``normal`` (NYUv2 only): ``H x W x 3`` unit vectors in camera coordinates; ``0`` = invalid.

Sizes: NYUv2 795 train / 654 val at 288×384; Cityscapes 2975 / 500 at 128×256. dtypes are not
documented, so float32/float64 (and integer labels) are accepted and every file is validated;
any problem raises :class:`DatasetError` naming the file.

In memory (:class:`MTANSplit`), channels first: images ``(N, 3, H, W)`` float32; targets
``"segmentation"`` ``(N, H, W)`` int64 (``-1`` ignore), ``"depth"`` ``(N, 1, H, W)`` float32
(``0`` invalid), ``"normal"`` ``(N, 3, H, W)`` float32 (``0`` invalid).

Splits of Elich et al. (2024), :func:`paper_splits`: ``val_size`` images of the MTAN ``train``
folder are held out as validation (NYUv2 159 of 795, Cityscapes 595 of 2975) by a seeded
permutation; the MTAN ``val`` folder is the test set (654 / 500).

A folder written by :mod:`mtl_paradigms.data.synthetic` carries a ``synthetic.json`` whose
``num_classes`` mapping (label folder -> number of classes) overrides :data:`NUM_CLASSES`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtl_paradigms.data.errors import DatasetError
from mtl_paradigms.data.npyfile import load_npy

logger = logging.getLogger(__name__)

Dataset = Literal["nyuv2", "cityscapes"]
Split = Literal["train", "val"]
CityscapesLabels = Literal["label_7", "label_19"]

DATASETS: tuple[str, ...] = ("nyuv2", "cityscapes")
SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_FOLDER = "image"
SEGMENTATION = "segmentation"
DEPTH = "depth"
NORMAL = "normal"

#: task -> folder. For Cityscapes the segmentation folder is ``label_7`` unless
#: ``cityscapes_labels="label_19"`` is asked for.
TASKS: dict[str, dict[str, str]] = {
    "nyuv2": {SEGMENTATION: "label", DEPTH: "depth", NORMAL: "normal"},
    "cityscapes": {SEGMENTATION: "label_7", DEPTH: "depth"},
}
#: segmentation classes per dataset (Cityscapes with ``label_19``: :data:`LABEL_CLASSES`).
NUM_CLASSES: dict[str, int] = {"nyuv2": 13, "cityscapes": 7}
#: classes per label folder of the real data.
LABEL_CLASSES: dict[str, int] = {"label": 13, "label_7": 7, "label_19": 19}
#: every folder of a split, in the order the MTAN release has them.
FOLDERS: dict[str, tuple[str, ...]] = {
    "nyuv2": ("image", "label", "depth", "normal"),
    "cityscapes": ("image", "label_7", "label_19", "depth"),
}
#: images per split of the MTAN release.
SIZES: dict[str, dict[str, int]] = {
    "nyuv2": {"train": 795, "val": 654},
    "cityscapes": {"train": 2975, "val": 500},
}
#: validation images held out of the MTAN train folder by Elich et al. (2024).
PAPER_VAL_SIZE: dict[str, int] = {"nyuv2": 159, "cityscapes": 595}
#: name of the metadata file a synthetic dataset carries.
SYNTHETIC_META = "synthetic.json"

#: what to do about a damaged .npy file of a dataset folder.
REPAIR_MTAN = (
    "the file is damaged or incomplete (an interrupted download, extraction or copy): delete "
    "the dataset folder and prepare it again with mtlp prepare-mtan (download the release "
    "archive again if that fails too)"
)

IGNORE_LABEL = -1
LOAD_THREADS = 4  # threads reading files of one folder
_INDEX_FILE = re.compile(r"^(\d+)\.npy$")


# --------------------------------------------------------------------------------------------
# In-memory split
# --------------------------------------------------------------------------------------------


@dataclass
class MTANSplit:
    """One split held in memory as tensors (channels first; conventions in the module doc).

    ``images``: ``(N, 3, H, W)`` float32 in [0, 1]. ``targets``: task -> tensor with first
    dimension ``N``: ``"segmentation"`` ``(N, H, W)`` int64 (``-1`` ignore), ``"depth"``
    ``(N, 1, H, W)`` float32 (``0`` invalid), ``"normal"`` ``(N, 3, H, W)`` float32 (``0``
    invalid).
    """

    images: Tensor
    targets: dict[str, Tensor]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(self.images.shape)}")
        n, _, h, w = self.images.shape
        for task, target in self.targets.items():
            if target.shape[0] != n or tuple(target.shape[-2:]) != (h, w):
                raise ValueError(
                    f"target {task!r} has shape {tuple(target.shape)}, "
                    f"incompatible with images {tuple(self.images.shape)}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.targets)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> MTANSplit:
        """The samples at ``indices`` (in that order), as a new split (copies the data)."""
        if isinstance(indices, Tensor):
            index = indices.to(device=self.images.device, dtype=torch.int64)
        else:
            index = torch.as_tensor(np.asarray(indices, dtype=np.int64), device=self.images.device)
        if index.ndim != 1:
            raise ValueError(f"indices must be one-dimensional, got shape {tuple(index.shape)}")
        return MTANSplit(
            images=self.images.index_select(0, index),
            targets={t: v.index_select(0, index) for t, v in self.targets.items()},
        )

    def batch(self, indices: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Images and targets at ``indices`` (a tensor on :attr:`device`), for a training step."""
        return self.images[indices], {t: v[indices] for t, v in self.targets.items()}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MTANSplit:
        """The split on ``device`` (no copy when it is already there)."""
        return MTANSplit(
            images=self.images.to(device, non_blocking=non_blocking),
            targets={t: v.to(device, non_blocking=non_blocking) for t, v in self.targets.items()},
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def task_folders(
    dataset: str, tasks: Sequence[str] | None = None, cityscapes_labels: str = "label_7"
) -> dict[str, str]:
    """task -> folder for ``dataset``; ``tasks=None`` selects every task of the dataset."""
    if dataset not in TASKS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    if cityscapes_labels not in ("label_7", "label_19"):
        raise ValueError(
            f"cityscapes_labels must be 'label_7' or 'label_19', got {cityscapes_labels!r}"
        )
    available = dict(TASKS[dataset])
    if dataset == "cityscapes":
        available[SEGMENTATION] = cityscapes_labels
    if tasks is None:
        return available
    if isinstance(tasks, str) or len(tasks) == 0:
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    unknown = [t for t in tasks if t not in available]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} for {dataset}; available: {list(available)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must not repeat, got {list(tasks)}")
    return {t: available[t] for t in tasks}


def dataset_num_classes(root: str | Path, dataset: str, cityscapes_labels: str = "label_7") -> int:
    """Segmentation classes of the dataset at ``root``.

    :data:`NUM_CLASSES` (or 19 for Cityscapes ``label_19``), unless ``root`` holds a
    ``synthetic.json`` whose ``num_classes`` mapping names the label folder.
    """
    folder = task_folders(dataset, [SEGMENTATION], cityscapes_labels)[SEGMENTATION]
    meta_path = Path(root) / SYNTHETIC_META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            return int(meta["num_classes"][folder])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{meta_path}: no valid num_classes[{folder!r}] ({err})") from err
    return LABEL_CLASSES[folder]


def list_indexed_files(folder: Path) -> int:
    """Number ``N`` of files ``0.npy .. {N-1}.npy`` in ``folder``; raise unless contiguous.

    Files not named ``<integer>.npy`` are ignored (with a warning).
    """
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder is missing")
    indices: list[int] = []
    ignored: list[str] = []
    for entry in folder.iterdir():
        match = _INDEX_FILE.match(entry.name)
        if match is None:
            ignored.append(entry.name)
        else:
            indices.append(int(match.group(1)))
    if ignored:
        logger.warning(
            "%s: ignoring %d unexpected entries, e.g. %s", folder, len(ignored), ignored[0]
        )
    if not indices:
        raise DatasetError(f"{folder}: holds no <index>.npy files")
    indices.sort()
    expected = range(len(indices))
    for i, got in zip(expected, indices, strict=True):
        if got != i:
            raise DatasetError(
                f"{folder / f'{i}.npy'}: file is missing (numbers must run 0..N-1 without gaps; "
                f"found {len(indices)} files, largest {indices[-1]}.npy)"
            )
    return len(indices)


def _load_array(path: Path) -> np.ndarray:
    """The array of one dataset file; :class:`DatasetError` (naming it) if damaged."""
    return load_npy(path, advice=REPAIR_MTAN)


def _check_finite(path: Path, array: np.ndarray) -> None:
    # A float64 sum is finite unless some value is NaN/inf (real data never overflows it).
    if array.dtype.kind == "f" and not np.isfinite(array.sum(dtype=np.float64)):
        bad = int(array.size - np.isfinite(array).sum())
        if bad == 0:  # pragma: no cover - the sum overflowed on finite values
            return
        raise DatasetError(f"{path}: contains {bad} NaN/inf value(s)")


def _require_shape(path: Path, array: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if array.shape != expected:
        raise DatasetError(
            f"{path}: {what} must have shape {expected}, got {array.shape} ({array.dtype})"
        )


def check_image(path: Path, array: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """Validate an ``H x W x 3`` float image; return it channels-first ``(3, H, W)``."""
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"{path}: image must be H x W x 3, got shape {array.shape}")
    if hw is not None:
        _require_shape(path, array, (*hw, 3), "image (same size as the first image)")
    if array.dtype.kind != "f":
        raise DatasetError(f"{path}: image must be float (values in [0, 1]), got {array.dtype}")
    _check_finite(path, array)
    return array.transpose(2, 0, 1)


def check_label(path: Path, array: np.ndarray, hw: tuple[int, int], num_classes: int) -> np.ndarray:
    """Validate an ``H x W`` label map with ids in {-1, 0..C-1}; return it as int64."""
    _require_shape(path, array, hw, "label")
    if array.dtype.kind == "f":
        _check_finite(path, array)
        ids = array.astype(np.int64)
        if not np.array_equal(ids, array):
            raise DatasetError(f"{path}: label holds non-integer values")
    elif array.dtype.kind in "iu":
        ids = array.astype(np.int64)
    else:
        raise DatasetError(f"{path}: label must be float or integer, got {array.dtype}")
    low, high = int(ids.min()), int(ids.max())
    if low < IGNORE_LABEL or high >= num_classes:
        raise DatasetError(
            f"{path}: labels must lie in {{-1, 0..{num_classes - 1}}}, found range [{low}, {high}]"
        )
    return ids


def check_depth(path: Path, array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Validate an ``H x W x 1`` (or ``H x W``) depth map; return it as ``(1, H, W)``."""
    if array.ndim == 2:
        array = array[:, :, None]
    _require_shape(path, array, (*hw, 1), "depth (H x W x 1 or H x W)")
    if array.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: depth must be numeric, got {array.dtype}")
    _check_finite(path, array)
    return array.transpose(2, 0, 1)


def check_normal(path: Path, array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Validate an ``H x W x 3`` normal map; return it as ``(3, H, W)``."""
    _require_shape(path, array, (*hw, 3), "normal")
    if array.dtype.kind != "f":
        raise DatasetError(f"{path}: normal must be float, got {array.dtype}")
    _check_finite(path, array)
    return array.transpose(2, 0, 1)


def _count_files(split_dir: Path, folders: Sequence[str]) -> int:
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: split folder is missing")
    counts = {folder: list_indexed_files(split_dir / folder) for folder in folders}
    if len(set(counts.values())) != 1:
        listing = ", ".join(f"{split_dir / f}: {n}" for f, n in counts.items())
        raise DatasetError(f"{split_dir}: modalities hold different numbers of files ({listing})")
    return next(iter(counts.values()))


def load_mtan(
    root: str | Path,
    dataset: Dataset,
    split: Split,
    tasks: Sequence[str] | None = None,
    cityscapes_labels: CityscapesLabels = "label_7",
    limit: int | None = None,
    num_classes: int | None = None,
) -> MTANSplit:
    """Load and validate ``<root>/<split>`` of ``dataset`` (MTAN format) into memory.

    ``tasks`` (default: all of the dataset's tasks, see :data:`TASKS`) picks the target folders
    read; the image folder is always read. ``limit`` keeps the first ``limit`` files.
    ``num_classes`` overrides the label range checked (default :func:`dataset_num_classes`).
    Raises :class:`DatasetError` naming the offending folder or file.
    """
    started = time.perf_counter()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    folders = task_folders(dataset, tasks, cityscapes_labels)
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder is missing")
    if num_classes is None:
        num_classes = dataset_num_classes(root, dataset, cityscapes_labels)
    split_dir = root / split
    n = _count_files(split_dir, [IMAGE_FOLDER, *folders.values()])
    if limit is not None:
        n = min(n, limit)

    first_path = split_dir / IMAGE_FOLDER / "0.npy"
    first = _load_array(first_path)
    check_image(first_path, first, None)
    hw = (int(first.shape[0]), int(first.shape[1]))
    images = np.empty((n, 3, *hw), dtype=np.float32)
    _fill(split_dir / IMAGE_FOLDER, images, lambda path, a: check_image(path, a, hw))
    _warn_outside_unit_range(split_dir / IMAGE_FOLDER, images)

    targets = {
        task: _load_target(split_dir / folder, task, n, hw, num_classes)
        for task, folder in folders.items()
    }
    result = MTANSplit(
        images=torch.from_numpy(images),
        targets={t: torch.from_numpy(v) for t, v in targets.items()},
    )
    logger.info(
        "loaded %s %s from %s: %d images %dx%d, tasks %s, in %.2f s",
        dataset,
        split,
        root,
        n,
        hw[0],
        hw[1],
        list(folders),
        time.perf_counter() - started,
    )
    return result


def _fill(folder: Path, out: np.ndarray, convert: Callable[[Path, np.ndarray], np.ndarray]) -> None:
    """``out[i] = convert(path_i, np.load(path_i))`` for ``path_i = folder / f"{i}.npy"``.

    Runs on a few threads (file reads and large numpy operations release the GIL); the error of
    the lowest failing index is raised, so messages do not depend on thread timing.
    """

    def one(i: int) -> None:
        path = folder / f"{i}.npy"
        out[i] = convert(path, _load_array(path))

    n = out.shape[0]
    threads = min(LOAD_THREADS, n)
    if threads <= 1:
        for i in range(n):
            one(i)
        return
    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        for _ in pool.map(one, range(n)):
            pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load_target(
    folder: Path, task: str, n: int, hw: tuple[int, int], num_classes: int
) -> np.ndarray:
    if task == SEGMENTATION:
        out = np.empty((n, *hw), dtype=np.int64)
        _fill(folder, out, lambda path, a: check_label(path, a, hw, num_classes))
    elif task == DEPTH:
        out = np.empty((n, 1, *hw), dtype=np.float32)
        _fill(folder, out, lambda path, a: check_depth(path, a, hw))
        if (out < 0).any():
            logger.warning("%s: depth holds negative values (0 marks invalid pixels)", folder)
    elif task == NORMAL:
        out = np.empty((n, 3, *hw), dtype=np.float32)
        _fill(folder, out, lambda path, a: check_normal(path, a, hw))
    else:  # pragma: no cover - task_folders only yields known tasks
        raise ValueError(f"unknown task {task!r}")
    return out


def _warn_outside_unit_range(folder: Path, images: np.ndarray) -> None:
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        logger.warning("%s: image values span [%.3g, %.3g], expected [0, 1]", folder, low, high)


# --------------------------------------------------------------------------------------------
# The paper's splits
# --------------------------------------------------------------------------------------------


def holdout_indices(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: ``val_size`` of ``range(n)`` held out by a seeded permutation.

    ``np.random.default_rng(seed).permutation(n)``; its first ``val_size`` entries are the
    validation set. Both index arrays are returned sorted.
    """
    if isinstance(val_size, bool) or not 1 <= val_size < n:
        raise ValueError(f"val_size must lie in [1, {n - 1}] for {n} train images, got {val_size}")
    if isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    permutation = np.random.default_rng(seed).permutation(n)
    return np.sort(permutation[val_size:]), np.sort(permutation[:val_size])


def paper_splits(
    root: str | Path,
    dataset: Dataset,
    val_size: int,
    seed: int,
    tasks: Sequence[str] | None = None,
    cityscapes_labels: CityscapesLabels = "label_7",
    num_classes: int | None = None,
) -> tuple[MTANSplit, MTANSplit, MTANSplit]:
    """(train, val, test) as in Elich et al. (2024).

    val = ``val_size`` images held out of the MTAN ``train`` folder (:func:`holdout_indices`;
    paper: :data:`PAPER_VAL_SIZE`), train = the rest, test = the MTAN ``val`` folder.
    """
    full = load_mtan(root, dataset, "train", tasks, cityscapes_labels, num_classes=num_classes)
    train_idx, val_idx = holdout_indices(len(full), val_size, seed)
    train, val = full.subset(train_idx), full.subset(val_idx)
    del full
    test = load_mtan(root, dataset, "val", tasks, cityscapes_labels, num_classes=num_classes)
    return train, val, test


def describe(split: MTANSplit) -> Mapping[str, object]:
    """Small summary (sizes, label range, valid-pixel fractions) for logs and reports."""
    info: dict[str, object] = {"images": len(split), "size": tuple(split.images.shape[-2:])}
    for task, target in split.targets.items():
        if task == SEGMENTATION:
            info[task] = {
                "min": int(target.min()),
                "max": int(target.max()),
                "ignored": float((target == IGNORE_LABEL).float().mean()),
            }
        else:
            valid = (target != 0).any(dim=1)
            info[task] = {"valid": float(valid.float().mean())}
    return info


# --------------------------------------------------------------------------------------------
# Layout of a whole release
# --------------------------------------------------------------------------------------------


def check_layout(root: str | Path, dataset: str, expect_sizes: bool = False) -> dict[str, int]:
    """Images per split, after checking every folder of :data:`FOLDERS` in both splits.

    Each folder must hold ``0.npy .. {N-1}.npy`` with the same ``N`` across a split's folders
    (label_7 *and* label_19 for Cityscapes). ``expect_sizes`` also requires the counts of the
    MTAN release (:data:`SIZES`). Cheap: reads file names, not arrays.
    """
    if dataset not in FOLDERS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {dataset!r}")
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base}: dataset folder is missing")
    counts = {split: _count_files(base / split, FOLDERS[dataset]) for split in SPLITS}
    for split in SPLITS:  # the first file of every folder: shape and dtype
        _check_first_files(base, dataset, split)
    if expect_sizes and counts != SIZES[dataset]:
        raise DatasetError(
            f"{base}: {dataset} holds {counts} images, the MTAN release has {SIZES[dataset]}"
        )
    return counts


def _check_first_files(base: Path, dataset: str, split: str) -> None:
    image_path = base / split / IMAGE_FOLDER / "0.npy"
    image = _load_array(image_path)
    check_image(image_path, image, None)
    hw = (int(image.shape[0]), int(image.shape[1]))
    for folder in FOLDERS[dataset][1:]:
        path = base / split / folder / "0.npy"
        array = _load_array(path)
        if folder in LABEL_CLASSES:
            labels = "label_19" if folder == "label_19" else "label_7"
            classes = (
                dataset_num_classes(base, dataset, labels)
                if dataset == "cityscapes"
                else (dataset_num_classes(base, dataset))
            )
            check_label(path, array, hw, classes)
        elif folder == DEPTH:
            check_depth(path, array, hw)
        elif folder == NORMAL:
            check_normal(path, array, hw)
