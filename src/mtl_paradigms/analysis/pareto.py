"""Pareto optimality of runs in metric space (Table 2, Table A2, Fig. 2 / A4 highlighting).

Conventions:

* A point ``q`` *dominates* ``p`` when it is at least as good in every metric and strictly
  better in at least one ("better" per metric direction). Equal points do not dominate each
  other, so duplicates on the front are all Pareto-optimal.
* Rows with any non-finite coordinate (NaN, ±inf) are never Pareto-optimal and never
  dominate anything.
* Counts (:func:`pareto_counts`) use the MTL runs only: STL rows (method ``"stl"``) and
  diverged runs are dropped before anything is compared. All learning rates, seeds and
  methods of a panel (dataset × architecture) take part. A panel whose MTL runs all diverged
  still gets its row in :func:`pareto_counts` (no runs: counts 0, NA where undefined).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from mtl_paradigms.analysis import grid

log = logging.getLogger(__name__)

_MAX_CHUNK_ELEMENTS = 4_000_000
"""Upper bound on ``rows × others × metrics`` booleans materialised at once."""

COUNT_COLUMNS = ("n_a", "n_b", "n_pool", "a_po_all", "a_po_vs_b", "b_po_all", "b_po_vs_a")
"""Columns of :func:`pareto_counts` besides the panel (and breakdown) keys."""


def _oriented(points: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """``points`` as float (n, d) with lower-is-better columns negated (so higher = better)."""
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise ValueError(f"points must be 2-D (runs × metrics), got shape {pts.shape}")
    hib = np.asarray(higher_is_better, dtype=bool)
    if hib.shape != (pts.shape[1],):
        raise ValueError(
            f"higher_is_better has {hib.size} entries but points have {pts.shape[1]} metrics"
        )
    return np.where(hib, pts, -pts)


def dominated_by(
    points: np.ndarray, others: np.ndarray, higher_is_better: Sequence[bool]
) -> np.ndarray:
    """Boolean mask over the rows of ``points``: True where some row of ``others`` dominates it.

    Vectorised by broadcasting over ``(chunk of points) × others × metrics``; non-finite rows
    of ``others`` are dropped first (they dominate nothing).
    """
    p = _oriented(points, higher_is_better)
    o = _oriented(others, higher_is_better) if len(others) else np.empty((0, p.shape[1]))
    o = o[np.isfinite(o).all(axis=1)]
    out = np.zeros(len(p), dtype=bool)
    if len(p) == 0 or len(o) == 0:
        return out
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, o.shape[0] * o.shape[1]))
    for start in range(0, len(p), chunk):
        block = p[start : start + chunk, None, :]  # (c, 1, d)
        at_least = (o[None, :, :] >= block).all(axis=2)  # (c, m)
        strictly = (o[None, :, :] > block).any(axis=2)
        out[start : start + chunk] = (at_least & strictly).any(axis=1)
    return out


def pareto_mask(points: np.ndarray, higher_is_better: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the non-dominated (Pareto-optimal) rows of ``points`` (n × d).

    Equal points are all optimal; rows with a non-finite value are never optimal.
    """
    pts = np.asarray(points, dtype=float)
    finite = np.isfinite(pts).all(axis=1) if pts.size else np.zeros(len(pts), dtype=bool)
    return finite & ~dominated_by(pts, pts, higher_is_better)


def _directions_for(metrics: Sequence[str], directions: Mapping[str, bool]) -> list[bool]:
    missing = [m for m in metrics if m not in directions]
    if missing:
        raise KeyError(f"no higher-is-better direction given for metric(s) {missing}")
    return [bool(directions[m]) for m in metrics]


def _count_pool(
    pool: pd.DataFrame,
    metrics: Sequence[str],
    hib: Sequence[bool],
    group: str,
    a: str,
    b: str,
) -> dict[str, object]:
    """The :data:`COUNT_COLUMNS` for one pool of runs."""
    pts = pool[list(metrics)].to_numpy(dtype=float)
    finite = np.isfinite(pts).all(axis=1)
    if (~finite).any():
        log.warning(
            "%d non-diverged MTL run(s) with missing test metrics are never Pareto-optimal",
            int((~finite).sum()),
        )
    optimal = pareto_mask(pts, hib)
    is_a = (pool[group] == a).to_numpy()
    is_b = (pool[group] == b).to_numpy()
    a_pts, b_pts = pts[is_a], pts[is_b]
    a_vs_b = finite[is_a] & ~dominated_by(a_pts, b_pts, hib)
    b_vs_a = finite[is_b] & ~dominated_by(b_pts, a_pts, hib)
    return {
        "n_a": int(is_a.sum()),
        "n_b": int(is_b.sum()),
        "n_pool": len(pool),
        "a_po_all": int((optimal & is_a).sum()),
        # "w.r.t. the other only" is undefined when the other optimizer has no runs here.
        "a_po_vs_b": int(a_vs_b.sum()) if is_b.any() else pd.NA,
        "b_po_all": int((optimal & is_b).sum()),
        "b_po_vs_a": int(b_vs_a.sum()) if is_a.any() else pd.NA,
    }


