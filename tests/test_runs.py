"""The runs table and the single-task baseline, on hand-made metrics.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mtl_paradigms.runs import (
    build_baseline,
    fixed_weights_from_history,
    metric_directions_of,
    runs_table,
)


def record(task: str | None, lr: float, seed: int, val_loss: float | None, **extra: object) -> dict:
    tasks = [task] if task else None
    metrics = {"depth/abs_err": 1.0 + lr, "depth/rel_err": 0.5} if task != "segmentation" else {}
    if task in (None, "segmentation"):
        metrics |= {"segmentation/miou": 0.3 + seed, "segmentation/pixacc": 0.8}
    return {
        "settings": {
            "dataset": "cityscapes", "arch": "segnet", "method": "ew", "optimizer": "adam",
            "lr": lr, "seed": seed, "tasks": tasks, "num_classes": None,
            "cityscapes_labels": "label_7", "selection": "val_loss" if task else "delta_m",
        },
        "diverged": False, "selected_epoch": 3, "val": metrics, "test": metrics,
        "val_loss_selected": val_loss, "val_delta_m": None if task else -1.0,
        "test_delta_m": None if task else -2.0,
    } | extra  # fmt: skip


RECORDS = [
    record("depth", 0.01, 0, 0.4),
    record("segmentation", 0.01, 0, 1.2),
    record(None, 0.01, 0, None),
    record("depth", 0.001, 0, 0.3),
]


def test_runs_table_does_not_depend_on_input_order() -> None:
    forward = runs_table(RECORDS, {"cityscapes": "synthetic"})
    backward = runs_table(RECORDS[::-1], {"cityscapes": "synthetic"})
    pd.testing.assert_frame_equal(forward, backward)
    assert set(forward["method"]) == {"stl", "ew"}
    assert set(forward["tasks"]) == {"depth", "segmentation", "all"}
    assert set(forward["data_source"]) == {"synthetic"}


def test_baseline_selects_each_task_on_validation_loss(tmp_path: Path) -> None:
    paths = []
    for i, r in enumerate(r for r in RECORDS if r["settings"]["tasks"]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(r))
    baseline = build_baseline(paths)
    assert baseline["selected"]["depth"]["lr"] == 0.001  # val loss 0.3 < 0.4
    assert baseline["test"]["depth/abs_err"] == pytest.approx(1.001)
    assert baseline["selected"]["segmentation"]["lr"] == 0.01


def test_baseline_rejects_multi_task_runs(tmp_path: Path) -> None:
    path = tmp_path / "mtl.json"
    path.write_text(json.dumps(record(None, 0.01, 0, None)))
    with pytest.raises(ValueError, match="exactly one task"):
        build_baseline([path])


def test_directions_cover_every_metric() -> None:
    directions = metric_directions_of(RECORDS)
    assert directions["segmentation/miou"] is True
    assert directions["depth/abs_err"] is False


def test_fixed_weights_are_the_last_ema_of_the_epoch_averages(tmp_path: Path) -> None:
    history = pd.DataFrame(
        {"epoch": [1, 2, 3], "weight/a": [0.2, 0.4, 0.6], "weight/b": [0.8, 0.6, 0.4]}
    )
    history.to_csv(tmp_path / "history.csv", index=False)
    fixed = fixed_weights_from_history(tmp_path / "history.csv", beta=0.5)
    # m1 = w1; m2 = 0.5 m1 + 0.5 w2; m3 = 0.5 m2 + 0.5 w3
    assert fixed["tasks"] == ["a", "b"]
    assert fixed["weights"] == pytest.approx([0.45, 0.55])
    assert fixed["epochs"] == 3


def test_fixed_weights_refuse_a_method_without_weights(tmp_path: Path) -> None:
    pd.DataFrame({"epoch": [1], "weight/a": [float("nan")]}).to_csv(tmp_path / "h.csv")
    with pytest.raises(ValueError, match="logs no task weights"):
        fixed_weights_from_history(tmp_path / "h.csv")
    pd.DataFrame({"epoch": [1]}).to_csv(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="no per-epoch task weights"):
        fixed_weights_from_history(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="beta"):
        fixed_weights_from_history(tmp_path / "h.csv", beta=1.0)
