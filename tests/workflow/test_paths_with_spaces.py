"""A real run with a space in results_dir and data.dir: the gradient-statistics claims of the
tiny config (two short training jobs, the Fig 3 experiment, then `mtlp gradstats claims` with
its `--panel <dataset>/<arch>=<path>` arguments)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest
from test_workflow import BIN, copy_workflow, env


@pytest.mark.slow
def test_gradstats_claims_run_with_spaces_in_the_paths(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    (workdir / "space.yaml").write_text('results_dir: "my results"\ndata: {dir: "my data"}\n')
    target = "my results/claims/gradstats.csv"
    proc = subprocess.run(
        [str(BIN / "snakemake"), target, "--cores", "2",
         "--configfile", "workflow/config/tiny.yaml", "space.yaml"],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:]
    claims = pd.read_csv(workdir / target)
    assert len(claims) > 0
    assert not (workdir / "my").exists()  # no path cut at its space
