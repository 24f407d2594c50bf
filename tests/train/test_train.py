"""The trainer on a tiny synthetic dataset: determinism, resume, divergence, method paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_paradigms.checkpoint import CheckpointError
from mtl_paradigms.methods import EW, METHODS, make_method
from mtl_paradigms.models import build_model
from mtl_paradigms.runs import build_baseline, read_metrics, runs_table
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import make_tasks
from mtl_paradigms.train import CHECKPOINT, HISTORY, METRICS, TrainSettings, train, training_step


@pytest.fixture(scope="module")
def data_dir(tiny_nyuv2: Callable[[int], Path]) -> Path:
    return tiny_nyuv2(24)


def settings(data_dir: Path, **overrides: object) -> TrainSettings:
    base = TrainSettings(
        dataset="nyuv2", data_dir=str(data_dir), val_size=8, arch="segnet", width=0.125,
        epochs=3, batch_size=8, eval_batch_size=8, lr=1e-3, lr_step_every=2, device="cpu",
        tasks=["segmentation"], selection="val_loss",
    )  # fmt: skip
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def baseline(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("stl")
    files = []
    for task in ("segmentation", "depth", "normal"):
        train(settings(data_dir, tasks=[task], epochs=2), root / task)
        files.append(root / task / METRICS)
    return build_baseline(files)


def mtl(data_dir: Path, **overrides: object) -> TrainSettings:
    return settings(data_dir, tasks=None, selection="delta_m", **overrides)


def test_single_task_run_writes_metrics_and_history(data_dir: Path, tmp_path: Path) -> None:
    metrics = train(settings(data_dir), tmp_path)
    saved = json.loads((tmp_path / METRICS).read_text())
    assert saved["diverged"] is False
    assert saved["selected_epoch"] in (1, 2, 3)
    assert set(saved["test"]) == {"segmentation/miou", "segmentation/pixacc"}
    assert saved == json.loads(json.dumps(metrics))
    history = pd.read_csv(tmp_path / HISTORY)
    assert list(history["epoch"]) == [1, 2, 3]
    assert list(history["lr"]) == pytest.approx([1e-3, 1e-3, 5e-4])  # halved every 2 epochs


@pytest.mark.parametrize("method", ["uw", "rlw"])  # rlw: random weights, unseeded by default
def test_same_settings_and_seed_give_identical_metrics(
    data_dir: Path, baseline: dict, tmp_path: Path, method: str
) -> None:
    a = train(mtl(data_dir, method=method), tmp_path / "a", baseline=baseline)
    b = train(mtl(data_dir, method=method), tmp_path / "b", baseline=baseline)
    assert a["test"] == b["test"]
    assert a["val_delta_m"] == b["val_delta_m"]
    c = train(mtl(data_dir, method=method, seed=1), tmp_path / "c", baseline=baseline)
    assert c["test"] != a["test"]


@pytest.mark.parametrize(
    ("method", "optimizer"),
    [("uw", "sgd"), ("famo", "adam"), ("auto_lambda", "adam"), ("gradnorm", "adam"),
     ("imtl", "adam"), ("adatask", "adam"), ("mtl_io", "sgd"), ("mtl_ius", "adam"),
     ("rotograd", "adam")],
)  # fmt: skip
def test_resume_after_a_kill_gives_the_same_metrics(
    data_dir: Path, baseline: dict, tmp_path: Path, method: str, optimizer: str
) -> None:
    # Stateful methods and strategies: their state (learnt weights, own optimizers, per-task
    # moments, task groups, path length) must survive the checkpoint exactly.
    run = mtl(data_dir, method=method, optimizer=optimizer, lr=0.01)
    full = train(run, tmp_path / "full", baseline=baseline)
    assert train(run, tmp_path / "cut", baseline=baseline, stop_after_epochs=1) == {}
    assert (tmp_path / "cut" / CHECKPOINT).exists()
    assert not (tmp_path / "cut" / METRICS).exists()  # an interrupted run has no results
    resumed = train(run, tmp_path / "cut", baseline=baseline)
    assert resumed["test"] == full["test"]
    assert resumed["selected_epoch"] == full["selected_epoch"]
    full_history = pd.read_csv(tmp_path / "full" / HISTORY).drop(columns="seconds")
    resumed_history = pd.read_csv(tmp_path / "cut" / HISTORY).drop(columns="seconds")
    pd.testing.assert_frame_equal(full_history, resumed_history)


def test_diverging_run_is_recorded_not_raised(
    data_dir: Path, baseline: dict, tmp_path: Path
) -> None:
    metrics = train(mtl(data_dir, optimizer="sgd", lr=1e6), tmp_path, baseline=baseline)
    assert metrics["diverged"] is True
    assert metrics["epochs_run"] < 3
    assert json.loads((tmp_path / METRICS).read_text())["diverged"] is True


def test_corrupt_checkpoint_is_reported_and_kept(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        train(settings(data_dir), tmp_path)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"not a checkpoint"


def test_delta_m_selection_needs_a_baseline(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="baseline"):
        train(mtl(data_dir), tmp_path)


@pytest.mark.parametrize(
    ("method", "optimizer"),
    [(m, o) for m in ("ew", "uwo", "pcgrad") for o in ("adam", "sgd", "signsgd")]
    + [(m, "adam") for m in sorted(METHODS) if m not in ("ew", "uwo", "pcgrad", "fixed")]
    + [("fixed", "adam")],
)
def test_every_method_and_optimizer_trains(
    data_dir: Path, baseline: dict, tmp_path: Path, method: str, optimizer: str
) -> None:
    params = {"weights": [0.5, 0.3, 0.2]} if method == "fixed" else {}
    # Three epochs, so that DWA's weights leave uniform (it needs two epochs of history).
    run = mtl(data_dir, method=method, method_params=params, optimizer=optimizer, epochs=3)
    metrics = train(run, tmp_path, baseline=baseline)
    assert metrics["diverged"] is False
    assert metrics["val_delta_m"] is not None
    if method == "dwa":
        weights = pd.read_csv(tmp_path / HISTORY).filter(like="weight/").to_numpy()
        assert np.allclose(weights[:2], 1 / 3)  # uniform until two epochs are known
        assert not np.allclose(weights[2], 1 / 3)


def test_ew_weighting_and_ew_aggregation_give_the_same_gradients() -> None:
    torch.manual_seed(0)
    tasks = make_tasks("nyuv2", 13)
    model = build_model("segnet", {k: t.out_channels for k, t in tasks.items()}, width=0.125)
    images = torch.rand(2, 3, 32, 32)
    targets = {
        "segmentation": torch.randint(-1, 13, (2, 32, 32)),
        "depth": torch.rand(2, 1, 32, 32),
        "normal": torch.nn.functional.normalize(torch.randn(2, 3, 32, 32), dim=1),
    }
    autocast = torch.autocast("cpu", enabled=False)

    class EWAggregator(EW):
        requires_grads = True  # force the per-task-gradient path

    grads = []
    for method in (EW(), EWAggregator()):
        model.zero_grad()
        training_step(model, tasks, method, images, targets, autocast)
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    # float32: the two paths sum the task gradients in different orders.
    scale = grads[0].abs().max().item()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5 * scale)


def test_runs_table_and_baseline(data_dir: Path, baseline: dict, tmp_path: Path) -> None:
    train(mtl(data_dir, epochs=1), tmp_path / "ew", baseline=baseline)
    table = runs_table([read_metrics(tmp_path / "ew" / METRICS)], {"nyuv2": "synthetic"})
    assert table.loc[0, "method"] == "ew"
    assert table.loc[0, "data_source"] == "synthetic"
    assert "normal/median" in table.columns
    assert set(baseline["selected"]) == {"segmentation", "depth", "normal"}
    assert set(baseline["val"]) >= {"segmentation/miou", "depth/abs_err", "normal/mean"}
    make_method("ew")  # registry import stays valid


def test_a_killed_process_resumes_to_the_same_metrics(
    data_dir: Path, baseline: dict, tmp_path: Path
) -> None:
    # CPU results are reproducible for a fixed number of threads (reductions are split by
    # thread), so every run here is a `mtlp train --threads 1` process, as in the workflow.
    run = mtl(data_dir, method="uwo", epochs=4)
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))

    def command(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "mtl_paradigms", "train", "--threads", "1",
            "--settings", json.dumps(asdict(run)), "--out", str(out),
            "--baseline", str(tmp_path / "baseline.json"),
        ]  # fmt: skip

    subprocess.run(command(tmp_path / "reference"), check=True, capture_output=True)
    proc = subprocess.Popen(
        command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = tmp_path / "killed" / CHECKPOINT
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), "the run ended before its first checkpoint"
    assert not (tmp_path / "killed" / METRICS).exists()
    subprocess.run(command(tmp_path / "killed"), check=True, capture_output=True)
    reference = json.loads((tmp_path / "reference" / METRICS).read_text())
    resumed = json.loads((tmp_path / "killed" / METRICS).read_text())
    assert resumed["test"] == reference["test"]
    assert resumed["selected_epoch"] == reference["selected_epoch"]
    assert resumed["epochs_run"] == 4


SWITCHES = {"fused_optimizer": True, "cudnn_benchmark": True, "compile": True}
CUDA_GRAPHS = {**SWITCHES, "compile_mode": "reduce-overhead"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("method", "switches"),
    [
        ("ew", {}),
        ("uwo", {}),
        ("pcgrad", {}),
        ("ew", SWITCHES),
        ("pcgrad", SWITCHES),
        ("ew", CUDA_GRAPHS),
        ("pcgrad", CUDA_GRAPHS),
        ("adatask", CUDA_GRAPHS),
        ("mtl_io", CUDA_GRAPHS),
    ],
    ids=[
        "ew",
        "uwo",
        "pcgrad",
        "ew-switches",
        "pcgrad-switches",
        "ew-cudagraphs",
        "pcgrad-cudagraphs",
        "adatask-cudagraphs",
        "mtl_io-cudagraphs",
    ],
)
def test_the_gpu_path_agrees_with_the_cpu_path(
    data_dir: Path, baseline: dict, tmp_path: Path, method: str, switches: dict
) -> None:
    # The same config and seed on CUDA (cuDNN's TF32 default, and for PCGrad the batched task
    # Jacobian) and on the CPU (per-task loop): the same data order and augmentations (drawn on
    # the CPU), the same initial weights; only floating-point rounding differs. Tolerance (README,
    # "Performance"): per-epoch training losses within 2 %, every validation and test metric of
    # every epoch within 5 % or 0.02, over three epochs of a tiny SegNet. With the speed
    # switches (fused Adam, cuDNN autotuning, torch.compile, also in mode reduce-overhead: CUDA
    # graphs) on the GPU side only: the same.
    train(mtl(data_dir, method=method), tmp_path / "cpu", baseline=baseline)
    gpu_run = mtl(data_dir, method=method, device="cuda", **switches)
    train(gpu_run, tmp_path / "gpu", baseline=baseline)
    cpu = pd.read_csv(tmp_path / "cpu" / HISTORY).drop(columns="seconds")
    gpu = pd.read_csv(tmp_path / "gpu" / HISTORY).drop(columns="seconds")
    assert list(cpu.columns) == list(gpu.columns)
    losses = [c for c in cpu.columns if c.startswith("train_loss/")]
    np.testing.assert_allclose(gpu[losses].to_numpy(), cpu[losses].to_numpy(), rtol=0.02)
    metrics = [c for c in cpu.columns if c.startswith(("val/", "test/"))]
    np.testing.assert_allclose(
        gpu[metrics].to_numpy(), cpu[metrics].to_numpy(), rtol=0.05, atol=0.02
    )
