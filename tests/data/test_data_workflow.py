"""The real data rules in a temporary copy of the workflow, fed by the loopback server.

Download (from a mirror URL) -> verify -> extract / prepare, through `snakemake`, then a batch
is loaded from what the rules built. Also: nothing is downloaded for a dataset on disk
(`data_dir`) or a local archive (`data.local`); a 404 and a path-traversal archive stop the
workflow with the stated message and leave no output.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtl_paradigms.data.celeba import celeba_splits
from mtl_paradigms.data.mnist import multimnist_splits
from mtl_paradigms.data.mtan import paper_splits

from . import releases
from .loopback import Loopback

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CELEBA = ["img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt"]
TARGETS = [
    "results/data/nyuv2.verified.json",
    "results/data/cityscapes.verified.json",
    "data/prepared/celeba_real_32",
    "data/prepared/multimnist_real",
    "data/torch/hub/checkpoints/resnet18-f37072fd.pth",
]


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "notebooks", "envs"):
        src = ROOT / name
        if src.is_dir():
            ignore = shutil.ignore_patterns(".snakemake", "__pycache__")
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", *args, "--configfile", "data.yaml"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def write_config(workdir: Path, mirrors: dict[str, list[str]], **sections: object) -> None:
    default = yaml.safe_load((workdir / "workflow/config/default.yaml").read_text())
    tasks = {"nyuv2": ["segmentation", "depth", "normal"], "cityscapes": ["segmentation", "depth"]}
    config: dict[str, object] = {
        "stages": dict.fromkeys(default["stages"], False),
        "data": {"builtin_urls": False, "mirrors": mirrors, "retries": 1, "backoff": 0.01},
        "main": {
            "panels": [{"dataset": d, "arch": "segnet"} for d in tasks],
            "datasets": {d: {"source": "real", "tasks": t} for d, t in tasks.items()},
        },
        "celeba": {"source": "real", "size": 32},
        "multimnist": {"source": "real"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}  # type: ignore[dict-item]
    (workdir / "data.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The loopback server with every release, and the mirror config pointing at it."""
    from .loopback import serve

    work = tmp_path_factory.mktemp("releases")
    with serve() as server:
        mirrors = {
            "nyuv2/nyuv2.zip": [server.add("mtan/nyuv2.zip", releases.mtan_zip(work, "nyuv2"))],
            "cityscapes/cityscapes.zip": [
                server.add("mtan/cs.zip", releases.mtan_zip(work, "cityscapes", nested=True))
            ],
        }
        # The stand-ins are not the official files: their md5 replaces the known one.
        checksums = {}
        for src, files in (
            ("celeba", releases.celeba_files(work)),
            ("mnist", releases.mnist_files(work)),
        ):
            for name, body in files.items():
                mirrors[f"{src}/{name}"] = [server.add(f"{src}/{name}", body)]
                checksums[f"{src}/{name}"] = {"md5": hashlib.md5(body).hexdigest()}
        # torchvision's ResNet-18 checkpoint: random weights under the official file name.
        torch.manual_seed(0)
        from mtl_paradigms.models.resnet import resnet18_encoder

        weights = io.BytesIO()
        torch.save(resnet18_encoder().state_dict(), weights)
        key = "weights/resnet18-f37072fd.pth"
        mirrors[key] = [server.add("resnet18.pth", weights.getvalue())]
        checksums[key] = {"sha256": hashlib.sha256(weights.getvalue()).hexdigest()}
        yield server, mirrors, checksums


