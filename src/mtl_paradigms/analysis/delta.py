"""Relative multi-task performance against single-task baselines: Δm, Δp, Δmtm, mean rank.

One implementation; the convention is a parameter. Metric keys are ``"task/metric"``
(:func:`mtl_paradigms.tasks.metric_key`); ``higher_is_better`` maps each key to its direction
(:func:`mtl_paradigms.tasks.metric_directions`). All three return **percent**.

With ``r_k = (M_k - B_k) / B_k`` the relative change of metric ``k`` (``M`` the method's value,
``B`` the single-task baseline's) and ``s_k = +1`` if higher is better, ``-1`` otherwise:

``delta_m`` (Maninis et al. 2019; Elich et al. 2024; Nash-MTL)
    ``Δm = (1/K) Σ_k (-1)^{h_k} r_k × 100 = -(1/K) Σ_k s_k r_k × 100`` over all K metrics,
    ``h_k = 1`` if higher is better. **Lower is better**; negative = better than single-task.
    Every metric weighs the same, so a task with more metrics weighs more.

``delta_p`` (LibMTL's ``count_improvement``)
    ``Δp = (1/T) Σ_t (1/M_t) Σ_{m in t} s_m r_m × 100``: averaged within each task first, then
    over the T tasks. **Higher is better**. (LibMTL's function returns the fraction; here × 100.)

``delta_mtm`` (Gama & Grassi's Δ_MTM, spec ``siblings.md``)
    Relative change averaged within a task, then over tasks, sign flipped for lower-is-better
    metrics, higher is better: *the same formula as* ``delta_p``. It is kept as its own name so
    tables can label it as their source does; ``delta_mtm == delta_p`` always (tested).

Relations (tested): ``delta_mtm == delta_p``; and ``delta_p == -delta_m`` whenever every task has
the same number of metrics (one metric per task in particular), because then the mean of the
per-task means is the mean over all metrics. With unequal metric counts they differ.

:func:`mean_rank` is the mean rank (MR) companion of Δmtm: rank the methods on each metric (1 =
best, ties share the average rank) and average each method's ranks over the metrics. Lower is
better.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

Convention = Literal["delta_m", "delta_p", "delta_mtm"]
CONVENTIONS: tuple[str, ...] = ("delta_m", "delta_p", "delta_mtm")
#: Whether a larger value of each convention means a better method.
CONVENTION_HIGHER_IS_BETTER: dict[str, bool] = {
    "delta_m": False,
    "delta_p": True,
    "delta_mtm": True,
}


def _task_of(key: str) -> str:
    task, sep, metric = key.partition("/")
    if not sep or not task or not metric:
        raise ValueError(f"metric key {key!r} is not of the form 'task/metric'")
    return task


def signed_relative_changes(
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> dict[str, float]:
    """``s_k (M_k - B_k) / B_k × 100`` per metric key: positive = better than the baseline.

    Every key of ``metrics`` is used; each needs a finite, non-zero baseline value and a
    direction. Keys only in ``baseline`` or ``higher_is_better`` are ignored.
    """
    if not metrics:
        raise ValueError("no metrics given")
    out: dict[str, float] = {}
    for key, value in metrics.items():
        _task_of(key)
        if key not in baseline:
            raise ValueError(f"metric {key!r} is missing from the baseline")
        if key not in higher_is_better:
            raise ValueError(f"metric {key!r} has no higher-is-better flag")
        base = float(baseline[key])
        value = float(value)
        if base == 0:
            raise ValueError(f"baseline value of metric {key!r} is zero")
        if not (math.isfinite(base) and math.isfinite(value)):
            raise ValueError(f"metric {key!r}: value {value} or baseline {base} is not finite")
        sign = 1.0 if higher_is_better[key] else -1.0
        out[key] = sign * (value - base) / base * 100.0
    return out


def delta(
    metrics: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
    convention: Convention = "delta_m",
) -> float:
    """Relative performance of ``metrics`` against ``baseline`` in percent (module docstring).

    ``delta_m``: lower is better. ``delta_p`` and ``delta_mtm`` (identical): higher is better.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")
    changes = signed_relative_changes(metrics, baseline, higher_is_better)
    if convention == "delta_m":
        return -sum(changes.values()) / len(changes)
    per_task: dict[str, list[float]] = {}
    for key, change in changes.items():
        per_task.setdefault(_task_of(key), []).append(change)
    return sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)


def mean_rank(
    table: Mapping[str, Mapping[str, float]],
    higher_is_better: Mapping[str, bool],
) -> dict[str, float]:
    """Mean rank (MR) per method over the metrics of ``higher_is_better``; lower is better.

    ``table`` maps method -> {``"task/metric"``: value}. For each metric the methods are ranked
    1..n (1 = best, by the metric's direction; tied values share the mean of their ranks), and a
    method's MR is the mean of its ranks over all metrics. Every method needs every metric.
    """
    if not table:
        raise ValueError("no methods given")
    if not higher_is_better:
        raise ValueError("no metrics given")
    for method, row in table.items():
        missing = [k for k in higher_is_better if k not in row]
        if missing:
            raise ValueError(f"method {method!r} lacks metric(s) {missing}")
    ranks: dict[str, float] = dict.fromkeys(table, 0.0)
    for key, higher in higher_is_better.items():
        values = {m: float(row[key]) for m, row in table.items()}
        for m, v in values.items():
            if not math.isfinite(v):
                raise ValueError(f"method {m!r}: metric {key!r} is not finite ({v})")
            better = sum(1 for w in values.values() if (w > v if higher else w < v))
            ties = sum(1 for w in values.values() if w == v)  # includes m itself
            ranks[m] += better + (ties + 1) / 2
    return {m: r / len(higher_is_better) for m, r in ranks.items()}
