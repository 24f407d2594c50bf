"""Synthetic scenes: settings, determinism, the written folder, and rendered geometry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mtl_paradigms.data import load_mtan
from mtl_paradigms.data.synthetic import (
    SyntheticSettings,
    class_names,
    fine_to_coarse,
    generate_scene,
    render_scene,
    scenes,
    write_synthetic_mtan,
)
from mtl_paradigms.settings import SettingsError

TINY = {"num_train": 4, "num_val": 2, "height": 24, "width": 32}


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"dataset": "kitti"}, "dataset"),
        ({"num_train": 0}, "num_train"),
        ({"num_val": -1}, "num_val"),
        ({"height": 4}, "height"),
        ({"width": 2.5}, "width"),
        ({"num_classes": 3}, "num_classes"),
        ({"num_classes": 20, "dataset": "cityscapes"}, "num_classes"),
        ({"max_objects": -1}, "max_objects"),
        ({"noise_std": float("nan")}, "noise_std"),
        ({"noise_std": -0.1}, "noise_std"),
        ({"seed": -3}, "seed"),
    ],
)
def test_settings_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticSettings(**overrides)


def test_settings_from_mapping() -> None:
    settings = SyntheticSettings.from_mapping({"dataset": "cityscapes", "num_train": 3})
    assert settings.classes == 7
    assert settings.folders == ("image", "label_7", "label_19", "depth")
    assert SyntheticSettings().classes == 13
    with pytest.raises(SettingsError, match="colour"):
        SyntheticSettings.from_mapping({"colour": 1})


# --- scenes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["nyuv2", "cityscapes"])
def test_scene_arrays(dataset: str) -> None:
    settings = SyntheticSettings(dataset=dataset, **TINY)  # type: ignore[arg-type]
    arrays = generate_scene(settings, "train", 0)
    assert tuple(arrays) == settings.folders
    assert all(a.dtype == np.float32 for a in arrays.values())
    assert arrays["image"].shape == (24, 32, 3)
    assert arrays["image"].min() >= 0.0
    assert arrays["image"].max() <= 1.0
    assert arrays["depth"].shape == (24, 32, 1)
    label = arrays["label" if dataset == "nyuv2" else "label_7"]
    assert label.shape == (24, 32)
    assert label.min() >= -1
    assert label.max() < settings.classes
    if dataset == "nyuv2":
        assert arrays["normal"].shape == (24, 32, 3)
    else:
        fine = arrays["label_19"]
        valid = fine >= 0
        assert np.array_equal(valid, label >= 0)
        assert np.array_equal(np.asarray(fine_to_coarse(7))[fine[valid].astype(int)], label[valid])


def test_every_class_occurs() -> None:
    settings = SyntheticSettings(height=24, width=32)
    seen = set()
    for index in range(30):
        seen |= set(np.unique(generate_scene(settings, "train", index)["label"]).tolist())
    assert seen == set(range(-1, 13))
    assert len(class_names(settings)) == 13


def test_num_classes_setting() -> None:
    settings = SyntheticSettings(num_classes=5, height=24, width=32)
    labels = np.stack([generate_scene(settings, "val", i)["label"] for i in range(10)])
    assert labels.max() == 4


def test_images_are_seeded_per_index() -> None:
    small = SyntheticSettings(**{**TINY, "num_train": 3})
    large = SyntheticSettings(**{**TINY, "num_train": 50})
    for key, value in generate_scene(small, "train", 2).items():
        assert np.array_equal(value, generate_scene(large, "train", 2)[key])
    other_split = generate_scene(small, "val", 2)["image"]
    assert not np.array_equal(other_split, generate_scene(small, "train", 2)["image"])


# --- writing ------------------------------------------------------------------------------------


def test_write_is_deterministic(tmp_path: Path) -> None:
    settings = SyntheticSettings(dataset="cityscapes", **TINY)
    first = _tree_digest(write_synthetic_mtan(settings, tmp_path / "a"))
    second = _tree_digest(write_synthetic_mtan(settings, tmp_path / "b"))
    assert first == second
    assert len(first) == 6 * 4 + 1
    reseeded = SyntheticSettings(dataset="cityscapes", seed=1, **TINY)
    third = _tree_digest(write_synthetic_mtan(reseeded, tmp_path / "c"))
    assert third["train/image/0.npy"] != first["train/image/0.npy"]


def test_parallel_write_gives_the_same_files(tmp_path: Path) -> None:
    settings = SyntheticSettings(**{**TINY, "num_train": 20})
    serial = _tree_digest(write_synthetic_mtan(settings, tmp_path / "serial", workers=1))
    parallel = _tree_digest(write_synthetic_mtan(settings, tmp_path / "parallel", workers=2))
    assert serial == parallel
    with pytest.raises(ValueError, match="workers"):
        write_synthetic_mtan(settings, tmp_path / "never", workers=0)


def test_written_folder_and_metadata(tmp_path: Path) -> None:
    settings = SyntheticSettings(**TINY)
    out = write_synthetic_mtan(settings, tmp_path / "nyu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nyu"], "no temporary leftovers"
    for split, n in (("train", 4), ("val", 2)):
        for folder in ("image", "label", "depth", "normal"):
            assert sorted(p.name for p in (out / split / folder).iterdir()) == [
                f"{i}.npy" for i in range(n)
            ]
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["settings"]["num_train"] == 4
    assert meta["num_classes"] == {"label": 13}
    with pytest.raises(FileExistsError):
        write_synthetic_mtan(settings, out)
    write_synthetic_mtan(SyntheticSettings(**{**TINY, "num_val": 1}), out, overwrite=True)
    assert len(list((out / "val" / "image").iterdir())) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nyu"]


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = scenes.generate_scene

    def failing(settings: SyntheticSettings, split: str, index: int) -> dict[str, np.ndarray]:
        if split == "val":
            raise KeyboardInterrupt
        return real(settings, split, index)

    monkeypatch.setattr(scenes, "generate_scene", failing)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_mtan(SyntheticSettings(**TINY), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_custom_num_classes_round_trip(tmp_path: Path) -> None:
    settings = SyntheticSettings(num_classes=20, num_train=6, num_val=2, height=24, width=32)
    out = write_synthetic_mtan(settings, tmp_path / "many")
    split = load_mtan(out, "nyuv2", "train")
    assert int(split.targets["segmentation"].max()) < 20


# --- geometry -----------------------------------------------------------------------------------


def _backproject(scene: scenes.Scene, depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) camera-frame points from depth along the optical axis."""
    rays = scene.camera.pixel_rays().T.reshape(*depth.shape, 3)
    return rays * depth[..., None]


