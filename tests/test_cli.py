from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_paradigms.cli import main


def test_methods_lists_every_registered_method(capsys: pytest.CaptureFixture[str]) -> None:
    from mtl_paradigms.methods import METHODS

    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in rows} == set(METHODS)
    cagrad = next(row for row in rows if row["name"] == "cagrad")
    assert cagrad["kind"] == "aggregator"
    assert cagrad["hyperparameters"] == {"c": 0.5, "rescale": "1+c"}


def test_bad_settings_exit_2_naming_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "toy.npz"
    assert main(["toy", "--settings", '{"iteration": 10}', "--out", str(out)]) == 2
    assert "iteration" in caplog.text
    assert not out.exists()


def test_invalid_settings_value_exit_2(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "toy.npz"
    assert main(["toy", "--settings", '{"optimizers": ["sgd"]}', "--out", str(out)]) == 2
    assert "sgd" in caplog.text
    assert not out.exists()


def test_toy_verb_writes_result_and_claims(tmp_path: Path) -> None:
    settings = {
        "learning_rates": [0.1],
        "table1_learning_rates": [0.1],
        "fig1_learning_rates": [0.1],
    }
    settings |= {"iterations": 50, "grid_size": 10}
    out, claims = tmp_path / "toy.npz", tmp_path / "claims.csv"
    args = ["toy", "--settings", json.dumps(settings), "--out", str(out), "--claims", str(claims)]
    assert main(args) == 0
    assert out.stat().st_size > 0
    assert claims.read_text().startswith("stage,claim,source,measured,reproduced")


def test_notebook_without_parameters_cell_is_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    args = [
        "notebook",
        str(path),
        "--output",
        str(tmp_path / "o.ipynb"),
        "--html",
        str(tmp_path / "o.html"),
    ]
    assert main(args) == 2
    assert "parameters" in caplog.text
    assert not (tmp_path / "o.ipynb").exists()
