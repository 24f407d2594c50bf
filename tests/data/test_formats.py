"""CelebA, MNIST/Multi-MNIST and MTAN releases: formats, preparation, and errors naming files."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_paradigms.data import sources
from mtl_paradigms.data.celeba import (
    ATTR_FILE,
    PARTITION_FILE,
    celeba_splits,
    prepare_celeba,
    read_attributes,
)
from mtl_paradigms.data.download import ExtractionError
from mtl_paradigms.data.mnist import (
    MultiMNISTSettings,
    build_multimnist,
    load_multimnist,
    read_idx,
    write_idx,
)
from mtl_paradigms.data.mtan import DatasetError, check_layout
from mtl_paradigms.data.prepare import prepare_mtan
from mtl_paradigms.data.synthetic.celeba import ATTRIBUTES, SyntheticCelebASettings

from . import releases

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def celeba_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("celeba")
    for name, body in releases.celeba_files(work / "files", num_images=40).items():
        (work / name).write_bytes(body)
    return work


@pytest.fixture(scope="module")
def mnist_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("mnist")
    for name, body in releases.mnist_files(work / "files").items():
        (work / name).write_bytes(body)
    return work


# ---- CelebA ----------------------------------------------------------------------------------


def test_synthetic_celeba_is_in_the_official_layout(celeba_raw: Path) -> None:
    lines = (celeba_raw / ATTR_FILE).read_text().splitlines()
    assert lines[0] == "40"
    assert lines[1].split() == list(ATTRIBUTES)
    assert lines[2].startswith("000001.jpg ")
    with zipfile.ZipFile(celeba_raw / "img_align_celeba.zip") as zf:
        from PIL import Image

        with Image.open(io.BytesIO(zf.read("img_align_celeba/000040.jpg"))) as img:
            assert (img.format, img.size) == ("JPEG", (178, 218))
    parts = [line.split()[1] for line in (celeba_raw / PARTITION_FILE).read_text().splitlines()]
    assert parts == ["0"] * 28 + ["1"] * 6 + ["2"] * 6


def test_synthetic_attributes_differ_in_frequency_and_are_deterministic(tmp_path: Path) -> None:
    assert len(ATTRIBUTES) >= 10
    settings = SyntheticCelebASettings(num_images=400, seed=3)
    from mtl_paradigms.data.synthetic.celeba import write_synthetic_celeba

    a = write_synthetic_celeba(settings, tmp_path / "a")
    b = write_synthetic_celeba(settings, tmp_path / "b")
    for name in (ATTR_FILE, PARTITION_FILE, "img_align_celeba.zip"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    names, _, values = read_attributes(a / ATTR_FILE)
    freq = dict(zip(names, values.mean(axis=0), strict=True))
    assert freq["Eyeglasses"] < 0.15 < freq["Wearing_Hat"] + 0.1 < freq["Dark_Background"]
    assert values[:, names.index("Mustache")].max() <= 1
    # Mustache only on Male faces, as in CelebA
    assert not (values[:, names.index("Mustache")] & (1 - values[:, names.index("Male")])).any()


def test_prepare_and_load_celeba(celeba_raw: Path, tmp_path: Path) -> None:
    out = prepare_celeba(celeba_raw, tmp_path / "prepared", size=16, threads=2)
    train, val, test = celeba_splits(out)
    assert (len(train), len(val), len(test)) == (28, 6, 6)
    assert train.images.shape == (28, 3, 16, 16)
    assert train.images.dtype == torch.uint8
    assert train.tasks == tuple(ATTRIBUTES)
    _, _, values = read_attributes(celeba_raw / ATTR_FILE)
    assert torch.equal(train.targets["Male"], torch.from_numpy(values[:28, 4].astype(np.float32)))
    subset = celeba_splits(out, attributes=["Smiling", "Noisy"])[2]
    assert subset.tasks == ("Smiling", "Noisy")
    # a dark background is dark after preparation
    dark = train.targets["Dark_Background"] == 1
    corner = train.images[:, :, 0, 0].float().mean(dim=1)
    assert corner[dark].mean() < corner[~dark].mean()


def test_celeba_from_the_extracted_image_folder(celeba_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw" / "celeba"  # torchvision's layout: <root>/celeba/img_align_celeba/
    raw.mkdir(parents=True)
    for name in (ATTR_FILE, PARTITION_FILE):
        shutil.copy(celeba_raw / name, raw / name)
    with zipfile.ZipFile(celeba_raw / "img_align_celeba.zip") as zf:
        zf.extractall(raw)
    a = prepare_celeba(tmp_path / "raw", tmp_path / "a", size=16)
    b = prepare_celeba(celeba_raw, tmp_path / "b", size=16)
    assert (a / "images.npy").read_bytes() == (b / "images.npy").read_bytes()


def test_celeba_missing_image_is_named_and_nothing_is_written(
    celeba_raw: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(celeba_raw, raw)
    with (
        zipfile.ZipFile(celeba_raw / "img_align_celeba.zip") as src,
        zipfile.ZipFile(raw / "img_align_celeba.zip", "w") as dst,
    ):
        for info in src.infolist():
            if not info.filename.endswith("000007.jpg"):
                dst.writestr(info, src.read(info))
    with pytest.raises(DatasetError, match=r"000007\.jpg"):
        prepare_celeba(raw, tmp_path / "out", size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda lines: lines[:2] + lines[3:], "announces 40 images"),
        (lambda lines: [*lines[:5], lines[5] + " 1", *lines[6:]], "line 6 has 14 values"),
        (lambda lines: [*lines[:3], lines[3].replace("-1", "0", 1), *lines[4:]], "-1 or 1"),
    ],
)
def test_malformed_attribute_file_is_named(
    celeba_raw: Path, tmp_path: Path, edit: object, message: str
) -> None:
    lines = (celeba_raw / ATTR_FILE).read_text().splitlines()
    path = tmp_path / ATTR_FILE
    path.write_text("\n".join(edit(lines)) + "\n")  # type: ignore[operator]
    with pytest.raises(DatasetError, match=message) as err:
        read_attributes(path)
    assert str(path) in str(err.value)


def test_misshaped_prepared_array_is_named(celeba_raw: Path, tmp_path: Path) -> None:
    out = prepare_celeba(celeba_raw, tmp_path / "prepared", size=16)
    np.save(out / "attributes.npy", np.zeros((40, 3), dtype=np.uint8))
    with pytest.raises(DatasetError, match=r"attributes\.npy: expected shape"):
        celeba_splits(out)
    (out / "partition.npy").unlink()
    with pytest.raises(DatasetError, match=r"partition\.npy: missing"):
        celeba_splits(out)


@pytest.mark.parametrize("name", ["images.npy", "attributes.npy", "partition.npy"])
@pytest.mark.parametrize("keep", [0, 60, -7], ids=["empty", "cut-header", "cut-payload"])
def test_empty_or_truncated_prepared_array_is_named(
    celeba_raw: Path, tmp_path: Path, name: str, keep: int
) -> None:
    out = prepare_celeba(celeba_raw, tmp_path / "prepared", size=16)
    path = out / name
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetError) as err:
        celeba_splits(out)
    message = str(err.value)
    assert message.startswith(f"{path}: cannot be read as a .npy array (")
    assert "delete the prepared folder and run mtlp prepare-celeba again" in message
    assert "\n" not in message


# ---- MNIST and Multi-MNIST -------------------------------------------------------------------


def test_idx_roundtrip_and_truncation_named(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    assert np.array_equal(read_idx(path, 0x803), array)
    data = gzip.decompress(path.read_bytes())
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(data[:-5])
    with pytest.raises(DatasetError, match="bad-idx3-ubyte: header announces shape"):
        read_idx(bad, 0x803)
    with pytest.raises(DatasetError, match="magic"):
        read_idx(bad, 0x801)


def test_multimnist_is_deterministic_and_overlays_two_digits(
    mnist_raw: Path, tmp_path: Path
) -> None:
    a = build_multimnist(mnist_raw, tmp_path / "a")
    b = build_multimnist(mnist_raw, tmp_path / "b")
    train = load_multimnist(a, "train")
    assert np.array_equal(train["image"], load_multimnist(b, "train")["image"])
    assert train["image"].shape[1:] == (1, 28, 28)
    # the overlay is at least each digit alone, and the digits sit in different corners
    assert (train["image"].astype(int) + 1 >= train["recon_left"]).all()
    left_mass = train["recon_left"][:, 0, :14, :14].mean()
    assert left_mass > train["recon_left"][:, 0, 14:, 14:].mean()
    assert train["recon_right"][:, 0, 14:, 14:].mean() > train["recon_right"][:, 0, :14, :14].mean()
    other = build_multimnist(mnist_raw, tmp_path / "c", MultiMNISTSettings(seed=1))
    assert not np.array_equal(load_multimnist(other, "train")["label_right"], train["label_right"])
    json.loads((a / "multimnist.json").read_text())


@pytest.mark.parametrize("keep", [0, 30, -3], ids=["empty", "cut-header", "cut-payload"])
def test_empty_or_truncated_multimnist_array_is_named(
    mnist_raw: Path, tmp_path: Path, keep: int
) -> None:
    out = build_multimnist(mnist_raw, tmp_path / "mm")
    path = out / "test" / "label_right.npy"
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DatasetError) as err:
        load_multimnist(out, "test")
    message = str(err.value)
    assert message.startswith(f"{path}: cannot be read as a .npy array (")
    assert "run mtlp build-multimnist again" in message
    assert "\n" not in message


def test_missing_mnist_file_is_named(mnist_raw: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(mnist_raw, raw)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte"):
        build_multimnist(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- MTAN releases ---------------------------------------------------------------------------


def test_prepare_mtan_finds_a_nested_release(tmp_path: Path) -> None:
    archive = tmp_path / "cs.zip"
    archive.write_bytes(releases.mtan_zip(tmp_path, "cityscapes", nested=True))
    counts = prepare_mtan([archive], "cityscapes", tmp_path / "cityscapes")
    assert counts == {"train": 4, "val": 2}
    assert check_layout(tmp_path / "cityscapes", "cityscapes") == counts
    with pytest.raises(DatasetError, match="the MTAN release has"):
        check_layout(tmp_path / "cityscapes", "cityscapes", expect_sizes=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _rezip(tree: Path, out: Path) -> Path:
    out.write_bytes(releases.zip_tree(tree, "nyuv2"))
    return out


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda t: (t / "val/normal/0.npy").unlink(), "nyuv2/val/normal/0.npy: file is missing"),
        (
            lambda t: np.save(t / "train/label/0.npy", np.zeros((3, 3), np.float32)),
            "nyuv2.zip: nyuv2/train/label/0.npy: label must have shape",
        ),
        (lambda t: shutil.rmtree(t / "train/depth"), "train/depth: folder is missing"),
    ],
)
def test_damaged_release_is_named_and_leaves_no_output(
    tmp_path: Path, damage: object, named: str
) -> None:
    tree = releases.mtan_release(tmp_path, "nyuv2")
    damage(tree)  # type: ignore[operator]
    archive = _rezip(tree, tmp_path / "nyuv2.zip")
    with pytest.raises(DatasetError, match=named):
        prepare_mtan([archive], "nyuv2", tmp_path / "out" / "nyuv2")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_archive_without_a_release_is_reported(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(DatasetError, match="no nyuv2 release inside"):
        prepare_mtan([archive], "nyuv2", tmp_path / "nyuv2")
    with pytest.raises(ExtractionError, match="neither a zip nor a tar"):
        prepare_mtan([_text(tmp_path)], "nyuv2", tmp_path / "n2")


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "plain.zip"
    path.write_text("not an archive")
    return path


# ---- the source registry and the workflow agree ----------------------------------------------


def test_workflow_lists_the_registry_files() -> None:
    text = (ROOT / "workflow/rules/common_data.smk").read_text()
    start = text.index("DOWNLOAD_FILES = ")
    block = text[start : text.index("\n}\n", start) + 2]
    listed = eval(block.split("=", 1)[1])  # a plain dict literal
    registry = sources.file_names()
    assert listed == {k: v for k, v in registry.items() if k != "weights"}
    for arch, name in sources.WEIGHT_FILES.items():
        assert f'"{arch}": "{name}"' in text
        assert sources.source("weights").file(name).sha256_prefix in name
