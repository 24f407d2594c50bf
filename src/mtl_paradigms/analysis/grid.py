"""The main training grid as a run table: loading, learning-rate selection, seed summaries.

The input is ``runs.csv`` (written by ``mtlp aggregate``), one row per training run with
the columns in :data:`REQUIRED_COLUMNS` plus one column per test metric named
``task/metric``. STL baseline rows have method ``"stl"`` and values only for their task's
metrics. Δm (``val_delta_m``, ``test_delta_m``) comes with the table, in percent and lower
is better (Maninis et al.); it is NaN for STL and diverged runs.

Learning-rate selection (the paper keeps, per method × optimizer, the learning rate best on
validation; 3 seeds): see :func:`select_learning_rates`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "dataset",
    "arch",
    "method",
    "optimizer",
    "lr",
    "seed",
    "diverged",
    "selected_epoch",
    "val_delta_m",
    "test_delta_m",
)
PANEL_KEYS = ("dataset", "arch")
COMBO_KEYS = ("dataset", "arch", "method", "optimizer")
STL = "stl"
DELTA_M = "test_delta_m"

METRIC_ORDER = (
    "segmentation/miou",
    "segmentation/pixacc",
    "depth/abs_err",
    "depth/rel_err",
    "normal/mean",
    "normal/median",
    "normal/within_11.25",
    "normal/within_22.5",
    "normal/within_30",
)
"""The paper's column order (Fig. 2 / A4 axes, Tables A4–A7); other metrics follow."""

VALUE_ORDER = {
    "dataset": ("cityscapes", "nyuv2", "celeba"),
    "arch": ("segnet", "deeplabv3", "resnet18"),
    "method": (
        "stl",
        "ew",
        "uw",
        "uwo",
        "rlw",
        "imtl",
        "pcgrad",
        "cagrad",
        "aligned_mtl",
        "alignedmtl",
        "adatask",
        "mtl_io",
        "mtlio",
        "mtl_ius",
        "si",
        "imtl_l",
        "imtl_g",
        "dwa",
        "gradnorm",
        "famo",
        "auto_lambda",
        "mgda",
        "mgda_ub",
        "graddrop",
        "nash_mtl",
        "edm",
        "cdtt",
        "fixed",
    ),
    "optimizer": ("adam", "signsgd", "sgd"),
}
"""Display order of categorical values (the paper's); unknown values follow alphabetically."""


# --------------------------------------------------------------------------- loading


