"""The gradient-statistics callback in real training runs, resumption, and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtl_paradigms.cli import main
from mtl_paradigms.gradstats import SUMMARY_COLUMNS
from mtl_paradigms.gradstats.extract import (
    STATS_FILE,
    GradStatsSettings,
    draw_subset,
    selected_lr,
    stats_from_checkpoints,
    train_with_gradstats,
)
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.train import CHECKPOINT, HISTORY, METRICS, TrainSettings, train

SAMPLES = 4


@pytest.fixture(scope="module")
def data_dir(tiny_nyuv2: Callable[[int], Path]) -> Path:
    return tiny_nyuv2(24)


def run_settings(data_dir: Path) -> TrainSettings:
    return TrainSettings(
        dataset="nyuv2", data_dir=str(data_dir), val_size=8, arch="segnet", width=0.125,
        epochs=2, batch_size=8, eval_batch_size=8, lr=1e-3, device="cpu", selection="val_loss",
    )  # fmt: skip


GS = GradStatsSettings(every=1, samples=SAMPLES)


@pytest.fixture(scope="module")
def plain_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    train(run_settings(data_dir), out)
    return out


@pytest.fixture(scope="module")
def stats_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gradstats")
    train_with_gradstats(run_settings(data_dir), replace(GS, save_snapshots=True), out)
    return out


def test_one_block_of_rows_per_epoch_with_the_expected_pair_counts(stats_run: Path) -> None:
    stats = pd.read_csv(stats_run / STATS_FILE)
    assert list(stats.columns) == list(SUMMARY_COLUMNS)
    assert sorted(stats["epoch"].unique()) == [1, 2]
    steps, tasks = 2, 3  # 16 training images / batch 8; NYUv2's three tasks
    counts = stats[(stats["statistic"] == "magnitude") & (stats["subset"] == "all")]
    counts = counts.groupby(["comparison", "variant"])["n"].unique().to_dict()
    assert list(counts[("inter_task", "pairwise")]) == [steps * SAMPLES * tasks * (tasks - 1) // 2]
    assert list(counts[("inter_sample", "pairwise")]) == [
        steps * tasks * SAMPLES * (SAMPLES - 1) // 2
    ]
    assert list(counts[("inter_task", "averaged")]) == [steps * tasks * (tasks - 1) // 2]
    inter = stats[stats["statistic"] == "interference"]
    assert list(inter["n"]) == [steps, steps]
    assert inter["mean"].between(-1, 1).all()
    cos = stats[stats["statistic"] == "cosine"]
    assert cos["p2_5"].ge(-1 - 1e-9).all()
    assert cos["p97_5"].le(1 + 1e-9).all()


def test_training_is_identical_with_and_without_the_callback(
    plain_run: Path, stats_run: Path
) -> None:
    a = json.loads((plain_run / METRICS).read_text())
    b = json.loads((stats_run / METRICS).read_text())
    assert a["test"] == b["test"]
    assert a["val"] == b["val"]
    # The callback's settings are part of the run identity (what the run writes differs).
    assert a["run_identity"] != b["run_identity"]
    ha = pd.read_csv(plain_run / HISTORY).drop(columns=["seconds", "run_identity"])
    hb = pd.read_csv(stats_run / HISTORY).drop(columns=["seconds", "run_identity"])
    pd.testing.assert_frame_equal(ha, hb)


def test_a_resumed_run_writes_the_same_table(
    data_dir: Path, stats_run: Path, tmp_path: Path
) -> None:
    settings = run_settings(data_dir)
    train_with_gradstats(settings, GS, tmp_path, stop_after_epochs=1)
    first = pd.read_csv(tmp_path / STATS_FILE)
    assert list(first["epoch"].unique()) == [1]
    train_with_gradstats(settings, GS, tmp_path)  # resumes from epoch 1
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / STATS_FILE), pd.read_csv(stats_run / STATS_FILE)
    )


def test_a_run_that_had_no_callback_is_not_resumed(
    data_dir: Path, stats_run: Path, tmp_path: Path
) -> None:
    """A checkpoint written without the statistics has another run identity: it is moved aside
    and the run trains from scratch, so the table covers every epoch."""
    train(run_settings(data_dir), tmp_path, stop_after_epochs=1)
    train_with_gradstats(run_settings(data_dir), GS, tmp_path)
    assert len(list(tmp_path.glob("checkpoint.*.stale.pt"))) == 1
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / STATS_FILE), pd.read_csv(stats_run / STATS_FILE)
    )


def test_statistics_from_snapshots_and_from_the_checkpoint(
    data_dir: Path, stats_run: Path, tmp_path: Path
) -> None:
    snapshots = sorted((stats_run / "snapshots").iterdir())
    assert [p.name for p in snapshots] == ["epoch0001.pt", "epoch0002.pt"]
    out = tmp_path / "from_snapshots.csv"
    settings = {"samples": SAMPLES, "checkpoint_batches": 1}
    train_json = json.dumps(asdict(run_settings(data_dir)))
    args = [
        "gradstats",
        "checkpoints",
        str(stats_run / "snapshots"),
        "--train-settings",
        train_json,
    ]
    assert main([*args, "--settings", json.dumps(settings), "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(SUMMARY_COLUMNS)
    assert sorted(table["epoch"].unique()) == [1, 2]
    assert list(table.loc[table["statistic"] == "interference", "n"]) == [1, 1]
    last = stats_from_checkpoints(
        run_settings(data_dir), GradStatsSettings(**settings), [stats_run / CHECKPOINT]
    )
    pd.testing.assert_frame_equal(
        last, table[table["epoch"] == 2].reset_index(drop=True), check_exact=False, rtol=1e-6
    )
    missing = ["gradstats", "checkpoints", str(tmp_path / "missing.pt"), "--train-settings"]
    assert main([*missing, train_json, "--out", str(out)]) == 2


def test_subsets_respect_samples_and_max_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    settings = GradStatsSettings(samples=3, max_tasks=2)
    samples, tasks = draw_subset(8, ["a", "b", "c", "d"], settings, g)
    assert len(samples) == 3
    assert samples == sorted(samples)
    assert len(set(samples)) == 3
    assert len(tasks) == 2
    assert set(tasks) <= {"a", "b", "c", "d"}
    assert [t for t in ["a", "b", "c", "d"] if t in tasks] == tasks  # the model's order
    samples, tasks = draw_subset(2, ["a", "b"], settings, g)
    assert samples == [0, 1]
    assert tasks == ["a", "b"]


def test_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="samples"):
        GradStatsSettings(samples=1)
    with pytest.raises(SettingsError, match="every"):
        GradStatsSettings(every=0)


def test_selected_lr_reads_ew_adams_choice(tmp_path: Path) -> None:
    rows = []
    for lr, delta in ((0.01, 5.0), (0.001, -2.0)):
        for method, optimizer in (("ew", "adam"), ("ew", "sgd")):
            rows.append(
                {"dataset": "cityscapes", "arch": "segnet", "method": method,
                 "optimizer": optimizer, "lr": lr, "seed": 0, "diverged": False,
                 "selected_epoch": 1, "val_delta_m": delta if optimizer == "adam" else -delta,
                 "test_delta_m": delta, "segmentation/miou": 0.5}
            )  # fmt: skip
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert selected_lr(path, "cityscapes", "segnet") == 0.001
    assert selected_lr(path, "cityscapes", "segnet", optimizer="sgd") == 0.01
    with pytest.raises(ValueError, match="nyuv2"):
        selected_lr(path, "nyuv2", "segnet")
