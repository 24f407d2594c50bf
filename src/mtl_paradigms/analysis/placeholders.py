"""What the main grid's artefacts show for a panel with nothing to show.

A panel (dataset × architecture) whose MTL runs all diverged has no metric values: no
parallel-coordinate axes, no Table A4–A7 rows, no Pareto counts, no Δm. Its artefacts are
still written, under the ids the workflow declares, and say so in words: a one-row table
(:func:`placeholder_table`) and a figure with the sentence where the plot would be
(:func:`say_on_axes`). A diverged run is a result, not an error.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable

import pandas as pd
from matplotlib.axes import Axes

from mtl_paradigms.analysis import grid
from mtl_paradigms.analysis.outputs import write_table


def empty_panel_note(runs: pd.DataFrame, dataset: str, arch: str) -> str | None:
    """``None`` when the panel has a non-diverged MTL run; else why it has none, in words."""
    panel = grid.panel_runs(runs, dataset, arch)
    mtl = panel[panel["method"] != grid.STL]
    if not grid.mtl_runs(mtl).empty:
        return None
    if mtl.empty:
        return "no MTL run of this panel in the runs table"
    return f"every MTL run of this panel diverged ({len(mtl)} runs)"


def empty_panels(runs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(dataset, arch) -> note`` for the panels of ``runs`` without a non-diverged MTL run."""
    notes = {(d, a): empty_panel_note(runs, d, a) for d, a in grid.panels(runs)}
    return {panel: note for panel, note in notes.items() if note is not None}


def caption_note(runs: pd.DataFrame, title: Callable[[str, str], str]) -> str:
    """A sentence for a caption naming the empty panels (``""`` when there are none).

    ``title(dataset, arch)``: the display name of a panel, e.g. ``"NYUv2, DeepLabV3"``.
    """
    empty = empty_panels(runs)
    if not empty:
        return ""
    parts = "; ".join(f"{title(d, a)}: {note}" for (d, a), note in empty.items())
    return f" Nothing to compare in {parts}."


def unjudged(runs: pd.DataFrame, name: Callable[[str, str], str]) -> str:
    """``"; <panel>: cannot be judged, <why>"`` per empty panel, for a claim's measured text
    (``""`` when there is none); ``name(dataset, arch)`` names the panel."""
    empty = empty_panels(runs)
    return "".join(f"; {name(d, a)}: cannot be judged, {note}" for (d, a), note in empty.items())


def placeholder_table(title: str, note: str) -> pd.DataFrame:
    """The one-row table standing in for an empty panel's table."""
    return pd.DataFrame({"panel": [title], "note": [f"{note}; no table"]})


def write_placeholder_table(title: str, note: str, stem: str | os.PathLike[str]) -> pd.DataFrame:
    """Write :func:`placeholder_table` as ``stem.csv/.md/.tex``; return it."""
    table = placeholder_table(title, note)
    caption = f"{title}: {note}, so there are no test metrics to tabulate."
    write_table(table, stem, caption)
    return table


def say_on_axes(ax: Axes, text: str, *, hide_axes: bool = True, y: float = 0.5) -> None:
    """``text`` across ``ax`` (wrapped, at height ``y`` in axes units), in place of a plot."""
    box = {"boxstyle": "square,pad=0.3", "fc": "white", "ec": "none", "alpha": 0.85}
    ax.text(
        0.5, y, textwrap.fill(text, 40), transform=ax.transAxes, ha="center", va="center", bbox=box
    )
    if hide_axes:
        ax.set_axis_off()
