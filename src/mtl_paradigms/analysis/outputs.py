"""Writers for the paper artefacts: figures as ``<stem>.pdf/.png``, tables as ``.csv/.md/.tex``."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from mtl_paradigms.io import atomic_write

FIGURE_SUFFIXES = (".pdf", ".png")
TABLE_SUFFIXES = (".csv", ".md", ".tex")


def save_figure(fig: plt.Figure, stem: str | os.PathLike[str], dpi: int = 200) -> list[Path]:
    """Save ``fig`` as ``stem.pdf`` and ``stem.png``, each atomically and reproducibly.

    Metadata that would change between runs (creation date, software version) is dropped,
    so rebuilding a figure from the same results gives the same bytes.
    """
    stem = Path(stem)
    metadata = {
        ".pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
        ".png": {"Software": None},
    }
    paths = []
    for suffix in FIGURE_SUFFIXES:
        path = stem.with_suffix(suffix)
        atomic_write(
            path,
            lambda p, s=suffix: fig.savefig(
                p, format=s[1:], dpi=dpi, bbox_inches="tight", metadata=metadata[s]
            ),
        )
        paths.append(path)
    return paths


def write_table(
    table: pd.DataFrame,
    stem: str | os.PathLike[str],
    caption: str,
    label: str | None = None,
    index: bool = False,
) -> list[Path]:
    """Write ``table`` as CSV, Markdown and LaTeX (booktabs), each atomically.

    The LaTeX output uses ``\\toprule/\\midrule/\\bottomrule`` and needs ``\\usepackage{booktabs}``.
    """
    stem = Path(stem)
    label = label or f"tab:{stem.name}"
    frame = table if index else table.reset_index(drop=True)
    as_text = frame.astype(str)
    csv_path, md_path, tex_path = (stem.with_suffix(s) for s in TABLE_SUFFIXES)
    atomic_write(csv_path, lambda p: frame.to_csv(p, index=index))
    md = f"**{caption}**\n\n" + as_text.to_markdown(index=index) + "\n"
    atomic_write(md_path, lambda p: p.write_text(md, encoding="utf-8"))
    styler = (
        as_text.map(lambda v: _en_dash_to_tex(_escape_latex(v)))
        .rename(columns=lambda c: _en_dash_to_tex(_escape_latex(str(c))))
        .style
    )
    if index:
        styler = styler.format_index(lambda v: _en_dash_to_tex(_escape_latex(str(v))), axis=0)
    else:
        styler = styler.hide(axis="index")
    tex = styler.to_latex(
        caption=_en_dash_to_tex(_escape_latex(caption)),
        label=label,
        hrules=True,
        position="t",
        position_float="centering",
    )
    atomic_write(tex_path, lambda p: p.write_text(tex, encoding="utf-8"))
    return [csv_path, md_path, tex_path]


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _escape_latex(text: str) -> str:
    """Escape LaTeX's special characters in plain text (used for the caption)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


_UNICODE_TEX = {"–": "--", "Δ": r"$\Delta$", "±": r"$\pm$", "°": r"$^\circ$", "×": r"$\times$"}


def _en_dash_to_tex(text: str) -> str:
    """Unicode the tables use, written so that plain pdflatex compiles the table."""
    for char, tex in _UNICODE_TEX.items():
        text = text.replace(char, tex)
    return text
