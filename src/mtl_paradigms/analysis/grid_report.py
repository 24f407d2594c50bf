"""Figs. 2 / A3 / A4, Tables 2 / A2 / A4–A7 and the claims of the main training grid.

Every function takes the run table (``runs.csv`` as read by :func:`grid.load_runs`) and,
where metrics are compared, the ``{metric_key: higher_is_better}`` directions; it returns a
Figure or DataFrame and writes files when a stem / directory is given. Optimizer ``"sgd"``
is SGD with momentum, ``"signsgd"`` signSGD with momentum. Δm is in percent, lower is
better. The paper's values (:mod:`paper_values`) are shown beside ours wherever the spec has
them; on synthetic data their column says "paper (real data)".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from mtl_paradigms.analysis import grid, paper_values, placeholders
from mtl_paradigms.analysis.claims import Claim
from mtl_paradigms.analysis.outputs import save_figure, write_table
from mtl_paradigms.analysis.pareto import pareto_counts, pareto_mask

STAGE = "main"

DATASET_NAMES = {"cityscapes": "Cityscapes", "nyuv2": "NYUv2", "celeba": "CelebA"}
ARCH_NAMES = {"segnet": "SegNet", "deeplabv3": "DeepLabV3", "resnet18": "ResNet-18"}
OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD+mom", "signsgd": "signSGD+mom"}
METHOD_NAMES = {
    "stl": "STL",
    "ew": "EW",
    "uw": "UW",
    "uwo": "UW-O",
    "rlw": "RLW",
    "imtl": "IMTL",
    "pcgrad": "PCGrad",
    "cagrad": "CAGrad",
    "aligned_mtl": "Aligned-MTL",
    "alignedmtl": "Aligned-MTL",
    "adatask": "AdaTask",
    "mtl_io": "MTL-IO",
    "mtlio": "MTL-IO",
    "mtl_ius": "MTL-IUS",
    "fixed": "Fixed",
    "si": "SI",
    "imtl_l": "IMTL-L",
    "imtl_g": "IMTL-G",
    "dwa": "DWA",
    "gradnorm": "GradNorm",
    "famo": "FAMO",
    "auto_lambda": "Auto-Lambda",
    "mgda": "MGDA",
    "mgda_ub": "MGDA-UB",
    "graddrop": "GradDrop",
    "nash_mtl": "Nash-MTL",
    "edm": "EDM",
    "cdtt": "CDTT",
}
METRIC_NAMES = {
    "segmentation/miou": "mIoU",
    "segmentation/pixacc": "pixAcc",
    "depth/abs_err": "abs err",
    "depth/rel_err": "rel err",
    "normal/mean": "normal mean",
    "normal/median": "normal median",
    "normal/within_11.25": "<11.25°",
    "normal/within_22.5": "<22.5°",
    "normal/within_30": "<30°",
}
OPTIMIZER_COLORS = {"adam": "#1f5fbf", "sgd": "#d9480f", "signsgd": "#2b8a3e"}
_FALLBACK_COLORS = ("#7048e8", "#c2255c", "#868e96", "#e67700")


def _name(mapping: Mapping[str, str], value: str) -> str:
    if mapping is METHOD_NAMES and value.startswith("fixed_from_"):
        return f"Fixed ({_name(mapping, value.removeprefix('fixed_from_'))})"
    return mapping.get(value, value)


def panel_name(dataset: str, arch: str) -> str:
    """File-name form of a panel, e.g. ``"cityscapes-segnet"``."""
    return f"{dataset}-{arch}"


def panel_title(dataset: str, arch: str) -> str:
    """Display form of a panel, e.g. ``"Cityscapes, SegNet"``."""
    return f"{_name(DATASET_NAMES, dataset)}, {_name(ARCH_NAMES, arch)}"


def _paper_label(runs: pd.DataFrame, dataset: str | None = None, arch: str | None = None) -> str:
    synthetic = grid.data_source(runs, dataset, arch) == "synthetic"
    return "paper (real data)" if synthetic else "paper"


def _optimizer_color(optimizer: str, present: Sequence[str]) -> str:
    if optimizer in OPTIMIZER_COLORS:
        return OPTIMIZER_COLORS[optimizer]
    unknown = [o for o in present if o not in OPTIMIZER_COLORS]
    return _FALLBACK_COLORS[unknown.index(optimizer) % len(_FALLBACK_COLORS)]


def _for_output(table: pd.DataFrame) -> pd.DataFrame:
    """Missing values as an en dash, for the written files."""
    return table.astype(object).where(table.notna(), "–")


def _require_directions(metrics: Sequence[str], directions: Mapping[str, bool]) -> list[bool]:
    missing = [m for m in metrics if m not in directions]
    if missing:
        raise KeyError(f"no higher-is-better direction given for metric(s) {missing}")
    return [bool(directions[m]) for m in metrics]


# --------------------------------------------------------------------------- Fig. 2 / A4


def plot_parallel_coordinates(
    runs: pd.DataFrame,
    dataset: str,
    arch: str,
    metrics: Sequence[str] | None,
    directions: Mapping[str, bool],
    stem: str | os.PathLike[str] | None = None,
    *,
    ax: Axes | None = None,
) -> Figure:
    """Fig. 2 / A4 panel: one polyline per non-diverged MTL run across the metric axes.

    Each axis is min–max scaled over the plotted runs and oriented so that up is better
    (tick labels in the metric's own units). Lines are coloured by optimizer; runs that are
    Pareto-optimal among all plotted runs are drawn bold and opaque on top, the others thin and
    transparent. ``metrics`` defaults to the panel's metrics in the paper's order. Draws into
    ``ax`` when given (and then returns its figure), else a new figure.
    """
    cols = list(metrics) if metrics is not None else grid.panel_metrics(runs, dataset, arch)
    hib = np.array(_require_directions(cols, directions), dtype=bool)
    sub = grid.mtl_runs(grid.panel_runs(runs, dataset, arch))
    pts = sub[cols].to_numpy(dtype=float)
    keep = np.isfinite(pts).all(axis=1) if len(cols) else np.zeros(len(sub), dtype=bool)
    pts, optimizers = pts[keep], sub["optimizer"].to_numpy()[keep]
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.25 * max(len(cols), 2) + 2.5, 4.0))
    else:
        fig = ax.figure
    ax.set_title(f"{panel_title(dataset, arch)}: {len(pts)} runs (up = better)", fontsize=10)
    if len(pts) == 0 or not cols:
        note = placeholders.empty_panel_note(runs, dataset, arch)
        placeholders.say_on_axes(ax, "no runs" if note is None else f"{note}; no figure")
    else:
        optimal = pareto_mask(pts, hib)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        scaled = (pts - lo) / span
        scaled = np.where(hib, scaled, 1.0 - scaled)
        scaled[:, hi == lo] = 0.5
        _draw_polylines(ax, scaled, optimizers, optimal)
        _draw_axes(ax, cols, lo, hi, hib)
    if stem is not None:
        save_figure(fig, stem)
    return fig


def _draw_polylines(
    ax: Axes, scaled: np.ndarray, optimizers: np.ndarray, optimal: np.ndarray
) -> None:
    xs = np.arange(scaled.shape[1], dtype=float)
    segments = np.stack([np.broadcast_to(xs, scaled.shape), scaled], axis=-1)  # (n, d, 2)
    present = grid.ordered_values(optimizers, "optimizer")
    handles = []
    # Draw order: all thin lines first (SGD-like under Adam), then the Pareto-optimal ones.
    for bold in (False, True):
        for opt in reversed(present):
            sel = (optimizers == opt) & (optimal == bold)
            if not sel.any():
                continue
            color = _optimizer_color(opt, present)
            ax.add_collection(
                LineCollection(
                    list(segments[sel]),
                    colors=color,
                    linewidths=2.2 if bold else 0.6,
                    alpha=1.0 if bold else 0.18,
                    zorder=3 if bold else 2,
                )
            )
    for opt in present:
        color = _optimizer_color(opt, present)
        n_opt = int((optimizers == opt).sum())
        n_po = int(((optimizers == opt) & optimal).sum())
        name = _name(OPTIMIZER_NAMES, opt)
        handles.append(Line2D([], [], color=color, lw=0.8, alpha=0.5, label=f"{name} ({n_opt})"))
        handles.append(Line2D([], [], color=color, lw=2.2, label=f"{name} Pareto-opt. ({n_po})"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _draw_axes(
    ax: Axes, metrics: Sequence[str], lo: np.ndarray, hi: np.ndarray, hib: np.ndarray
) -> None:
    """Vertical axes with ticks in original units (best value at the top)."""
    fractions = np.linspace(0.0, 1.0, 5)
    for i in range(len(metrics)):
        ax.axvline(i, color="k", lw=0.8, zorder=4)
        for f in fractions:
            value = lo[i] + f * (hi[i] - lo[i]) if hib[i] else hi[i] - f * (hi[i] - lo[i])
            ax.plot([i - 0.03, i], [f, f], color="k", lw=0.8, zorder=4)
            ax.text(
                i - 0.05,
                f,
                f"{value:.3g}",
                ha="right",
                va="center",
                fontsize=6,
                zorder=5,
                bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
            )
    ax.set_xlim(-0.45, len(metrics) - 1 + 0.1)
    ax.set_ylim(-0.04, 1.04)
    ax.set_xticks(range(len(metrics)))
    ax.set_xticklabels([_name(METRIC_NAMES, m) for m in metrics], fontsize=8)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)


def plot_parallel_coordinates_panels(
    runs: pd.DataFrame,
    dataset: str,
    directions: Mapping[str, bool],
    metrics: Sequence[str] | None = None,
    stem: str | os.PathLike[str] | None = None,
) -> Figure:
    """All architectures of ``dataset`` stacked, one parallel-coordinate panel each."""
    archs = [a for d, a in grid.panels(runs) if d == dataset]
    if not archs:
        raise ValueError(f"no runs for dataset {dataset!r}")
    if metrics is None:  # the axes of the first panel with any (a panel may have none)
        per_arch = (grid.panel_metrics(runs, dataset, arch) for arch in archs)
        metrics = next((m for m in per_arch if m), [])
    n_axes = len(metrics)
    fig, axes = plt.subplots(
        len(archs), 1, figsize=(1.25 * max(n_axes, 2) + 2.5, 3.8 * len(archs)), squeeze=False
    )
    for ax, arch, letter in zip(axes[:, 0], archs, "abcdefgh", strict=False):
        plot_parallel_coordinates(runs, dataset, arch, metrics, directions, ax=ax)
        ax.set_title(f"({letter}) {ax.get_title()}", fontsize=10)
    fig.tight_layout()
    if stem is not None:
        save_figure(fig, stem)
    return fig


def plot_fig2(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    stem: str | os.PathLike[str] | None = None,
) -> Figure:
    """Fig. 2: parallel coordinates of all Cityscapes runs, (a) SegNet, (b) DeepLabV3."""
    return plot_parallel_coordinates_panels(runs, "cityscapes", directions, stem=stem)


def plot_fig_a4(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    stem: str | os.PathLike[str] | None = None,
) -> Figure:
    """Fig. A4: parallel coordinates of all NYUv2 runs (9 axes), SegNet and DeepLabV3."""
    return plot_parallel_coordinates_panels(runs, "nyuv2", directions, stem=stem)


# --------------------------------------------------------------------------- Table 2 / A2

_COUNT_LABELS = {
    "n_a": "{A} runs",
    "n_b": "{B} runs",
    "n_pool": "all MTL runs",
    "a_po_all": "{A} PO (all runs)",
    "a_po_vs_b": "{A} PO w.r.t. {B} only",
    "b_po_all": "{B} PO (all runs)",
    "b_po_vs_a": "{B} PO w.r.t. {A} only",
}
_PAPER_KEYS = {
    "a_po_all": "adam_po_all",
    "a_po_vs_b": "adam_po_vs_sgd",
    "b_po_all": "sgd_po_all",
    "b_po_vs_a": "sgd_po_vs_adam",
}


def _count_table(
    counts: pd.DataFrame, a: str, b: str, by: str | None, paper: str | None
) -> pd.DataFrame:
    names = {"A": _name(OPTIMIZER_NAMES, a), "B": _name(OPTIMIZER_NAMES, b)}
    out = pd.DataFrame(
        {
            "dataset": [_name(DATASET_NAMES, d) for d in counts["dataset"]],
            "network": [_name(ARCH_NAMES, x) for x in counts["arch"]],
        }
    )
    if by is not None:
        out[by] = [_name(METHOD_NAMES, m) if by == "method" else m for m in counts[by]]
    for key, label in _COUNT_LABELS.items():
        col = label.format(**names)
        out[col] = counts[key].to_numpy()
        if paper is not None and key in _PAPER_KEYS:
            values = [
                (paper_values.paper_table2(d, x) or {}).get(_PAPER_KEYS[key], pd.NA)
                for d, x in zip(counts["dataset"], counts["arch"], strict=True)
            ]
            out[f"{col}, {paper}"] = pd.array(values, dtype="Int64")
    return out


def table2(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    stem: str | os.PathLike[str] | None = None,
    *,
    a: str = "adam",
    b: str = "sgd",
) -> pd.DataFrame:
    """Table 2: Pareto-optimal run counts per panel (see :func:`pareto.pareto_counts`).

    Columns: dataset, network, run counts, then each count with the paper's beside it (when
    ``a``/``b`` are Adam/SGD). Written as ``stem.csv/.md/.tex`` when ``stem`` is given.
    """
    counts = pareto_counts(runs, None, directions, a=a, b=b)
    paper = _paper_label(runs) if (a, b) == ("adam", "sgd") else None
    table = _count_table(counts, a, b, None, paper)
    if stem is not None:
        caption = (
            f"Number of Pareto-optimal runs (PO) of {_name(OPTIMIZER_NAMES, a)} and "
            f"{_name(OPTIMIZER_NAMES, b)}: among all non-diverged MTL runs of a panel (all "
            "methods, learning rates, seeds and optimizers), and against the other optimizer's "
            "runs only (not dominated by any of them). Objective space: all test metrics."
        ) + placeholders.caption_note(runs, panel_title)
        write_table(_for_output(table), stem, caption)
    return table


def table_a2(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    stem: str | os.PathLike[str] | None = None,
    *,
    scope: str = "within",
    a: str = "adam",
    b: str = "sgd",
) -> pd.DataFrame:
    """Table A2: Table 2 per method. ``scope="within"``: each method's runs form their own pool
    (Adam-EW vs SGD-EW, ...); ``"global"``: the panel's counts attributed to methods. The spec
    gives no per-method paper counts, so there is no paper column.
    """
    counts = pareto_counts(runs, None, directions, a=a, b=b, by="method", scope=scope)
    table = _count_table(counts, a, b, "method", None)
    if stem is not None:
        pool = (
            "each method's non-diverged runs (all learning rates and seeds) form the pool"
            if scope == "within"
            else "Pareto status within all MTL runs of the panel, counted per method"
        )
        caption = f"Pareto-optimal runs per method ({pool}). Objective space: all test metrics."
        caption += placeholders.caption_note(runs, panel_title)
        write_table(_for_output(table), stem, caption)
    return table


# --------------------------------------------------------------------------- Tables A4–A7


def _selected_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """The lr selection joined with the seed summary at the selected lr (one row per combo)."""
    selection = grid.select_learning_rates(runs)
    summary = grid.summarise(grid.runs_at_selected_lr(runs, selection))
    summary = summary.drop(columns=["lr"]).rename(columns={"n_seeds": "n_ok"})
    merged = selection.merge(summary, on=list(grid.COMBO_KEYS), how="left")
    return grid.sort_rows(merged, grid.COMBO_KEYS)


def _seeds_text(row: pd.Series) -> str:
    """Seeds behind a row: ``"3"``, or ``"2/3"`` when some runs at that lr failed."""
    n_all = row.get("n_seeds", math.nan)
    n_ok = row.get("n_ok", n_all)
    if pd.isna(n_all):
        return "–"
    n_ok = 0 if pd.isna(n_ok) else int(n_ok)
    return str(n_ok) if n_ok == int(n_all) else f"{n_ok}/{int(n_all)}"


def _result_row(
    row: pd.Series, metrics: Sequence[str], method: str, optimizer: str
) -> dict[str, object]:
    out: dict[str, object] = {"method": method, "optimizer": optimizer}
    lr = row.get("lr", math.nan)
    out["lr"] = "–" if pd.isna(lr) else f"{lr:g}"
    out["seeds"] = _seeds_text(row)
    for m in metrics:
        out[_name(METRIC_NAMES, m)] = grid.format_mean_std(
            row.get(f"{m}_mean", math.nan), row.get(f"{m}_std", math.nan)
        )
    out["Δm (%)"] = grid.format_mean_std(
        row.get(f"{grid.DELTA_M}_mean", math.nan), row.get(f"{grid.DELTA_M}_std", math.nan), 2
    )
    return out


def _budget(runs: pd.DataFrame) -> dict[tuple[str, str, str, str], tuple[str, str]]:
    """Per dataset x arch x method x optimizer: the number of learning rates tried and the
    epochs per run, so rows from a small extra sweep are not mistaken for full-grid rows."""
    out = {}
    keys = ["dataset", "arch", "method", "optimizer"]
    for key, group in runs.groupby(keys):
        epochs = sorted({int(e) for e in group.get("epochs", pd.Series(dtype=float)).dropna()})
        out[tuple(key)] = (
            str(group["lr"].nunique()),
            "/".join(str(e) for e in epochs) if epochs else "–",
        )
    return out


def _panel_table(
    runs: pd.DataFrame, selected: pd.DataFrame, stl: pd.DataFrame, dataset: str, arch: str
) -> pd.DataFrame:
    metrics = grid.panel_metrics(runs, dataset, arch)
    paper = _paper_label(runs, dataset, arch)
    paper_col = f"Δm (%), {paper}"
    rows = []
    for _, r in grid.panel_runs(stl, dataset, arch).iterrows():
        row = _result_row(r, metrics, "STL", _name(OPTIMIZER_NAMES, r["optimizer"]))
        rows.append({**row, paper_col: "–"})
    reference = paper_values.paper_stl(dataset, arch)
    if reference is not None:
        row = {"method": f"STL, {paper}", "optimizer": "Adam", "lr": "–", "seeds": "–"}
        for m in metrics:
            value = reference.get(m)
            row[_name(METRIC_NAMES, m)] = "–" if value is None else f"{value:g}"
        rows.append({**row, "Δm (%)": "–", paper_col: "–"})
    budget = _budget(runs)
    for _, r in grid.panel_runs(selected, dataset, arch).iterrows():
        row = _result_row(
            r, metrics, _name(METHOD_NAMES, r["method"]), _name(OPTIMIZER_NAMES, r["optimizer"])
        )
        key = (dataset, arch, r["method"], r["optimizer"])
        row["lrs"], row["epochs"] = budget.get(key, ("–", "–"))
        if pd.isna(r["lr"]):
            row["Δm (%)"] = "all runs failed"
        value = paper_values.paper_delta_m(dataset, arch, r["method"], r["optimizer"])
        rows.append({**row, paper_col: "–" if value is None else f"{value:.2f}"})
    table = pd.DataFrame(rows)
    for offset, column in enumerate(("lrs", "epochs"), start=1):
        values = table.pop(column).fillna("–") if column in table else "–"
        table.insert(table.columns.get_loc("seeds") + offset, column, values)
    return table


def tables_a4_a7(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    out_dir: str | os.PathLike[str] | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, pd.DataFrame]:
    """Tables A4–A7, keyed by panel name (``"cityscapes-segnet"``, ...).

    Rows: our STL baseline (per optimizer it was run with), the paper's STL reference where
    the spec has one, then method × optimizer in the paper's order. Columns: method,
    optimizer, selected lr, seeds (non-diverged runs at that lr), every test metric and Δm as
    ``mean ± std`` over seeds, and the paper's Δm. With ``out_dir``, each table is written as
    ``out_dir/<name>.csv/.md/.tex``, ``name`` from ``names`` (panel key -> file stem, e.g. the
    paper's ``tableA4``) or ``table_a4_a7_<panel>``. A panel whose MTL runs all diverged gets a
    one-row table saying so (:func:`placeholders.placeholder_table`).
    """
    selected = _selected_summary(runs)
    stl = grid.stl_summary(runs)
    tables = {}
    empty = placeholders.empty_panels(runs)
    for dataset, arch in grid.panels(runs):
        key = panel_name(dataset, arch)
        name = (names or {}).get(key, f"table_a4_a7_{key}")
        if (dataset, arch) in empty:  # every MTL run diverged: a table that says so
            note, title = empty[dataset, arch], panel_title(dataset, arch)
            tables[key] = placeholders.placeholder_table(title, note)
            if out_dir is not None:
                placeholders.write_placeholder_table(title, note, Path(out_dir) / name)
            continue
        metrics = grid.panel_metrics(runs, dataset, arch)
        _require_directions(metrics, directions)
        table = _panel_table(runs, selected, stl, dataset, arch)
        tables[key] = table
        if out_dir is not None:
            up = ", ".join(_name(METRIC_NAMES, m) for m in metrics if directions[m])
            down = ", ".join(_name(METRIC_NAMES, m) for m in metrics if not directions[m])
            caption = (
                f"{panel_title(dataset, arch)}: test metrics and Δm (%, lower is better) as mean "
                "± std over seeds at the learning rate selected on validation Δm (lrs: "
                "learning rates tried; epochs: per run; rows with fewer of either come from a "
                "smaller sweep and are not comparable with the full grid). Higher is "
                f"better: {up or 'none'}; lower is better: {down or 'none'}."
            )
            write_table(table, Path(out_dir) / name, caption)
    return tables


# --------------------------------------------------------------------------- Fig. A3


def plot_fig_a3(
    runs: pd.DataFrame,
    stem: str | os.PathLike[str] | None = None,
    *,
    optimizers: Sequence[str] = ("adam", "sgd"),
    show_paper: bool = True,
) -> Figure:
    """Fig. A3: mean test Δm (± std over seeds) per method at its selected lr, one bar per
    optimizer (Adam vs SGD+mom by default), one panel per dataset × arch. Black diamonds: the
    paper's Δm where the spec has it (real data, also when ``runs`` are synthetic). Methods
    whose runs all failed get an ``×``.
    """
    selected = _selected_summary(runs)
    selected = selected[selected["optimizer"].isin(optimizers)]
    panel_list = grid.panels(selected) if not selected.empty else []
    n = max(len(panel_list), 1)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.0 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(panel_list) :]:
        ax.set_axis_off()
    if not panel_list:
        axes[0, 0].text(0.5, 0.5, "no runs", ha="center", va="center")
    present = grid.ordered_values(selected["optimizer"], "optimizer")
    empty = placeholders.empty_panels(runs)
    for ax, (dataset, arch) in zip(axes.flat, panel_list, strict=False):
        _draw_a3_panel(ax, grid.panel_runs(selected, dataset, arch), present, show_paper)
        ax.set_title(panel_title(dataset, arch), fontsize=10)
        if (dataset, arch) in empty:
            placeholders.say_on_axes(ax, empty[dataset, arch], hide_axes=False, y=0.75)
    handles: list = [
        Patch(color=_optimizer_color(o, present), label=_name(OPTIMIZER_NAMES, o)) for o in present
    ]
    if show_paper:
        paper = _paper_label(runs)
        handles.append(Line2D([], [], marker="D", color="k", ls="", ms=4, label=paper))
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    if stem is not None:
        save_figure(fig, stem)
    return fig


def _draw_a3_panel(
    ax: Axes, selected: pd.DataFrame, optimizers: Sequence[str], show_paper: bool
) -> None:
    methods = grid.ordered_values(selected["method"], "method")
    width = 0.8 / max(len(optimizers), 1)
    mean_col, std_col = f"{grid.DELTA_M}_mean", f"{grid.DELTA_M}_std"
    for j, opt in enumerate(optimizers):
        offset = (j - (len(optimizers) - 1) / 2) * width
        for i, method in enumerate(methods):
            row = selected[(selected["method"] == method) & (selected["optimizer"] == opt)]
            if row.empty:
                continue
            x = i + offset
            mean, std = row[mean_col].iloc[0], row[std_col].iloc[0]
            color = _optimizer_color(opt, optimizers)
            if pd.isna(mean):
                ax.plot(x, 0.0, marker="x", color=color, ms=6)
            else:
                yerr = None if pd.isna(std) else std
                ax.bar(x, mean, width, yerr=yerr, color=color, capsize=2, error_kw={"lw": 0.8})
            if show_paper:
                paper = paper_values.paper_delta_m(
                    str(row["dataset"].iloc[0]), str(row["arch"].iloc[0]), method, opt
                )
                if paper is not None:
                    ax.plot(x, paper, marker="D", color="k", ms=4, ls="", zorder=5)
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels([_name(METHOD_NAMES, m) for m in methods], rotation=30, fontsize=8)
    ax.set_ylabel("Δm (%), lower is better", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)


# --------------------------------------------------------------------------- claims


def _pareto_claim(runs: pd.DataFrame, directions: Mapping[str, bool], prefix: str) -> Claim:
    claim = "Adam runs Pareto-dominate SGD runs"
    source = "Elich et al. 2024, Table 2, Fig. 2, Fig. A4"
    counts = pareto_counts(runs, None, directions, a="adam", b="sgd")
    comparable = counts[(counts["n_a"] > 0) & (counts["n_b"] > 0)]
    unjudged = placeholders.unjudged(runs, panel_name)
    if comparable.empty:
        measured = f"{prefix}no panel with both Adam and SGD runs{unjudged}"
        return Claim(STAGE, claim, source, measured, False)
    parts = []
    for r in comparable.itertuples(index=False):
        paper = paper_values.paper_table2(r.dataset, r.arch)
        paper_text = (
            f" (paper {paper['adam_po_all']}/{paper['adam_po_vs_sgd']}/"
            f"{paper['sgd_po_all']}/{paper['sgd_po_vs_adam']})"
            if paper
            else ""
        )
        parts.append(
            f"{panel_name(r.dataset, r.arch)}: Adam PO all/w.r.t. SGD {r.a_po_all}/{r.a_po_vs_b}, "
            f"SGD PO all/w.r.t. Adam {r.b_po_all}/{r.b_po_vs_a}{paper_text}"
        )
    reproduced = bool((comparable["a_po_vs_b"] > comparable["b_po_vs_a"]).all()) and not unjudged
    return Claim(STAGE, claim, source, prefix + "; ".join(parts) + unjudged, reproduced)


def adam_vs_sgd_delta_m(runs: pd.DataFrame) -> pd.DataFrame:
    """Per panel × method run with both Adam and SGD: selected-lr mean test Δm of each and
    whether Adam's ≤ SGD's. A combo whose runs all failed counts as Δm = +inf; methods where
    both failed are left out.
    """
    selected = _selected_summary(runs)
    mean_col = f"{grid.DELTA_M}_mean"
    rows = []
    for (dataset, arch, method), group in selected.groupby(
        ["dataset", "arch", "method"], sort=False
    ):
        by_opt = group.set_index("optimizer")[mean_col]
        if not {"adam", "sgd"} <= set(by_opt.index):
            continue
        adam, sgd = (float(by_opt[o]) if pd.notna(by_opt[o]) else math.inf for o in ("adam", "sgd"))
        if math.isinf(adam) and math.isinf(sgd):
            continue
        rows.append(
            {
                "dataset": dataset,
                "arch": arch,
                "method": method,
                "adam": adam,
                "sgd": sgd,
                "adam_le_sgd": adam <= sgd,
            }
        )
    columns = ["dataset", "arch", "method", "adam", "sgd", "adam_le_sgd"]
    return grid.sort_rows(pd.DataFrame(rows, columns=columns), ["dataset", "arch", "method"])


def _delta_claim(runs: pd.DataFrame, prefix: str) -> Claim:
    claim = "Adam's Δm ≤ SGD's for most methods"
    source = "Elich et al. 2024, Fig. A3, Tables A4–A7"
    compared = adam_vs_sgd_delta_m(runs)
    unjudged = placeholders.unjudged(runs, panel_name)
    if compared.empty:
        measured = f"{prefix}no method run with both Adam and SGD{unjudged}"
        return Claim(STAGE, claim, source, measured, False)
    parts = []
    for (dataset, arch), group in compared.groupby(["dataset", "arch"], sort=False):
        lost = [_name(METHOD_NAMES, m) for m in group.loc[~group["adam_le_sgd"], "method"]]
        lost_text = f" (SGD better: {', '.join(lost)})" if lost else ""
        parts.append(
            f"{panel_name(dataset, arch)}: {int(group['adam_le_sgd'].sum())}/{len(group)}"
            f"{lost_text}"
        )
    wins, total = int(compared["adam_le_sgd"].sum()), len(compared)
    measured = f"{prefix}" + "; ".join(parts) + f"; overall {wins}/{total} methods{unjudged}"
    return Claim(STAGE, claim, source, measured, wins > total / 2 and not unjudged)


def grid_claims(runs: pd.DataFrame, directions: Mapping[str, bool]) -> list[Claim]:
    """The main grid's claims (stage ``"main"``), computed from ``runs``; nothing hard-coded.

    1. "Adam runs Pareto-dominate SGD runs": reproduced iff in every panel with both
       optimizers Adam's PO count w.r.t. SGD exceeds SGD's PO count w.r.t. Adam.
    2. "Adam's Δm ≤ SGD's for most methods": reproduced iff, over all panels, more than half
       of the (panel, method) pairs run with both optimizers have Adam's selected-lr mean test
       Δm ≤ SGD's.

    A panel without a non-diverged MTL run (every run diverged) cannot be judged: the claims
    name it and are then not reproduced.
    """
    prefix = "synthetic data: " if grid.data_source(runs) == "synthetic" else ""
    return [_pareto_claim(runs, directions, prefix), _delta_claim(runs, prefix)]


# --------------------------------------------------------------------------- all artefacts


@dataclass(frozen=True)
class MainArtefacts:
    """What :func:`write_main_artefacts` wrote, for a notebook to show without recomputing."""

    figures: dict[str, Figure]  # artefact id -> figure (closed; IPython's display still shows it)
    tables: dict[str, pd.DataFrame]  # artefact id -> table
    notes: dict[str, str] = field(default_factory=dict)  # panel name -> why it shows nothing


def write_main_artefacts(
    runs: pd.DataFrame,
    directions: Mapping[str, bool],
    panels: Sequence[Mapping[str, str]],
    figures_dir: str | os.PathLike[str],
) -> MainArtefacts:
    """Every artefact of the main experiment under the paper's ids, as the workflow declares.

    ``panels``: one mapping per dataset x architecture with keys ``dataset``, ``arch``,
    ``figure`` (e.g. ``fig2_segnet``) and ``table`` (e.g. ``tableA4``). Writes the per-panel
    parallel-coordinate figure and Tables A4-A7, plus ``table2``, ``tableA2`` and ``figA3``,
    and returns them keyed by those ids: every declared id, also for a panel whose runs all
    diverged (its table and figure say so; ``notes`` has why).
    """
    out = Path(figures_dir)
    figures: dict[str, Figure] = {}
    for panel in panels:
        figures[panel["figure"]] = plot_parallel_coordinates(
            runs, panel["dataset"], panel["arch"], None, directions, stem=out / panel["figure"]
        )
    figures["figA3"] = plot_fig_a3(runs, stem=out / "figA3")
    for fig in figures.values():
        plt.close(fig)  # written; shown where the notebook asks, not all at once
    names = {panel_name(p["dataset"], p["arch"]): p["table"] for p in panels}
    panel_tables = tables_a4_a7(runs, directions, out_dir=out, names=names)
    tables = {names[key]: table for key, table in panel_tables.items() if key in names}
    notes: dict[str, str] = {}
    for d, a, table in ((p["dataset"], p["arch"], p["table"]) for p in panels):
        if (note := placeholders.empty_panel_note(runs, d, a)) is not None:
            notes[panel_name(d, a)] = note
            if table not in tables:  # no row of the panel in the runs table at all
                tables[table] = placeholders.write_placeholder_table(
                    panel_title(d, a), note, out / table
                )
    tables["table2"] = table2(runs, directions, stem=out / "table2")
    tables["tableA2"] = table_a2(runs, directions, stem=out / "tableA2")
    return MainArtefacts(figures, tables, notes)
