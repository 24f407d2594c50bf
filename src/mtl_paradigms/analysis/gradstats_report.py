"""Figures of the gradient statistics: Figs 4, A5, A6, A7 per dataset x architecture, the
interference measure, and Fig 3 (the sub-population experiment).

Every panel plots a statistic over training epochs from the per-epoch summary table
(``gradstats.csv``, :data:`mtl_paradigms.gradstats.SUMMARY_COLUMNS`) as the paper draws it:
inter-sample pairs red, inter-task pairs blue; the per-epoch mean as a line, mean +- std as a
shade, the 2.5 % and 97.5 % percentiles as dotted lines.

* Fig 4: cosine similarity, magnitude similarity, ratio of conflicting parameters (pairwise);
* Fig A5: the same for the averaged gradients (inter-sample on the task-mean gradient,
  inter-task on the batch-mean gradient);
* Fig A6: cosine similarity over all pairs, positive pairs and negative (conflicting) pairs;
* Fig A7: the raw dot product, pairwise and averaged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mtl_paradigms.analysis.outputs import save_figure
from mtl_paradigms.gradstats import SUMMARY_COLUMNS

COLORS = {"inter_sample": "tab:red", "inter_task": "tab:blue"}
COMPARISON_LABELS = {"inter_sample": "inter-sample (task fixed)", "inter_task": "inter-task"}
STAT_LABELS = {
    "cosine": "cosine similarity",
    "magnitude": "magnitude similarity",
    "conflict": "ratio of conflicting parameters",
    "dot": "dot product",
    "interference": "interference (cos to mean gradient)",
}
SUBSET_LABELS = {"all": "all pairs", "positive": "positive pairs", "negative": "negative pairs"}
DATASET_NAMES = {"cityscapes": "Cityscapes", "nyuv2": "NYUv2", "celeba": "CelebA"}
ARCH_NAMES = {"segnet": "SegNet", "deeplabv3": "DeepLabV3", "resnet18": "ResNet-18"}
#: The figure families per panel: artefact prefix -> what it shows.
FAMILIES = ("fig4", "figA5", "figA6", "figA7")


def load_stats(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a ``gradstats.csv`` and check its columns."""
    stats = pd.read_csv(path)
    missing = [c for c in SUMMARY_COLUMNS if c not in stats.columns]
    if missing:
        raise ValueError(f"{path}: gradient-statistics table lacks column(s) {missing}")
    if stats.empty:
        raise ValueError(f"{path}: gradient-statistics table has no rows")
    return stats


def panel_title(dataset: str, arch: str) -> str:
    return f"{DATASET_NAMES.get(dataset, dataset)} – {ARCH_NAMES.get(arch, arch)}"


def select(stats: pd.DataFrame, **where: str) -> pd.DataFrame:
    rows = stats
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows.sort_values("epoch")


def draw_band(
    ax: Axes, rows: pd.DataFrame, color: str, label: str | None, linestyle: str = "-"
) -> None:
    """Mean line, mean +- std shade, dotted 2.5 % / 97.5 % percentiles over epochs."""
    rows = rows[rows["n"] > 0]
    if rows.empty:
        return
    x = rows["epoch"].to_numpy()
    mean, std = rows["mean"].to_numpy(), rows["std"].to_numpy()
    ax.plot(x, mean, color=color, linestyle=linestyle, label=label, lw=1.6)
    ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, lw=0)
    for column in ("p2_5", "p97_5"):
        ax.plot(x, rows[column].to_numpy(), color=color, linestyle=":", lw=1.0)


