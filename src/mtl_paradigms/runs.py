"""Finished runs: the single-task baseline and the tidy table of all runs.

A run directory holds ``metrics.json`` (written by :func:`mtl_paradigms.train.train`). The
workflow lays runs out as ``<dataset>/<arch>/<method>/<optimizer>/lr<lr>/seed<seed>/``; the
single-task baselines live under ``stl-<task>`` and appear in the runs table as method ``stl``
(their task is the one whose metric columns are filled).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RUN_COLUMNS = (
    "dataset", "data_source", "arch", "method", "tasks", "optimizer", "lr", "seed", "epochs",
    "diverged", "selected_epoch", "val_loss", "val_delta_m", "test_delta_m",
)  # fmt: skip


METRICS_KEYS = ("settings", "diverged", "val", "test")
"""Top-level keys every run's ``metrics.json`` has (see :func:`mtl_paradigms.train.train`)."""
SETTINGS_KEYS = ("dataset", "arch", "method", "optimizer", "lr", "seed", "tasks", "selection")
"""Keys of a run's ``settings`` that the runs table and the baseline read."""


def read_metrics(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a run's ``metrics.json``.

    Raises ``ValueError`` naming the file, what is wrong with it (not UTF-8, not valid JSON
    and where, not an object, a missing key) and how to get a good one back: delete it and
    re-run the workflow, so that Snakemake retrains the run.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise _bad_metrics(path, f"not UTF-8 text (byte {err.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        problem = f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        raise _bad_metrics(path, problem) from None
    if not isinstance(data, dict):
        raise _bad_metrics(path, f"a JSON {_json_type(data)}, not an object")
    missing = [key for key in METRICS_KEYS if key not in data]
    if missing:
        raise _bad_metrics(path, f"no {_keys_text(missing)} key")
    if not isinstance(data["settings"], dict):
        raise _bad_metrics(path, f"'settings' is a JSON {_json_type(data['settings'])}")
    missing = [key for key in SETTINGS_KEYS if key not in data["settings"]]
    if missing:
        raise _bad_metrics(path, f"no {_keys_text(missing)} key in 'settings'")
    return data


def _bad_metrics(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path}: not a run's metrics.json: {problem}. It was cut short or written by something "
        "else: delete it and re-run the workflow, so that Snakemake retrains this run"
    )


def _json_type(value: object) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _keys_text(keys: Sequence[str]) -> str:
    return ", ".join(f"'{key}'" for key in keys)


def build_baseline(metrics_files: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Single-task baseline from STL runs: per task, the learning rate with the lowest mean
    validation loss over seeds (the paper's STL early stopping is on validation loss); its
    validation and test metrics averaged over seeds. Diverged runs disqualify their lr.
    """
    by_task: dict[str, dict[float, list[dict[str, Any]]]] = {}
    for path in metrics_files:
        data = read_metrics(path)
        settings = data["settings"]
        tasks = settings["tasks"]
        if not tasks or len(tasks) != 1:
            raise ValueError(f"{path}: a baseline run trains exactly one task, got {tasks}")
        by_task.setdefault(tasks[0], {}).setdefault(settings["lr"], []).append(data)
    if not by_task:
        raise ValueError("no single-task runs given for the baseline")
    baseline: dict[str, Any] = {"val": {}, "test": {}, "selected": {}}
    for task, by_lr in sorted(by_task.items()):
        candidates = {
            lr: float(np.mean([r["val_loss_selected"] for r in runs]))
            for lr, runs in by_lr.items()
            if not any(r["diverged"] or r["val_loss_selected"] is None for r in runs)
        }
        if not candidates:
            raise ValueError(f"every single-task run of task {task!r} diverged: no baseline")
        lr = min(candidates, key=lambda k: (candidates[k], k))
        runs = by_lr[lr]
        for split in ("val", "test"):
            keys = runs[0][split].keys()
            baseline[split] |= {k: float(np.mean([r[split][k] for r in runs])) for k in keys}
        baseline["selected"][task] = {
            "lr": lr, "seeds": sorted(r["settings"]["seed"] for r in runs),
            "mean_val_loss": candidates[lr],
        }  # fmt: skip
    return baseline


def run_row(data: Mapping[str, Any], data_source: str) -> dict[str, Any]:
    """One row of the runs table from a run's loaded ``metrics.json``."""
    s = data["settings"]
    stl = s["tasks"] is not None and len(s["tasks"]) == 1 and s["selection"] == "val_loss"
    row: dict[str, Any] = {
        "dataset": s["dataset"], "data_source": data_source, "arch": s["arch"],
        "method": "stl" if stl else (s.get("label") or s["method"]),
        "tasks": "+".join(s["tasks"]) if s["tasks"] else "all",
        "optimizer": s["optimizer"], "lr": s["lr"], "seed": s["seed"],
        "epochs": s.get("epochs", math.nan),
        "diverged": bool(data["diverged"]), "selected_epoch": data["selected_epoch"],
        "val_loss": _num(data.get("val_loss_selected")),
        "val_delta_m": _num(data.get("val_delta_m")),
        "test_delta_m": _num(data.get("test_delta_m")),
    }  # fmt: skip
    for key, value in (data["test"] or {}).items():
        row[key] = _num(value)
    return row


def runs_table(
    records: Sequence[Mapping[str, Any]], data_sources: Mapping[str, str]
) -> pd.DataFrame:
    """The tidy table of runs (one row per loaded ``metrics.json``), sorted for stable output."""
    rows = [run_row(r, data_sources.get(r["settings"]["dataset"], "real")) for r in records]
    frame = pd.DataFrame(rows)
    metric_cols = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
    frame = frame[[*RUN_COLUMNS, *metric_cols]]
    keys = ["dataset", "arch", "method", "tasks", "optimizer", "lr", "seed"]
    return frame.sort_values(keys).reset_index(drop=True)


def metric_directions_of(records: Sequence[Mapping[str, Any]]) -> dict[str, bool]:
    """Higher-is-better flag of every metric the runs report (``task/metric`` keys)."""
    from mtl_paradigms.settings import from_mapping
    from mtl_paradigms.tasks import make_tasks, metric_directions
    from mtl_paradigms.train import TrainSettings

    directions: dict[str, bool] = {}
    seen = set()
    for record in records:
        settings = from_mapping(TrainSettings, record["settings"], "metrics.json settings")
        if (settings.dataset, settings.classes) not in seen:
            seen.add((settings.dataset, settings.classes))
            directions |= metric_directions(make_tasks(settings.dataset, settings.classes))
    return directions


def _num(value: Any) -> float:
    return (
        float("nan")
        if value is None or (isinstance(value, float) and math.isnan(value))
        else float(value)
    )


def fixed_weights_from_history(path: str | os.PathLike[str], beta: float = 0.9) -> dict[str, Any]:
    """Fixed task weights from a finished run (Gama & Grassi's "fixed weights" procedure).

    The run's ``history.csv`` holds, per epoch, the average task weights of its steps
    (``weight/<task>`` columns). They are smoothed by an exponential moving average
    ``m_e = beta m_{e-1} + (1 - beta) w_e`` (``m_1 = w_1``) and the last epoch's value is
    returned, on the same (mean) scale as the source method's weights.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"fixed weights: beta must be in [0, 1), got {beta}")
    history = pd.read_csv(path)
    columns = [c for c in history.columns if c.startswith("weight/")]
    if not columns or history.empty:
        raise ValueError(f"{path}: no per-epoch task weights (weight/<task> columns) to fix")
    weights = history[columns].to_numpy(dtype=float)
    if not np.isfinite(weights).all():
        raise ValueError(
            f"{path}: the source method logs no task weights (NaN); fixed weights need a "
            "weighting or an aggregator whose direction is a combination of task gradients"
        )
    ema = weights[0].copy()
    for row in weights[1:]:
        ema = beta * ema + (1.0 - beta) * row
    return {
        "tasks": [c.removeprefix("weight/") for c in columns],
        "weights": [float(w) for w in ema],
        "beta": beta,
        "epochs": len(weights),
        "source": str(path),
    }
