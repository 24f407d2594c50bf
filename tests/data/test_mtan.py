"""The MTAN-format loader: generated and hand-made fixtures, validation errors, paper splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_paradigms.data import (
    NUM_CLASSES,
    TASKS,
    DatasetError,
    MTANSplit,
    dataset_num_classes,
    load_mtan,
    paper_splits,
)
from mtl_paradigms.data.mtan import check_layout, holdout_indices
from mtl_paradigms.data.synthetic import SyntheticSettings, write_synthetic_mtan

H, W = 24, 32


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = SyntheticSettings(dataset="nyuv2", num_train=12, num_val=5, height=H, width=W)
    return write_synthetic_mtan(settings, tmp_path_factory.mktemp("nyu") / "nyuv2")


@pytest.fixture(scope="module")
def city_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = SyntheticSettings(dataset="cityscapes", num_train=10, num_val=4, height=H, width=W)
    return write_synthetic_mtan(settings, tmp_path_factory.mktemp("city") / "cityscapes")


@pytest.fixture
def nyu_copy(nyu_root: Path, tmp_path: Path) -> Path:
    """A private copy of the NYUv2 fixture, to be corrupted by a test."""
    return Path(shutil.copytree(nyu_root, tmp_path / "copy"))


def _check_split(split: MTANSplit, n: int, num_classes: int, tasks: tuple[str, ...]) -> None:
    assert len(split) == n
    assert split.tasks == tasks
    assert split.images.shape == (n, 3, H, W)
    assert split.images.dtype == torch.float32
    assert float(split.images.min()) >= 0.0
    assert float(split.images.max()) <= 1.0
    seg = split.targets["segmentation"]
    assert seg.shape == (n, H, W)
    assert seg.dtype == torch.int64
    assert int(seg.min()) >= -1
    assert int(seg.max()) < num_classes
    assert (seg == -1).any(), "the fixtures carry ignored pixels"
    depth = split.targets["depth"]
    assert depth.shape == (n, 1, H, W)
    assert depth.dtype == torch.float32
    assert float(depth.min()) >= 0.0
    assert (depth == 0).any()
    assert (depth > 0).any()


def test_load_synthetic_nyuv2(nyu_root: Path) -> None:
    train = load_mtan(nyu_root, "nyuv2", "train")
    _check_split(train, 12, 13, ("segmentation", "depth", "normal"))
    normal = train.targets["normal"]
    assert normal.shape == (12, 3, H, W)
    norm = normal.norm(dim=1)
    valid = norm > 0
    assert valid.float().mean() > 0.5
    torch.testing.assert_close(norm[valid], torch.ones_like(norm[valid]), atol=1e-5, rtol=0)
    # NYUv2 depth and normals are invalid at the same pixels.
    assert torch.equal(train.targets["depth"][:, 0] == 0, ~valid)
    _check_split(load_mtan(nyu_root, "nyuv2", "val"), 5, 13, ("segmentation", "depth", "normal"))


def test_load_synthetic_cityscapes(city_root: Path) -> None:
    split = load_mtan(city_root, "cityscapes", "train")
    _check_split(split, 10, NUM_CLASSES["cityscapes"], ("segmentation", "depth"))
    # Sky: ignored label exactly where the disparity is invalid.
    sky = split.targets["segmentation"] == -1
    assert torch.equal(sky, split.targets["depth"][:, 0] == 0)
    assert float(split.targets["depth"].max()) < 1.0
    fine = load_mtan(city_root, "cityscapes", "train", cityscapes_labels="label_19")
    assert int(fine.targets["segmentation"].max()) < 19
    assert int(fine.targets["segmentation"].max()) >= 7  # genuinely the finer labelling
    assert dataset_num_classes(city_root, "cityscapes", "label_19") == 19


def test_task_selection_and_limit(nyu_root: Path) -> None:
    split = load_mtan(nyu_root, "nyuv2", "train", tasks=["depth"], limit=3)
    assert split.tasks == ("depth",)
    assert len(split) == 3
    full = load_mtan(nyu_root, "nyuv2", "train", tasks=["depth"])
    assert torch.equal(split.images, full.images[:3])
    with pytest.raises(ValueError, match="unknown task"):
        load_mtan(nyu_root, "nyuv2", "train", tasks=["edges"])
    with pytest.raises(ValueError, match="dataset"):
        load_mtan(nyu_root, "kitti", "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        load_mtan(nyu_root, "nyuv2", "test")  # type: ignore[arg-type]


def test_split_subset_and_to(nyu_root: Path) -> None:
    split = load_mtan(nyu_root, "nyuv2", "val")
    sub = split.subset([3, 1])
    assert len(sub) == 2
    assert torch.equal(sub.images[0], split.images[3])
    assert torch.equal(sub.targets["normal"][1], split.targets["normal"][1])
    moved = sub.to("cpu")
    assert moved.device == torch.device("cpu")
    images, targets = split.batch(torch.tensor([4, 0]))
    assert torch.equal(images[0], split.images[4])
    assert torch.equal(targets["segmentation"][1], split.targets["segmentation"][0])


def test_paper_splits_hold_out_val_from_train(nyu_root: Path) -> None:
    train, val, test = paper_splits(nyu_root, "nyuv2", val_size=4, seed=3)
    assert (len(train), len(val), len(test)) == (8, 4, 5)
    full = load_mtan(nyu_root, "nyuv2", "train")
    train_idx, val_idx = holdout_indices(12, 4, 3)
    assert set(train_idx.tolist()).isdisjoint(val_idx.tolist())
    assert sorted([*train_idx.tolist(), *val_idx.tolist()]) == list(range(12))
    assert torch.equal(val.images, full.images[torch.as_tensor(val_idx)])
    assert torch.equal(train.images, full.images[torch.as_tensor(train_idx)])
    # No validation image is a training image.
    flat_train = train.images.flatten(1)
    for image in val.images.flatten(1):
        assert not (flat_train == image).all(dim=1).any()
    assert torch.equal(test.images, load_mtan(nyu_root, "nyuv2", "val").images)
    again = paper_splits(nyu_root, "nyuv2", val_size=4, seed=3)[1]
    assert torch.equal(again.images, val.images)
    other = paper_splits(nyu_root, "nyuv2", val_size=4, seed=4)[1]
    assert not torch.equal(other.images, val.images)
    with pytest.raises(ValueError, match="val_size"):
        paper_splits(nyu_root, "nyuv2", val_size=12, seed=0)


def test_paper_constants() -> None:
    assert TASKS["nyuv2"] == {"segmentation": "label", "depth": "depth", "normal": "normal"}
    assert TASKS["cityscapes"] == {"segmentation": "label_7", "depth": "depth"}
    assert NUM_CLASSES == {"nyuv2": 13, "cityscapes": 7}


# --- hand-made real-format fixture ------------------------------------------------------------


def _write_real_format(root: Path, n_train: int, n_val: int) -> dict[str, list[np.ndarray]]:
    """NYUv2-like arrays as the MTAN release might store them: float64, H×W depth."""
    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True)
        for i in range(n):
            normal = rng.normal(size=(H, W, 3))
            normal /= np.linalg.norm(normal, axis=2, keepdims=True)
            depth = rng.uniform(0.5, 10.0, size=(H, W))
            hole = rng.uniform(size=(H, W)) < 0.1
            depth[hole] = 0.0
            normal[hole] = 0.0
            arrays = {
                "image": rng.uniform(size=(H, W, 3)),
                "label": rng.integers(-1, 13, size=(H, W)).astype(np.float64),
                "depth": depth,
                "normal": normal,
            }
            for folder, array in arrays.items():
                assert array.dtype == np.float64
                np.save(root / split / folder / f"{i}.npy", array)
                if split == "train":
                    written.setdefault(folder, []).append(array)
    return written


def test_real_format_float64_fixture_loads(tmp_path: Path) -> None:
    written = _write_real_format(tmp_path, 4, 2)
    split = load_mtan(tmp_path, "nyuv2", "train")
    assert split.images.dtype == torch.float32
    assert split.targets["segmentation"].dtype == torch.int64
    assert split.targets["depth"].shape == (4, 1, H, W)
    np.testing.assert_allclose(
        split.images[2].numpy(), written["image"][2].transpose(2, 0, 1), rtol=1e-6
    )
    np.testing.assert_array_equal(split.targets["segmentation"][1].numpy(), written["label"][1])
    np.testing.assert_allclose(split.targets["depth"][3, 0].numpy(), written["depth"][3], rtol=1e-6)
    np.testing.assert_allclose(
        split.targets["normal"][0].numpy(), written["normal"][0].transpose(2, 0, 1), rtol=1e-6
    )
    # Integer labels are accepted too.
    np.save(tmp_path / "train" / "label" / "0.npy", written["label"][0].astype(np.int32))
    again = load_mtan(tmp_path, "nyuv2", "train", tasks=["segmentation"])
    np.testing.assert_array_equal(again.targets["segmentation"][0].numpy(), written["label"][0])
    train, val, test = paper_splits(tmp_path, "nyuv2", val_size=1, seed=0)
    assert (len(train), len(val), len(test)) == (3, 1, 2)


# --- malformed files ----------------------------------------------------------------------------


def _corrupt(root: Path, folder: str, index: int, array: np.ndarray) -> Path:
    path = root / "train" / folder / f"{index}.npy"
    np.save(path, array)
    return path


def _expect_error(root: Path, named: Path | str, match: str, **kwargs: object) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        load_mtan(root, "nyuv2", "train", **kwargs)  # type: ignore[arg-type]
    assert str(named) in str(info.value)


def test_wrong_shape_names_the_file(nyu_copy: Path) -> None:
    path = _corrupt(nyu_copy, "depth", 4, np.ones((H, W, 2), dtype=np.float32))
    _expect_error(nyu_copy, path, "depth")


def test_label_shape_must_match_image(nyu_copy: Path) -> None:
    path = _corrupt(nyu_copy, "label", 2, np.zeros((H, W + 1), dtype=np.float32))
    _expect_error(nyu_copy, path, "label")


def test_image_must_be_hw3_float(nyu_copy: Path) -> None:
    path = _corrupt(nyu_copy, "image", 1, np.zeros((3, H, W), dtype=np.float32))
    _expect_error(nyu_copy, path, "H x W x 3")
    path = _corrupt(nyu_copy, "image", 1, np.zeros((H, W, 3), dtype=np.uint8))
    _expect_error(nyu_copy, path, "float")


def test_normal_shape(nyu_copy: Path) -> None:
    path = _corrupt(nyu_copy, "normal", 0, np.zeros((H, W), dtype=np.float32))
    _expect_error(nyu_copy, path, "normal")


def test_nan_names_the_file(nyu_copy: Path) -> None:
    image = np.load(nyu_copy / "train" / "image" / "5.npy")
    image[3, 4, 1] = np.nan
    path = _corrupt(nyu_copy, "image", 5, image)
    _expect_error(nyu_copy, path, "NaN")
    depth = np.load(nyu_copy / "train" / "depth" / "6.npy")
    depth[0, 0, 0] = np.inf
    _corrupt(nyu_copy, "image", 5, np.zeros((H, W, 3), dtype=np.float32))
    path = _corrupt(nyu_copy, "depth", 6, depth)
    _expect_error(nyu_copy, path, "NaN/inf")


def test_label_out_of_range_names_the_file(nyu_copy: Path) -> None:
    label = np.load(nyu_copy / "train" / "label" / "7.npy")
    label[0, 0] = 13
    path = _corrupt(nyu_copy, "label", 7, label)
    _expect_error(nyu_copy, path, r"\{-1, 0\.\.12\}")
    label[0, 0] = -2
    _corrupt(nyu_copy, "label", 7, label)
    _expect_error(nyu_copy, path, "range")
    label[0, 0] = 2.5
    _corrupt(nyu_copy, "label", 7, label)
    _expect_error(nyu_copy, path, "non-integer")


def test_missing_index_names_the_file(nyu_copy: Path) -> None:
    missing = nyu_copy / "train" / "depth" / "3.npy"
    missing.unlink()
    _expect_error(nyu_copy, missing, "missing")


def test_count_mismatch_between_modalities(nyu_copy: Path) -> None:
    extra = _corrupt(nyu_copy, "normal", 12, np.zeros((H, W, 3), dtype=np.float32))
    _expect_error(nyu_copy, extra.parent, "different numbers")
    # Loading only tasks that agree still works.
    assert len(load_mtan(nyu_copy, "nyuv2", "train", tasks=["depth"])) == 12


def test_missing_modality_folder(nyu_copy: Path) -> None:
    folder = nyu_copy / "train" / "normal"
    shutil.rmtree(folder)
    _expect_error(nyu_copy, folder, "missing")
    assert load_mtan(nyu_copy, "nyuv2", "train", tasks=["segmentation", "depth"]).tasks == (
        "segmentation",
        "depth",
    )


def test_missing_root_and_split(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing") as info:
        load_mtan(tmp_path / "nowhere", "nyuv2", "train")
    assert "nowhere" in str(info.value)
    tmp_path.joinpath("train").mkdir()
    with pytest.raises(DatasetError, match="missing") as info:
        load_mtan(tmp_path, "nyuv2", "val")
    assert str(tmp_path / "val") in str(info.value)


def test_unreadable_file(nyu_copy: Path) -> None:
    path = nyu_copy / "train" / "label" / "1.npy"
    path.write_bytes(b"not a numpy file")
    _expect_error(nyu_copy, path, "cannot be read")


def _empty(path: Path) -> str:
    path.write_bytes(b"")
    return "the file is empty: 0 bytes"


def _cut_header(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:40])
    return "truncated or damaged header"


def _cut_payload(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    return f"truncated: {len(data) - 100} bytes, its header announces {len(data)}"


def _cut_magic(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:3])
    return "only 3 bytes, too short for a .npy header"


@pytest.mark.parametrize("damage", [_empty, _cut_header, _cut_payload, _cut_magic])
@pytest.mark.parametrize("where", ["train/depth/3.npy", "train/image/0.npy", "train/normal/11.npy"])
def test_empty_or_truncated_file_is_named_with_what_to_do(
    nyu_copy: Path, damage: object, where: str
) -> None:
    path = nyu_copy / where
    why = damage(path)  # type: ignore[operator]
    with pytest.raises(DatasetError) as info:
        load_mtan(nyu_copy, "nyuv2", "train")
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be read as a .npy array ({why}")
    assert "delete the dataset folder and prepare it again" in message
    assert "mtlp prepare-mtan" in message
    assert "\n" not in message
    if where.endswith("/0.npy"):  # check_layout reads the first file of every folder
        with pytest.raises(DatasetError, match=r"cannot be read as a \.npy array"):
            check_layout(nyu_copy, "nyuv2")
