from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from mtl_paradigms.analysis.claims import Claim, merge_claims, read_claims, write_claims
from mtl_paradigms.analysis.outputs import save_figure, write_table
from mtl_paradigms.io import atomic_write, write_json


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    def failing(p: Path) -> None:
        p.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_version_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        atomic_write(target, lambda p: (_ for _ in ()).throw(RuntimeError("x")))
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_table_formats(tmp_path: Path) -> None:
    table = pd.DataFrame({"method": ["GD EW", "Adam_CAGrad"], "lr 0.1": ["12", "–"]})
    paths = write_table(table, tmp_path / "table1", caption="Iterations to 50% of runs")
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    assert pd.read_csv(paths[0]).shape == (2, 2)
    md = paths[1].read_text()
    assert "Iterations to 50% of runs" in md
    assert "| GD EW" in md
    tex = paths[2].read_text()
    assert "\\toprule" in tex
    assert "\\midrule" in tex
    assert "\\bottomrule" in tex
    assert "Adam\\_CAGrad" in tex
    assert "50\\% of runs" in tex
    assert "--" in tex  # en dash written the LaTeX way


def test_save_figure_is_reproducible(tmp_path: Path) -> None:
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    first = [p.read_bytes() for p in save_figure(fig, tmp_path / "a")]
    second = [p.read_bytes() for p in save_figure(fig, tmp_path / "b")]
    plt.close(fig)
    assert all(len(b) > 100 for b in first)
    assert first == second


def test_claims_round_trip_and_merge(tmp_path: Path) -> None:
    write_claims([Claim("toy", "EW fails", "Fig 1", "3 of 3", True)], tmp_path / "toy.csv")
    write_claims([Claim("inv", "SGD varies", "Fig A1", "ratio 10", False)], tmp_path / "inv.csv")
    frame = merge_claims([tmp_path / "toy.csv", tmp_path / "inv.csv"], tmp_path / "claims")
    assert list(frame["reproduced"]) == [True, False]
    md = (tmp_path / "claims.md").read_text()
    assert "1 of 2 claims reproduced" in md
    assert "not reproduced" in md
    (tmp_path / "bad.csv").write_text("stage,claim\nx,y\n")
    with pytest.raises(ValueError, match="lacks column"):
        read_claims([tmp_path / "bad.csv"])


def test_atomic_write_gives_default_permissions(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        path = write_json(tmp_path / "x.json", {})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_atomic_directory_appears_only_complete(tmp_path: Path) -> None:
    from mtl_paradigms.io import atomic_directory

    target = tmp_path / "out"

    def interrupted() -> None:
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        interrupted()
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind
    with atomic_directory(target) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (target / "done.txt").read_text() == "x"
    with pytest.raises(FileExistsError), atomic_directory(target):
        pass