@pytest.fixture(scope="module")
def built(served, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    _, mirrors, checksums = served
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    write_config(workdir, mirrors, data={"checksums": checksums})
    proc = snakemake(workdir, *TARGETS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return workdir


@pytest.mark.slow
def test_rules_download_verify_prepare_and_a_batch_loads(served, built: Path) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    # each file was fetched once, and the first-download sha256 of the MTAN zips recorded
    assert server.requests("mtan/nyuv2.zip") == [None]
    record = yaml.safe_load((built / "data/checksums.json").read_text())
    assert {"nyuv2/nyuv2.zip", "cityscapes/cityscapes.zip"} <= set(record)
    for name in CELEBA:
        assert (built / "data/downloads/celeba" / name).is_file()

    train, val, test = paper_splits(built / "data/nyuv2", "nyuv2", val_size=1, seed=0)
    images, targets = train.batch(torch.arange(2))
    assert images.shape == (2, 3, releases.H, releases.W)
    assert set(targets) == {"segmentation", "depth", "normal"}
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    # Cityscapes came as a zip inside a zip; both label sets are there.
    for labels in ("label_7", "label_19"):
        assert (built / "data/cityscapes/train" / labels / "3.npy").is_file()

    train, val, test = celeba_splits(built / "data/prepared/celeba_real_32")
    images, targets = train.batch(torch.arange(4))
    assert images.shape == (4, 3, 32, 32)
    assert images.dtype == torch.uint8
    assert len(targets) == 13
    assert {float(v) for t in targets.values() for v in t} <= {0.0, 1.0}
    assert (len(train), len(val), len(test)) == (16, 4, 4)

    train, _, test = multimnist_splits(built / "data/prepared/multimnist_real", 100, 0)
    assert train["image"].shape[1:] == (1, 28, 28)
    assert set(np.unique(train["label_left"])) <= set(range(10))


@pytest.mark.slow
def test_downloaded_weights_load_through_torchvision(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtl_paradigms.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(built / "data/torch"))
    state = torch.load(built / TARGETS[-1], weights_only=True)
    model = build_model("resnet18", {"a": 1}, pretrained=True)
    torch.testing.assert_close(model.encoder.layer3[0].conv2.weight, state["layer3.0.conv2.weight"])


def test_pretrained_configs_put_the_weights_in_the_dag(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    write_config(
        workdir, {},
        main={"panels": [{"dataset": "nyuv2", "arch": "deeplabv3"}],
              "archs": {"deeplabv3": {"pretrained": True}}},
        celeba={"source": "synthetic", "train": {"pretrained": True}},
        stages={"main": True, "celeba": True},
    )  # fmt: skip
    proc = snakemake(workdir, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "data/torch/hub/checkpoints/resnet50-0676ba61.pth" in out
    assert "data/torch/hub/checkpoints/resnet18-f37072fd.pth" in out
    assert "TORCH_HOME=data/torch mtlp train" in out or "rule download_weights:" in out


@pytest.mark.slow
def test_a_second_run_downloads_nothing(served, built: Path) -> None:  # type: ignore[no-untyped-def]
    server, _, _ = served
    before = len(server.log)
    proc = snakemake(built, *TARGETS, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert len(server.log) == before


def test_data_on_disk_means_no_download_and_local_files_are_linked(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    files = releases.mnist_files(tmp_path)
    local = {f"mnist/{name}": str(tmp_path / "mnist" / name) for name in files}
    checksums = {f"mnist/{n}": {"md5": hashlib.md5(b).hexdigest()} for n, b in files.items()}
    on_disk = {"source": "real", "tasks": ["depth"]}
    write_config(
        workdir, {},
        main={"datasets": {"nyuv2": {**on_disk, "data_dir": "/elsewhere/nyuv2"},
                           "cityscapes": {**on_disk, "data_dir": "/elsewhere/cs"}}},
        celeba={"source": "real", "data_dir": "/elsewhere/celeba", "size": 32},
        data={"local": local, "checksums": checksums},
    )  # fmt: skip
    proc = snakemake(workdir, *TARGETS, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rule in ("verify_dataset", "prepare_celeba", "build_multimnist"):
        assert f"rule {rule}:" in out
    assert "rule prepare_mtan:" not in out
    assert out.count("rule download:") == 4  # the MNIST files: linked, not downloaded
    assert "celeba/img_align_celeba.zip" not in out
    # No URL is configured (builtin_urls off, no mirror): only the local copies can work.
    proc = snakemake(workdir, "data/prepared/multimnist_real")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in files:
        assert (workdir / "data/downloads/mnist" / name).is_symlink()
    assert (workdir / "data/prepared/multimnist_real/train/image.npy").is_file()


def test_404_and_unsafe_archive_stop_the_workflow_with_no_output(
    loopback: Loopback, tmp_path: Path
) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("nyuv2/train/image/0.npy", b"x")
        zf.writestr("../../escaped.npy", b"x")
    mirrors = {
        "nyuv2/nyuv2.zip": [loopback.add("bad.zip", buffer.getvalue())],
        "cityscapes/cityscapes.zip": [loopback.url("missing.zip")],
    }
    write_config(workdir, mirrors)
    proc = snakemake(workdir, TARGETS[0], TARGETS[1], "--keep-going")
    assert proc.returncode != 0
    download_log = (workdir / "results/logs/download/cityscapes/cityscapes.zip.log").read_text()
    assert "HTTP 404" in download_log
    assert loopback.url("missing.zip") in download_log
    assert "Expected content" in download_log
    prepare_log = (workdir / "results/logs/prepare_mtan/nyuv2.log").read_text()
    assert "'../../escaped.npy'" in prepare_log
    assert "refusing to extract" in prepare_log
    assert not (workdir / "data/nyuv2").exists()
    assert not (workdir / "data/downloads/cityscapes/cityscapes.zip").exists()
    assert not (tmp_path / "escaped.npy").exists()
    assert not list((workdir / "data").glob(".nyuv2*"))
