"""The runs table and the single-task baseline, on hand-made metrics.json records."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from mtl_paradigms.runs import (
    build_baseline,
    fixed_weights_from_history,
    metric_directions_of,
    read_metrics,
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


# --------------------------------------------------------------------------- bad metrics.json


def _write_runs(root: Path, records: list[dict]) -> list[Path]:
    paths = []
    for i, r in enumerate(records):
        path = root / f"run{i}" / "metrics.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(r))
        paths.append(path)
    return paths


def test_aggregate_names_a_truncated_metrics_file_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtl_paradigms.cli import main

    records = [*RECORDS, record(None, 0.001, 0, None), record(None, 0.01, 1, None)]
    paths = _write_runs(tmp_path / "runs", records)
    bad = paths[3]
    bad.write_text(json.dumps(records[3])[:57])  # a file cut short mid-write
    out = tmp_path / "main"
    args = ["aggregate", *map(str, paths), "--out", str(out / "runs.csv")]
    args += ["--directions", str(out / "directions.json"), "--claims", str(out / "claims.csv")]
    args += ["--source", "cityscapes=synthetic"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "\n" not in message
    assert str(bad) in message
    assert "not valid JSON (" in message
    assert "at line 1, column " in message
    assert "delete it and re-run the workflow" in message
    assert all(r.exc_info is None for r in caplog.records)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out + caplog.text
    assert not out.exists() or not any(out.iterdir())  # nothing written, not even part of it
    # the same files without the bad one aggregate
    assert main([*args[:4], *map(str, paths[:3] + paths[4:]), *args[1 + len(paths) :]]) == 0
    assert (out / "runs.csv").is_file()


def test_baseline_names_an_invalid_metrics_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mtl_paradigms.cli import main

    paths = _write_runs(tmp_path, [r for r in RECORDS if r["settings"]["tasks"]])
    paths[1].write_text("")
    out = tmp_path / "baseline.json"
    assert main(["baseline", *map(str, paths), "--out", str(out)]) == 2
    assert f"{paths[1]}: not a run's metrics.json: not valid JSON" in caplog.text
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            '{"settings": {}, "diverged": fal',
            "not valid JSON (Expecting value at line 1, column 30)",
        ),
        ("[1, 2]", "a JSON array, not an object"),
        ("null", "a JSON null, not an object"),
        ('{"settings": {}, "diverged": false, "val": {}}', "no 'test' key"),
        ('{"diverged": false}', "no 'settings', 'val', 'test' key"),
        (
            '{"settings": [], "diverged": false, "val": {}, "test": {}}',
            "'settings' is a JSON array",
        ),
        (
            '{"settings": {"dataset": "nyuv2", "lr": 0.1}, "diverged": 0, "val": {}, "test": {}}',
            "no 'arch', 'method', 'optimizer', 'seed', 'tasks', 'selection' key in 'settings'",
        ),
    ],
)
def test_read_metrics_says_what_is_wrong(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "ew" / "metrics.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(ValueError, match=r"not a run's metrics\.json") as info:
        read_metrics(path)
    assert str(info.value) == (
        f"{path}: not a run's metrics.json: {problem}. It was cut short or written by something "
        "else: delete it and re-run the workflow, so that Snakemake retrains this run"
    )


def test_read_metrics_refuses_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_bytes(b'{"settings": \xff\xfe')
    with pytest.raises(ValueError, match=r"metrics.json: not a run's metrics.json: not UTF-8"):
        read_metrics(path)
