"""The CelebA-style run's table: per-attribute test accuracy and F1 per method x optimizer.

Rows are the attributes (alphabetical, as CelebA lists its 40), then the mean accuracy, the
mean F1 and Δm. A cell is ``mean ± std`` over seeds. Where a method x optimizer ran several
learning rates, the one with the best mean validation accuracy is shown (the paper selects on
validation).

Δm (Maninis et al.; lower is better) is taken over the per-attribute *accuracies* against a
*reference run* (default: EW with Adam), not against single-task baselines: the embedded
default does not train 10+ single-task networks. F1 is left out of Δm because a rare
attribute's F1 can be 0, where a relative change is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mtl_paradigms.analysis.delta import delta


def _attributes(test: Mapping[str, float]) -> list[str]:
    return [k.split("/", 1)[0] for k in test if k.endswith("/accuracy")]


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {std:.3f}"


def _delta_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):+.2f} ± {std:.2f}"


def select_runs(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], list[dict]]:
    """(method, optimizer) -> the runs (all seeds) of its learning rate with the best mean
    validation accuracy; diverged runs are dropped."""
    groups: dict[tuple[str, str, float], list[dict]] = {}
    for record in records:
        if record.get("diverged") or record.get("test") is None:
            continue
        s = record["settings"]
        groups.setdefault((s["method"], s["optimizer"], float(s["lr"])), []).append(dict(record))
    best: dict[tuple[str, str], tuple[float, list[dict]]] = {}
    for (method, optimizer, _), runs in sorted(groups.items()):
        score = float(
            np.mean(
                [np.mean([v for k, v in r["val"].items() if k.endswith("/accuracy")]) for r in runs]
            )
        )
        key = (method, optimizer)
        if key not in best or score > best[key][0]:
            best[key] = (score, runs)
    return {key: runs for key, (_, runs) in best.items()}


def attribute_table(
    records: Sequence[Mapping[str, Any]], reference: tuple[str, str] = ("ew", "adam")
) -> pd.DataFrame:
    """The table of the module doc from the runs' ``metrics.json`` contents."""
    chosen = select_runs(records)
    if not chosen:
        raise ValueError("no finished, non-diverged run to tabulate")
    if reference not in chosen:
        raise ValueError(f"the reference {reference[0]}/{reference[1]} is not among the runs")
    attributes = _attributes(chosen[reference][0]["test"])
    acc_keys = [f"{a}/accuracy" for a in attributes]
    ref_acc = {k: float(np.mean([r["test"][k] for r in chosen[reference]])) for k in acc_keys}
    directions = dict.fromkeys(acc_keys, True)
    columns: dict[str, list[str]] = {}
    for (method, optimizer), runs in sorted(chosen.items()):
        column = [_cell([r["test"][f"{a}/accuracy"] for r in runs]) for a in attributes]
        column.append(_cell([np.mean([r["test"][k] for k in acc_keys]) for r in runs]))
        column.append(_cell([np.mean([r["test"][f"{a}/f1"] for a in attributes]) for r in runs]))
        deltas = [delta({k: r["test"][k] for k in acc_keys}, ref_acc, directions) for r in runs]
        column.append(_delta_cell([d for d in deltas if math.isfinite(d)]))
        lr = runs[0]["settings"]["lr"]
        columns[f"{method} ({optimizer}, lr {lr:g}, n={len(runs)})"] = column
    ref_name = f"{reference[0]} ({reference[1]})"
    index = [*attributes, "mean accuracy", "mean F1", f"Δm vs {ref_name} (%)"]
    return pd.DataFrame({"attribute": index, **columns})