def pareto_counts(
    runs: pd.DataFrame,
    metrics: Sequence[str] | None,
    directions: Mapping[str, bool],
    group: str = "optimizer",
    *,
    a: str = "adam",
    b: str = "sgd",
    by: str | None = None,
    scope: Literal["within", "global"] = "within",
) -> pd.DataFrame:
    """Table 2 (``by=None``) and its per-method breakdown, Table A2 (``by="method"``).

    Per panel (dataset × arch), on the non-diverged MTL runs of all methods, learning rates
    and seeds:

    * ``a_po_all``: runs of ``group == a`` (Adam) that are Pareto-optimal among all runs of
      the pool (every optimizer present, signSGD included);
    * ``a_po_vs_b``: runs of ``a`` not dominated by any run of ``b`` (SGD); NA if the pool has
      no ``b`` run;
    * ``b_po_all`` / ``b_po_vs_a``: the same with the roles swapped;
    * ``n_a``, ``n_b``, ``n_pool``: the number of runs of ``a``, of ``b`` and in the pool.

    ``metrics``: the metric columns spanning the objective space; ``None`` takes, per panel,
    every ``task/metric`` column with a value for that panel's MTL runs.

    Every panel of ``runs`` gets a row; one without a non-diverged MTL run (all diverged) has
    zero runs and counts. With ``by`` (e.g. ``"method"``) one row per panel × value of ``by``
    among the panel's non-diverged MTL runs. ``scope="within"``: each value forms its own pool
    (Adam-EW runs against SGD-EW runs, ...). ``scope="global"``: the pool stays the whole panel
    and the panel's counts are split by ``by`` (the rows then sum to the ``by=None`` counts).
    """
    if scope not in ("within", "global"):
        raise ValueError(f"scope must be 'within' or 'global', got {scope!r}")
    mtl = grid.mtl_runs(runs)
    keys = [*grid.PANEL_KEYS, *([by] if by else [])]
    rows = []
    for dataset, arch in grid.panels(runs):  # also those whose runs all diverged
        panel = mtl[(mtl["dataset"] == dataset) & (mtl["arch"] == arch)]
        cols = list(metrics) if metrics is not None else grid.panel_metrics(runs, dataset, arch)
        hib = _directions_for(cols, directions)
        if by is None:
            counts = _count_pool(panel, cols, hib, group, a, b)
            rows.append({"dataset": dataset, "arch": arch, **counts})
        elif scope == "within":
            for value in grid.ordered_values(panel[by], by):
                pool = panel[panel[by] == value]
                counts = _count_pool(pool, cols, hib, group, a, b)
                rows.append({"dataset": dataset, "arch": arch, by: value, **counts})
        else:
            rows.extend(_global_breakdown(panel, cols, hib, group, a, b, by, dataset, arch))
    frame = pd.DataFrame(rows, columns=[*keys, *COUNT_COLUMNS])
    for col in COUNT_COLUMNS:
        frame[col] = frame[col].astype("Int64")
    return frame


def _global_breakdown(
    panel: pd.DataFrame,
    metrics: Sequence[str],
    hib: Sequence[bool],
    group: str,
    a: str,
    b: str,
    by: str,
    dataset: str,
    arch: str,
) -> list[dict[str, object]]:
    """Panel-wide Pareto status of every run, summed per value of ``by``."""
    pts = panel[metrics].to_numpy(dtype=float)
    finite = np.isfinite(pts).all(axis=1)
    optimal = pareto_mask(pts, hib)
    is_a = (panel[group] == a).to_numpy()
    is_b = (panel[group] == b).to_numpy()
    a_vs_b = np.zeros(len(panel), dtype=bool)
    b_vs_a = np.zeros(len(panel), dtype=bool)
    a_vs_b[is_a] = finite[is_a] & ~dominated_by(pts[is_a], pts[is_b], hib)
    b_vs_a[is_b] = finite[is_b] & ~dominated_by(pts[is_b], pts[is_a], hib)
    values = panel[by].to_numpy()
    rows = []
    for value in grid.ordered_values(panel[by], by):
        sel = values == value
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                by: value,
                "n_a": int((sel & is_a).sum()),
                "n_b": int((sel & is_b).sum()),
                "n_pool": int(sel.sum()),
                "a_po_all": int((sel & is_a & optimal).sum()),
                "a_po_vs_b": int((sel & a_vs_b).sum()) if is_b.any() else pd.NA,
                "b_po_all": int((sel & is_b & optimal).sum()),
                "b_po_vs_a": int((sel & b_vs_a).sum()) if is_a.any() else pd.NA,
            }
        )
    return rows


def panel_pareto_mask(
    runs: pd.DataFrame, metrics: Sequence[str], directions: Mapping[str, bool]
) -> np.ndarray:
    """Pareto-optimal mask over the rows of ``runs`` (one panel's runs) in ``metrics``."""
    hib = _directions_for(metrics, directions)
    return pareto_mask(runs[list(metrics)].to_numpy(dtype=float), hib)