def _to_world(scene: scenes.Scene, points: np.ndarray) -> np.ndarray:
    return points @ scene.camera.rotation.T + scene.camera.position


@pytest.mark.parametrize("index", range(4))
def test_room_floor_geometry(index: int) -> None:
    settings = SyntheticSettings(height=48, width=64)
    scene = render_scene(settings, "train", index)
    depth = scene.arrays["depth"][..., 0].astype(np.float64)
    normal = scene.arrays["normal"].astype(np.float64)
    floor = np.array([s.kind == "floor" for s in scene.surfaces])[scene.surface_ids]
    floor &= depth > 0
    assert floor.sum() > 50
    # Normals of floor pixels point up in the world frame.
    up = normal[floor] @ scene.camera.rotation.T
    np.testing.assert_allclose(up, np.tile([0.0, 1.0, 0.0], (len(up), 1)), atol=1e-6)
    # Back-projected floor pixels lie on the ground plane y = 0.
    world = _to_world(scene, _backproject(scene, depth))
    np.testing.assert_allclose(world[floor][:, 1], 0.0, atol=1e-4)
    # Without roll, floor depth depends on the row only and grows toward the horizon (upwards).
    rows = [depth[v][floor[v]] for v in range(depth.shape[0]) if floor[v].any()]
    per_row = np.array([r.mean() for r in rows])
    assert max(np.ptp(r) / r.mean() for r in rows) < 1e-5
    assert np.all(np.diff(per_row) < 0)


def test_sphere_normals_face_the_camera() -> None:
    settings = SyntheticSettings(height=96, width=128, max_objects=6)
    checked = 0
    for index in range(6):
        scene = render_scene(settings, "val", index)
        depth = scene.arrays["depth"][..., 0].astype(np.float64)
        normal = scene.arrays["normal"].astype(np.float64)
        points = _backproject(scene, depth)
        for k, surface in enumerate(scene.surfaces):
            mask = (scene.surface_ids == k) & (depth > 0)
            if surface.kind != "sphere" or mask.sum() < 20:
                continue
            center = scene.camera.rotation.T @ (
                np.asarray(surface.shape.center) - scene.camera.position
            )
            offset = points[mask] - center
            np.testing.assert_allclose(
                np.linalg.norm(offset, axis=1), surface.shape.radius, rtol=1e-4
            )
            np.testing.assert_allclose(normal[mask], offset / surface.shape.radius, atol=1e-3)
            assert np.all((normal[mask] * points[mask]).sum(axis=1) < 0)
            checked += 1
    assert checked >= 3


def test_street_disparity_and_sky() -> None:
    settings = SyntheticSettings(dataset="cityscapes", height=64, width=128)
    for index in range(3):
        scene = render_scene(settings, "train", index)
        disparity = scene.arrays["depth"][..., 0].astype(np.float64)
        sky = scene.surface_ids < 0
        assert sky.any()
        assert np.array_equal(disparity == 0, sky)
        assert np.array_equal(scene.arrays["label_7"] == -1, sky)
        assert 0.0 < disparity.max() < 0.8
        road = np.array([s.kind == "road" for s in scene.surfaces])[scene.surface_ids] & ~sky
        assert road.sum() > 50
        # Disparity C / z back-projects road pixels onto the ground plane y = 0.
        depth = np.zeros_like(disparity)
        depth[road] = scenes.DISPARITY_CONSTANT / disparity[road]
        world = _to_world(scene, _backproject(scene, depth))
        np.testing.assert_allclose(world[road][:, 1], 0.0, atol=1e-5 * depth.max())
