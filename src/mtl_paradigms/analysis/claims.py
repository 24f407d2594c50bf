"""The claims table: one row per claim a stage re-derived, with its measured figure.

Each stage writes its own claims file (``results/claims/<stage>.csv``); ``mtlp claims``
merges them into ``figures/claims.{csv,md}``. Later stages add files; nothing is edited
in place.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mtl_paradigms.io import atomic_write, write_text

COLUMNS = ("stage", "claim", "source", "measured", "reproduced")


@dataclass(frozen=True)
class Claim:
    """A claim of a paper and what this run measured for it."""

    stage: str  # the workflow stage that measured it, e.g. "toy", "invariance"
    claim: str  # the statement, in words
    source: str  # where the paper makes it, e.g. "Elich et al. 2024, Fig. A1"
    measured: str  # the measured figure(s), in words and numbers
    reproduced: bool


def write_claims(claims: Iterable[Claim], path: str | os.PathLike[str]) -> Path:
    frame = pd.DataFrame([asdict(c) for c in claims], columns=list(COLUMNS))
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


def read_claims(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    frames = []
    for path in paths:
        frame = pd.read_csv(path)
        missing = set(COLUMNS) - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: claims file lacks column(s) {sorted(missing)}")
        frames.append(frame[list(COLUMNS)])
    if not frames:
        return pd.DataFrame(columns=list(COLUMNS))
    return pd.concat(frames, ignore_index=True)


def merge_claims(
    paths: Sequence[str | os.PathLike[str]], stem: str | os.PathLike[str]
) -> pd.DataFrame:
    """Merge per-stage claims files into ``stem.csv`` and ``stem.md``."""
    frame = read_claims(paths)
    stem = Path(stem)
    atomic_write(stem.with_suffix(".csv"), lambda p: frame.to_csv(p, index=False))
    shown = frame.assign(
        reproduced=frame["reproduced"].map({True: "reproduced", False: "not reproduced"})
    )
    n_ok = int(frame["reproduced"].sum())
    md = (
        "# Claims re-derived by this run\n\n"
        f"{n_ok} of {len(frame)} claims reproduced.\n\n" + shown.to_markdown(index=False) + "\n"
    )
    write_text(stem.with_suffix(".md"), md)
    return frame