def _comparison_panel(
    ax: Axes, stats: pd.DataFrame, statistic: str, variant: str, subset: str
) -> None:
    for comparison, color in COLORS.items():
        rows = select(
            stats, statistic=statistic, variant=variant, subset=subset, comparison=comparison
        )
        draw_band(ax, rows, color, COMPARISON_LABELS[comparison])
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def _figure(
    stats: pd.DataFrame,
    panels: Sequence[tuple[str, str, str, str]],
    title: str,
    stem: str | os.PathLike[str] | None,
) -> Figure:
    """One row of panels ``(statistic, variant, subset, panel title)``."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (statistic, variant, subset, panel) in zip(axes[0], panels, strict=True):
        _comparison_panel(ax, stats, statistic, variant, subset)
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel(STAT_LABELS[statistic])
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(title + "  (line: mean, shade: ±std, dotted: 2.5/97.5 %)", fontsize=11)
    fig.tight_layout()
    if stem is not None:
        save_figure(fig, stem)
    return fig


def plot_fig4(
    stats: pd.DataFrame, title: str, stem: str | os.PathLike[str] | None = None
) -> Figure:
    panels = [(s, "pairwise", "all", STAT_LABELS[s]) for s in ("cosine", "magnitude", "conflict")]
    return _figure(stats, panels, f"Fig 4 – {title}", stem)


def plot_fig_a5(
    stats: pd.DataFrame, title: str, stem: str | os.PathLike[str] | None = None
) -> Figure:
    panels = [
        (s, "averaged", "all", f"{STAT_LABELS[s]} (averaged gradients)")
        for s in ("cosine", "magnitude", "conflict")
    ]
    return _figure(stats, panels, f"Fig A5 – {title}", stem)


def plot_fig_a6(
    stats: pd.DataFrame, title: str, stem: str | os.PathLike[str] | None = None
) -> Figure:
    panels = [("cosine", "pairwise", s, SUBSET_LABELS[s]) for s in SUBSET_LABELS]
    return _figure(stats, panels, f"Fig A6 – {title}", stem)


def plot_fig_a7(
    stats: pd.DataFrame, title: str, stem: str | os.PathLike[str] | None = None
) -> Figure:
    panels = [("dot", "pairwise", "all", "pairwise"), ("dot", "averaged", "all", "averaged")]
    return _figure(stats, panels, f"Fig A7 – {title}", stem)


PLOTTERS = {"fig4": plot_fig4, "figA5": plot_fig_a5, "figA6": plot_fig_a6, "figA7": plot_fig_a7}


def plot_interference(
    panels: Mapping[str, pd.DataFrame], stem: str | os.PathLike[str] | None = None
) -> Figure:
    """Gama & Grassi's interference measure over epochs, one line per panel."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (title, stats) in enumerate(panels.items()):
        rows = select(stats, statistic="interference", comparison="task_vs_mean")
        draw_band(ax, rows, f"C{i}", title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(STAT_LABELS["interference"])
    ax.set_title("Interference: mean cosine of each task's gradient to the average gradient")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if stem is not None:
        save_figure(fig, stem)
    return fig


FIG3_CURVES = (
    ("single", "inter_sample", "cross_subpopulation/same_class", "tab:red", "-",
     "single task, inter-sample: same class, different sub-populations"),
    ("single", "inter_sample", "same_subpopulation/same_class", "tab:red", "--",
     "single task, inter-sample: same class, same sub-population"),
    ("split", "inter_task", "all", "tab:blue", "-",
     "split into per-sub-population tasks, inter-task"),
)  # fmt: skip


def plot_fig3(
    stats: pd.DataFrame,
    training: pd.DataFrame | None = None,
    stem: str | os.PathLike[str] | None = None,
) -> Figure:
    """Fig 3 as an experiment: the single task's inter-sample statistics beside the split setup's
    inter-task statistics (cosine, magnitude similarity, conflicting-parameter ratio), and each
    setup's held-out accuracy."""
    statistics = ("cosine", "magnitude", "conflict")
    ncols = len(statistics) + (training is not None)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6), squeeze=False)
    for ax, statistic in zip(axes[0], statistics, strict=False):
        for setup, comparison, pair_type, color, style, label in FIG3_CURVES:
            rows = select(
                stats, setup=setup, comparison=comparison, pair_type=pair_type,
                statistic=statistic, variant="pairwise", subset="all",
            )  # fmt: skip
            draw_band(ax, rows, color, label, linestyle=style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(STAT_LABELS[statistic])
        ax.grid(alpha=0.3)
    if training is not None:
        ax = axes[0][-1]
        for setup, color in (("single", "tab:red"), ("split", "tab:blue")):
            rows = training[training["setup"] == setup].sort_values("epoch")
            ax.plot(rows["epoch"], rows["test_accuracy"], color=color, marker="o", label=setup)
        ax.set_xlabel("epoch")
        ax.set_ylabel("held-out accuracy (single task's label)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(FIG3_CURVES), fontsize=8)
    fig.suptitle(
        "Fig 3 as an experiment: intra-task diversity vs. multi-task learning "
        "(line: mean, shade: ±std, dotted: 2.5/97.5 %)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    if stem is not None:
        save_figure(fig, stem)
    return fig


def training_means(stats: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Mean over epochs of the per-epoch means (pairwise, all pairs): one row per comparison
    (and ``by`` columns), one column per statistic -- the numbers the claims quote."""
    rows = stats[(stats["variant"] == "pairwise") & (stats["subset"] == "all")]
    keys = [*by, "comparison"]
    table = rows.pivot_table(index=keys, columns="statistic", values="mean", aggfunc="mean")
    return table[[c for c in ("cosine", "magnitude", "conflict", "dot") if c in table.columns]]


@dataclass(frozen=True)
class GradStatsArtefacts:
    """What :func:`write_gradstats_artefacts` wrote, keyed by artefact id (figures closed)."""

    figures: dict[str, Figure]


def write_gradstats_artefacts(
    panels: Sequence[Mapping[str, str]],
    figures_dir: str | os.PathLike[str],
    fig3_stats: str | os.PathLike[str] | None = None,
    fig3_training: str | os.PathLike[str] | None = None,
    interference_figure: str | None = "gradstats_interference",
) -> GradStatsArtefacts:
    """Every artefact of the stage, as the workflow declares them.

    ``panels``: one mapping per dataset x architecture with keys ``dataset``, ``arch``,
    ``stats`` (its ``gradstats.csv``) and one key per family of :data:`FAMILIES` naming that
    figure's artefact id (e.g. ``"fig4": "fig4_cityscapes_segnet"``).
    """
    out = Path(figures_dir)
    figures: dict[str, Figure] = {}
    tables = {}
    for panel in panels:
        stats = load_stats(panel["stats"])
        title = panel_title(panel["dataset"], panel["arch"])
        tables[title] = stats
        for family in FAMILIES:
            name = panel[family]
            figures[name] = PLOTTERS[family](stats, title, stem=out / name)
    if interference_figure and tables:
        figures[interference_figure] = plot_interference(tables, stem=out / interference_figure)
    if fig3_stats is not None:
        training = pd.read_csv(fig3_training) if fig3_training is not None else None
        figures["fig3"] = plot_fig3(pd.read_csv(fig3_stats), training, stem=out / "fig3")
    for fig in figures.values():
        plt.close(fig)
    return GradStatsArtefacts(figures)
