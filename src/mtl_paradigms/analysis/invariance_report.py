"""Figures A1/A2 and the checks table of the loss-scale invariance toy (Elich et al. 2024).

The figures read the tidy records of :func:`mtl_paradigms.toy.invariance.run_invariance`.
Each panel shows a per-epoch mean (over the epoch's steps) on a log scale; one colour per run,
solid lines for the ``equal`` setting and dashed lines for the ``scaled`` one. Rows: scaled losses,
gradient magnitudes, update magnitudes; columns: head 1, head 2 (and the backbone in Fig A2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from mtl_paradigms.analysis.outputs import save_figure, write_table
from mtl_paradigms.toy.invariance import BACKBONE_MODULE, FIGURES, RUN_LABELS

RUN_COLORS = {
    "sgd_ew": "tab:red",
    "adam_ew": "tab:blue",
    "sgd_uwo": "tab:green",
    "adam_per_task": "tab:purple",
}
SETTING_STYLES = {"equal": "-", "scaled": "--"}
ROWS = (
    ("loss", "scaled loss"),
    ("grad_norm", "gradient magnitude"),
    ("update_norm", "update magnitude"),
)
SUBTITLE = "per-epoch means; where a run is invariant its dashed line hides behind the solid one"
CHECK_COLUMNS = (
    "id",
    "statement",
    "modules",
    "adam_eps",
    "loss_scales",
    "metric",
    "measured",
    "tolerance",
    "expect",
    "holds",
    "lockstep",
    "free_running",
)


def epoch_means(records: pd.DataFrame, figure: str) -> pd.Series:
    """Per-epoch mean of every (run, setting, quantity, module) of ``figure``."""
    data = records[records["figure"] == figure]
    if data.empty:
        raise ValueError(f"records hold no rows for figure {figure!r}")
    return data.groupby(["run", "setting", "quantity", "module", "epoch"])["value"].mean()


def _module_title(module: str) -> str:
    return "backbone" if module == BACKBONE_MODULE else f"head {module.removeprefix('head')}"


def _row_label(quantity: str, label: str, module: str) -> str:
    if quantity == "loss" and module == BACKBONE_MODULE:
        return "sum of scaled losses"
    return label


def _scaled_label(loss_scales: Sequence[float] | None) -> str:
    if loss_scales is None:
        return "scaled"
    factors = ", ".join(f"L{t + 1}×{a:g}" for t, a in enumerate(loss_scales))
    return f"scaled ({factors})"


def _plot(
    records: pd.DataFrame,
    figure: str,
    title: str,
    stem: str | os.PathLike[str] | None,
    loss_scales: Sequence[float] | None,
) -> plt.Figure:
    means = epoch_means(records, figure)
    present = set(means.index.get_level_values("run"))
    runs = [run for run in FIGURES[figure][1] if run in present]
    present_modules = set(means.index.get_level_values("module"))
    heads = sorted(
        (m for m in present_modules if m != BACKBONE_MODULE),
        key=lambda m: int(m.removeprefix("head")),
    )
    modules = heads + ([BACKBONE_MODULE] if BACKBONE_MODULE in present_modules else [])
    keys = set(means.index.droplevel("epoch"))
    fig, axes = plt.subplots(
        len(ROWS), len(modules), figsize=(3.6 * len(modules), 8.0), sharex=True, squeeze=False
    )
    for i, (quantity, label) in enumerate(ROWS):
        for j, module in enumerate(modules):
            ax = axes[i][j]
            for run in runs:
                for setting, style in SETTING_STYLES.items():
                    key = (run, setting, quantity, module)
                    if key not in keys:
                        continue
                    series = means.loc[key]
                    ax.plot(
                        series.index,
                        series.to_numpy(),
                        color=RUN_COLORS.get(run, "black"),
                        linestyle=style,
                        linewidth=1.6 if setting == "equal" else 1.2,
                    )
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            if i == 0:
                ax.set_title(_module_title(module))
            if j == 0 or module == BACKBONE_MODULE:
                ax.set_ylabel(_row_label(quantity, label, module))
            if i == len(ROWS) - 1:
                ax.set_xlabel("epoch")
    handles = [
        Line2D([], [], color=RUN_COLORS.get(run, "black"), label=RUN_LABELS.get(run, run))
        for run in runs
    ]
    handles += [
        Line2D([], [], color="black", linestyle="-", label="equal"),
        Line2D([], [], color="black", linestyle="--", label=_scaled_label(loss_scales)),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{title}\n{SUBTITLE}")
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    if stem is not None:
        save_figure(fig, stem)
    return fig


def plot_fig_a1(
    records: pd.DataFrame,
    stem: str | os.PathLike[str] | None = None,
    *,
    loss_scales: Sequence[float] | None = None,
) -> plt.Figure:
    """Fig A1: frozen backbone; per head the scaled losses, gradient and update magnitudes.

    ``loss_scales`` only labels the dashed lines. Saved as ``stem.pdf/.png`` when ``stem`` is given.
    """
    return _plot(records, "A1", "Fig A1 — frozen backbone", stem, loss_scales)


def plot_fig_a2(
    records: pd.DataFrame,
    stem: str | os.PathLike[str] | None = None,
    *,
    loss_scales: Sequence[float] | None = None,
) -> plt.Figure:
    """Fig A2: learnable backbone; heads and backbone, including one Adam per task."""
    return _plot(records, "A2", "Fig A2 — learnable backbone", stem, loss_scales)


def checks_table(checks: pd.DataFrame) -> pd.DataFrame:
    """The checks frame with its numbers rounded to 3 significant digits, for display."""
    table = checks[[c for c in CHECK_COLUMNS if c in checks.columns]].copy()
    for column in ("adam_eps", "measured", "tolerance", "lockstep", "free_running"):
        if column in table:
            table[column] = [float(f"{v:.3g}") for v in table[column]]
    return table


def write_checks_table(
    checks: pd.DataFrame, stem: str | os.PathLike[str]
) -> list[os.PathLike[str]]:
    """Write the checks as ``stem.csv/.md/.tex`` (numbers rounded to 3 significant digits)."""
    caption = (
        "Invariance derivation checks (Elich et al. 2024, Theory). Scaled vs equal losses from "
        "identical weights and minibatches. measured: see metric; lockstep: largest relative "
        "difference of the updates proposed from the same parameters; free_running: largest "
        "relative parameter difference of freely trained runs (rounding differences grow where "
        "the dynamics are chaotic)."
    )
    return list(write_table(checks_table(checks), stem, caption=caption))