def load_runs(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``runs.csv`` and validate it (see :func:`validate_runs`)."""
    return validate_runs(pd.read_csv(path), source=str(path))


def validate_runs(runs: pd.DataFrame, source: str = "runs") -> pd.DataFrame:
    """Check the run table's columns and normalise types; returns a copy.

    Raises ``ValueError`` naming any missing required column, or when there is no
    ``task/metric`` column. ``diverged`` is parsed as bool (``True/False``, ``1/0``,
    ``"true"/"false"``); ``lr`` and the metric columns as float.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise ValueError(f"{source}: missing required column(s) {missing}")
    if not metric_columns(runs):
        raise ValueError(f"{source}: no test metric column (named 'task/metric')")
    out = runs.copy()
    out["diverged"] = _as_bool(out["diverged"], source)
    for col in ("lr", "val_delta_m", "test_delta_m", *metric_columns(out)):
        out[col] = pd.to_numeric(out[col], errors="raise").astype(float)
    for col in ("dataset", "arch", "method", "optimizer"):
        out[col] = out[col].astype(str)
    return out


def _as_bool(column: pd.Series, source: str) -> pd.Series:
    if column.dtype == bool:
        return column
    mapping = {"true": True, "false": False, "1": True, "0": False, "1.0": True, "0.0": False}
    parsed = column.astype(str).str.strip().str.lower().map(mapping)
    if parsed.isna().any():
        bad = sorted(set(column[parsed.isna()].astype(str)))
        raise ValueError(f"{source}: column 'diverged' has non-boolean value(s) {bad}")
    return parsed.astype(bool)


def load_directions(path: str | os.PathLike[str]) -> dict[str, bool]:
    """Read ``directions.json``: ``{metric_key: higher_is_better}``."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return {str(k): bool(v) for k, v in data.items()}


# --------------------------------------------------------------------------- structure


def order_key(column: str) -> Callable[[object], tuple[int, str]]:
    """A sort key for the values of ``column`` in the paper's order (see VALUE_ORDER)."""
    known = VALUE_ORDER.get(column, ())

    def key(value: object) -> tuple[int, str]:
        text = str(value)
        return (known.index(text), "") if text in known else (len(known), text)

    return key


def ordered_values(values: Iterable[object], column: str) -> list:
    """The distinct ``values`` of ``column`` in the paper's order."""
    return sorted(set(values), key=order_key(column))


def sort_rows(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``frame`` sorted by ``columns``: categorical ones in the paper's order, others by value."""
    if frame.empty:
        return frame.reset_index(drop=True)
    sort_cols = []
    tmp = frame.copy()
    for i, col in enumerate(columns):
        if col in VALUE_ORDER:
            key = order_key(col)
            tmp[f"__k{i}a"] = [key(v)[0] for v in tmp[col]]
            tmp[f"__k{i}b"] = [key(v)[1] for v in tmp[col]]
            sort_cols += [f"__k{i}a", f"__k{i}b"]
        else:
            sort_cols.append(col)
    tmp = tmp.sort_values(sort_cols, kind="mergesort")
    return tmp.drop(columns=[c for c in tmp.columns if c.startswith("__k")]).reset_index(drop=True)


def metric_columns(runs: pd.DataFrame) -> list[str]:
    """The ``task/metric`` columns, in the paper's order (then in table order)."""
    cols = [c for c in runs.columns if "/" in str(c)]
    known = [m for m in METRIC_ORDER if m in cols]
    return known + [c for c in cols if c not in METRIC_ORDER]


def mtl_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The MTL runs that did not diverge (STL rows and diverged runs dropped)."""
    return runs[(runs["method"] != STL) & ~runs["diverged"].astype(bool)]


def panels(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, arch) panels present, in the paper's order.

    Raises ``ValueError`` when a panel mixes ``data_source`` values (filter first).
    """
    if "data_source" in runs.columns:
        mixed = runs.groupby(list(PANEL_KEYS))["data_source"].nunique()
        mixed = mixed[mixed > 1]
        if len(mixed):
            raise ValueError(
                f"panel(s) {list(mixed.index)} mix data sources; filter runs by data_source"
            )
    pairs = runs[list(PANEL_KEYS)].drop_duplicates()
    return [
        (str(d), str(a)) for d, a in sort_rows(pairs, PANEL_KEYS).itertuples(index=False, name=None)
    ]


def panel_runs(runs: pd.DataFrame, dataset: str, arch: str) -> pd.DataFrame:
    """All rows (STL included) of one panel."""
    return runs[(runs["dataset"] == dataset) & (runs["arch"] == arch)]


def panel_metrics(runs: pd.DataFrame, dataset: str, arch: str) -> list[str]:
    """The metric columns with at least one value among the panel's non-diverged MTL runs."""
    sub = mtl_runs(panel_runs(runs, dataset, arch))
    return [m for m in metric_columns(runs) if sub[m].notna().any()]


def data_source(runs: pd.DataFrame, dataset: str | None = None, arch: str | None = None) -> str:
    """``"synthetic"`` if any (panel) row has ``data_source == "synthetic"``, else ``"real"``."""
    if "data_source" not in runs.columns:
        return "real"
    sub = runs if dataset is None else panel_runs(runs, dataset, arch or "")
    return "synthetic" if (sub["data_source"].astype(str) == "synthetic").any() else "real"


# --------------------------------------------------------------------------- lr selection


def _failed(runs: pd.DataFrame, criterion: str) -> pd.Series:
    return runs["diverged"].astype(bool) | ~np.isfinite(runs[criterion].astype(float))


def select_learning_rates(runs: pd.DataFrame) -> pd.DataFrame:
    """The selected learning rate per dataset × arch × method × optimizer (MTL runs).

    Rule (the paper keeps the learning rate best on validation; it does not say how diverged
    seeds count, so this is ours): a run *fails* when it diverged or has no finite
    ``val_delta_m``.

    1. Among the learning rates where no seed failed, take the one with the lowest mean
       validation Δm over seeds (ties: the smaller learning rate).
    2. If every learning rate had a failed seed, fall back to the learning rates with at least
       one successful seed: fewest failed seeds first, then lowest mean validation Δm of the
       successful seeds, then the smaller lr; such rows get ``fallback=True`` and a warning.
    3. If every run failed, ``lr`` is NaN (``fallback=True``).

    Columns: the combo keys, ``lr``, ``val_delta_m_mean`` (over the successful seeds at that
    lr), ``n_seeds`` (runs at that lr), ``n_failed``, ``fallback``, ``n_lrs`` (lrs tried).
    """
    mtl = runs[runs["method"] != STL].copy()
    mtl["_failed"] = _failed(mtl, "val_delta_m")
    mtl["_ok_val"] = mtl["val_delta_m"].where(~mtl["_failed"])
    per_lr = (
        mtl.groupby([*COMBO_KEYS, "lr"], sort=True)
        .agg(
            n_seeds=("seed", "size"),
            n_failed=("_failed", "sum"),
            val_delta_m_mean=("_ok_val", "mean"),
        )
        .reset_index()
    )
    rows = [_choose_lr(combo, group) for combo, group in per_lr.groupby(list(COMBO_KEYS))]
    columns = [*COMBO_KEYS, "lr", "val_delta_m_mean", "n_seeds", "n_failed", "fallback", "n_lrs"]
    dtypes = {k: str for k in COMBO_KEYS} | {"lr": float, "val_delta_m_mean": float}
    dtypes |= {"n_seeds": int, "n_failed": int, "fallback": bool, "n_lrs": int}
    return sort_rows(pd.DataFrame(rows, columns=columns).astype(dtypes), COMBO_KEYS)


def _choose_lr(combo: tuple, per_lr: pd.DataFrame) -> dict[str, object]:
    keys = dict(zip(COMBO_KEYS, combo, strict=True))
    clean = per_lr[per_lr["n_failed"] == 0]
    fallback = clean.empty
    candidates = clean if not fallback else per_lr[per_lr["n_failed"] < per_lr["n_seeds"]]
    if candidates.empty:
        log.warning("%s: every run failed; no learning rate selected", keys)
        return {
            **keys,
            "lr": math.nan,
            "val_delta_m_mean": math.nan,
            "n_seeds": int(per_lr["n_seeds"].sum()),
            "n_failed": int(per_lr["n_failed"].sum()),
            "fallback": True,
            "n_lrs": len(per_lr),
        }
    best = candidates.sort_values(["n_failed", "val_delta_m_mean", "lr"], kind="mergesort").iloc[0]
    if fallback:
        log.warning(
            "%s: every learning rate had a failed seed; chose lr %g (%d of %d failed)",
            keys,
            best["lr"],
            best["n_failed"],
            best["n_seeds"],
        )
    return {
        **keys,
        "lr": float(best["lr"]),
        "val_delta_m_mean": float(best["val_delta_m_mean"]),
        "n_seeds": int(best["n_seeds"]),
        "n_failed": int(best["n_failed"]),
        "fallback": bool(fallback),
        "n_lrs": len(per_lr),
    }


def runs_at_selected_lr(runs: pd.DataFrame, selection: pd.DataFrame | None = None) -> pd.DataFrame:
    """The non-diverged MTL runs at each combo's selected learning rate.

    ``selection`` defaults to :func:`select_learning_rates` of ``runs``.
    """
    selection = select_learning_rates(runs) if selection is None else selection
    chosen = selection.dropna(subset=["lr"])[[*COMBO_KEYS, "lr"]]
    merged = mtl_runs(runs).merge(chosen, on=[*COMBO_KEYS, "lr"], how="inner")
    return sort_rows(merged, [*COMBO_KEYS, "seed"])


def summarise(
    runs_selected: pd.DataFrame,
    keys: Sequence[str] = COMBO_KEYS,
    ddof: int = 1,
) -> pd.DataFrame:
    """Mean and std over seeds of every test metric and of test Δm, per combo (``keys``).

    ``runs_selected`` must hold a single learning rate per combo (e.g. from
    :func:`runs_at_selected_lr`); otherwise ``ValueError``. Diverged runs are ignored. The std
    is the sample std (``ddof=1``), NaN with one seed. Columns: ``keys``, ``lr``, ``n_seeds``,
    then ``<col>_mean`` and ``<col>_std`` for every metric column and ``test_delta_m``.
    """
    keys = list(keys)
    ok = runs_selected[~runs_selected["diverged"].astype(bool)]
    n_lrs = ok.groupby(keys)["lr"].nunique()
    if (n_lrs > 1).any():
        raise ValueError(
            f"summarise needs one lr per combo; {list(n_lrs[n_lrs > 1].index)} have several "
            "(select with runs_at_selected_lr first)"
        )
    values = [*metric_columns(ok), DELTA_M]
    grouped = ok.groupby(keys, sort=True)
    frame = grouped.agg(lr=("lr", "first"), n_seeds=("seed", "size"))
    means = grouped[values].mean().add_suffix("_mean")
    stds = grouped[values].std(ddof=ddof).add_suffix("_std")
    frame = frame.join(means).join(stds)
    ordered = ["lr", "n_seeds"] + [f"{v}_{s}" for v in values for s in ("mean", "std")]
    return sort_rows(frame[ordered].reset_index(), keys)


# --------------------------------------------------------------------------- STL baselines


def stl_task(row: pd.Series, metrics: Sequence[str]) -> str:
    """The task of an STL row: the prefix of its metric columns that have values."""
    tasks = {m.split("/", 1)[0] for m in metrics if pd.notna(row[m])}
    if len(tasks) != 1:
        raise ValueError(f"STL row must have the metrics of exactly one task, found {tasks}")
    return tasks.pop()


def stl_runs_selected(runs: pd.DataFrame) -> pd.DataFrame:
    """The STL runs at the selected learning rate, per panel × task × optimizer.

    The paper selects STL baselines by validation loss. If the table has a ``val_loss``
    column, the lr with the lowest mean ``val_loss`` over its non-diverged seeds is taken
    (lrs with a diverged seed only if no other remains; ties: smaller lr). Without it, each
    task must have a single learning rate (the aggregator selected it), else ``ValueError``.
    Adds a ``task`` column.
    """
    stl = runs[(runs["method"] == STL) & ~runs["diverged"].astype(bool)].copy()
    if stl.empty:
        return stl.assign(task=pd.Series(dtype=str))
    metrics = metric_columns(runs)
    stl["task"] = [stl_task(row, metrics) for _, row in stl.iterrows()]
    keys = [*PANEL_KEYS, "task", "optimizer"]
    chosen = []
    for combo, group in stl.groupby(keys, sort=True):
        lrs = sorted(group["lr"].unique())
        if len(lrs) == 1:
            chosen.append(group)
            continue
        if "val_loss" not in group.columns:
            raise ValueError(
                f"STL {dict(zip(keys, combo, strict=True))} has several learning rates {lrs} "
                "but the run table has no 'val_loss' column to select one"
            )
        per_lr = group.groupby("lr")["val_loss"].mean().reset_index()
        best = per_lr.sort_values(["val_loss", "lr"], kind="mergesort").iloc[0]["lr"]
        chosen.append(group[group["lr"] == best])
    return sort_rows(pd.concat(chosen), [*keys, "seed"])


def stl_summary(runs: pd.DataFrame, ddof: int = 1) -> pd.DataFrame:
    """Per panel (× optimizer): mean and std over seeds of every metric of the STL baselines.

    Each metric comes from the STL run of its own task, at that task's selected lr. Columns
    as in :func:`summarise` (``lr`` is NaN where the tasks' lrs differ).
    """
    stl = stl_runs_selected(runs)
    keys = [*PANEL_KEYS, "optimizer"]
    metrics = metric_columns(runs)
    rows = []
    for combo, group in stl.groupby(keys, sort=True):
        row: dict[str, object] = dict(zip(keys, combo, strict=True))
        lrs = group["lr"].unique()
        row["lr"] = float(lrs[0]) if len(lrs) == 1 else math.nan
        row["n_seeds"] = int(group.groupby("task")["seed"].size().min())
        for m in metrics:
            values = group[m].dropna()
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=ddof) if len(values) > ddof else math.nan
        row[f"{DELTA_M}_mean"] = 0.0  # the baseline against itself, by definition
        row[f"{DELTA_M}_std"] = math.nan
        rows.append(row)
    values = [*metrics, DELTA_M]
    columns = [*keys, "lr", "n_seeds"] + [f"{v}_{s}" for v in values for s in ("mean", "std")]
    return sort_rows(pd.DataFrame(rows, columns=columns), keys)


# --------------------------------------------------------------------------- formatting


def default_decimals(value: float) -> int:
    """Decimals for a metric value: 2 from magnitude 1 up, else 4 (e.g. 24.74, 0.7122)."""
    return 2 if abs(value) >= 1 else 4


def format_mean_std(mean: float, std: float | None = None, decimals: int | None = None) -> str:
    """``"mean ± std"`` with the same decimals; ``"–"`` for a missing mean; the std is left
    out when missing (one seed). ``decimals`` defaults to :func:`default_decimals` of ``mean``.
    """
    if mean is None or not np.isfinite(mean):
        return "–"
    digits = default_decimals(mean) if decimals is None else decimals
    if std is None or not np.isfinite(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
