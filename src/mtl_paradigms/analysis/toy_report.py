"""Fig. 1 and Tables 1 / A3 of Elich et al. (2024): the CAGrad toy, from a :class:`ToyResult`."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mtl_paradigms.analysis.outputs import save_figure, write_table
from mtl_paradigms.toy.cagrad_toy import (
    DISPLAY_NAMES,
    NOT_REACHED,
    ToyResult,
    average_loss,
    convergence_table,
)

FIG1_METHODS = ("ew", "cagrad")
FIG1_OPTIMIZERS = ("gd", "adam")
PARETO_X1 = (-7.0, 7.0)
"""The Pareto set of the toy: ``x2 = x*_2``, ``x1`` in this interval."""


def loss_grid(grid_size: int, grid_limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X1, X2, F)``: the average loss on a ``grid_size^2`` grid over ``[-limit, limit]^2``.

    Arrays are indexed ``[row = x2, column = x1]`` as :func:`matplotlib.pyplot.contour` expects.
    """
    axis = torch.linspace(-grid_limit, grid_limit, grid_size, dtype=torch.float64)
    x2, x1 = torch.meshgrid(axis, axis, indexing="ij")
    values = average_loss(torch.stack([x1, x2], dim=-1))
    return x1.numpy(), x2.numpy(), values.numpy()


def plot_fig1(
    result: ToyResult,
    stem: str | os.PathLike[str] | None = None,
    *,
    max_points: int = 2500,
) -> Figure:
    """Fig. 1: trajectories on the average-loss contours; rows EW / CAGrad, columns GD then
    Adam at the ``fig1_learning_rates``.

    Each trajectory is drawn as points coloured by time, red (start) to yellow (end) with the
    ``autumn`` colormap, thinned to at most ``max_points`` points (from the recorded ones). The
    grey bar is the Pareto set, the star the minimiser ``x*``, the black circles the starts.
    Panels whose method/optimizer was not run stay empty with a note. Saved as ``stem.pdf/.png``
    when ``stem`` is given.
    """
    s = result.settings
    lrs = list(s.fig1_learning_rates)
    columns = [(opt, lr) for opt in FIG1_OPTIMIZERS for lr in lrs]
    X1, X2, F = loss_grid(s.grid_size, s.grid_limit)
    fig, axes = plt.subplots(
        len(FIG1_METHODS),
        len(columns),
        figsize=(2.6 * len(columns), 2.7 * len(FIG1_METHODS)),
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for row, method in enumerate(FIG1_METHODS):
        for col, (optimizer, lr) in enumerate(columns):
            ax = axes[row, col]
            _draw_landscape(ax, result, X1, X2, F)
            _draw_trajectories(ax, result, method, optimizer, lr, max_points)
            ax.set_title(
                f"{DISPLAY_NAMES[method]}, {DISPLAY_NAMES[optimizer]}, lr {lr:g}", fontsize=9
            )
            if col == 0:
                ax.set_ylabel("$x_2$")
            if row == len(FIG1_METHODS) - 1:
                ax.set_xlabel("$x_1$")
    fig.suptitle(
        f"CAGrad toy: {s.iterations} iterations; colour = time (red to yellow)", fontsize=10
    )
    fig.tight_layout()
    if stem is not None:
        save_figure(fig, stem)
    return fig


def _draw_landscape(
    ax: Axes, result: ToyResult, X1: np.ndarray, X2: np.ndarray, F: np.ndarray
) -> None:
    limit = result.settings.grid_limit
    ax.contour(X1, X2, F, levels=12, cmap="viridis", linewidths=0.8, zorder=1)
    x_star = result.minimizer
    ax.plot(
        PARETO_X1, (x_star[1], x_star[1]), color="0.55", linewidth=4, zorder=2, label="Pareto set"
    )
    ax.plot(x_star[0], x_star[1], marker="*", color="k", markersize=11, zorder=5, label="minimum")
    starts = np.asarray(result.start_points)
    ax.plot(starts[:, 0], starts[:, 1], "o", color="k", markersize=5, zorder=5, label="start")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _draw_trajectories(
    ax: Axes, result: ToyResult, method: str, optimizer: str, lr: float, max_points: int
) -> None:
    try:
        m, o, i = result.index(method, optimizer, lr)
    except KeyError:
        ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center")
        return
    paths = result.trajectories[m, o, i]  # (S, K, 2)
    stride = max(1, -(-paths.shape[1] // max_points))
    picked = np.unique(np.r_[np.arange(0, paths.shape[1], stride), paths.shape[1] - 1])
    time_frac = result.trajectory_steps[picked] / max(result.trajectory_steps[-1], 1)
    for path in paths:
        points = path[picked]
        ax.scatter(
            points[:, 0],
            points[:, 1],
            c=time_frac,
            cmap="autumn",
            vmin=0.0,
            vmax=1.0,
            s=3,
            linewidths=0,
            zorder=4,
            rasterized=True,
        )


def write_toy_tables(result: ToyResult, figures_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``table1`` (the ``table1_learning_rates``) and ``tableA3`` (all learning rates)
    as CSV/Markdown/LaTeX under ``figures_dir``; returns the written paths."""
    s = result.settings
    figures_dir = Path(figures_dir)
    definition = (
        "Iterations needed to reach the global minimum x* = "
        f"({result.minimizer[0]:.4f}, {result.minimizer[1]:.4f}) of the average loss of the CAGrad "
        "toy, maximum over the start points "
        + ", ".join(f"({p[0]:g}, {p[1]:g})" for p in result.start_points)
        + f". Reached = first iteration whose Euclidean distance to x* is at most {s.tolerance:g}; "
        f"{NOT_REACHED} = some start point did not reach it within {s.iterations} iterations. "
        f"CAGrad c = {s.cagrad_c:g}; Adam betas ({s.adam_betas[0]:g}, {s.adam_betas[1]:g}), "
        f"eps {s.adam_eps:g}."
    )
    paths = write_table(
        convergence_table(result, s.table1_learning_rates),
        figures_dir / "table1",
        caption=f"Table 1 (CAGrad toy). {definition}",
    )
    paths += write_table(
        convergence_table(result, s.learning_rates),
        figures_dir / "tableA3",
        caption=f"Table A3 (CAGrad toy, all learning rates). {definition}",
    )
    return paths
