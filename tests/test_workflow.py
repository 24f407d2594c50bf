"""The real workflow, end to end, on the tiny configuration in a temporary copy of the repo."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOW_FILES = ["Snakefile", "workflow", "notebooks", "envs"]


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--cores", "2", *args],
        cwd=workdir,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_workflow(dest: Path) -> Path:
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(
                src, dest / name, ignore=shutil.ignore_patterns(".snakemake", "__pycache__")
            )
        else:
            shutil.copy2(src, dest / name)
    return dest


def declared_targets(workdir: Path) -> list[str]:
    """The files the default target asks for, as Snakemake lists them (`--summary`)."""
    proc = snakemake(workdir, "--configfile", "workflow/config/tiny.yaml", "--summary")
    lines = proc.stdout.strip().splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build only fig1 first, then everything, as a user would."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    snakemake(workdir, "figures/fig1.pdf", "--configfile", "workflow/config/tiny.yaml")
    (workdir / "only_fig1.txt").write_text(
        "\n".join(str(p.relative_to(workdir)) for p in sorted((workdir / "figures").iterdir()))
    )
    snakemake(workdir, "--configfile", "workflow/config/tiny.yaml")
    return workdir


@pytest.mark.slow
def test_single_target_builds_only_its_stage(built: Path) -> None:
    first = (built / "only_fig1.txt").read_text().split()
    assert "figures/fig1.pdf" in first
    assert "figures/table1.csv" in first  # made by the same notebook
    assert not any("figA" in name or "claims" in name for name in first)


@pytest.mark.slow
def test_every_declared_output_exists_and_is_not_empty(built: Path) -> None:
    targets = declared_targets(built)
    expected = {
        "figures/fig1.pdf", "figures/fig1.png", "figures/figA1.pdf", "figures/figA2.png",
        "figures/table1.tex", "figures/tableA3.md", "figures/claims.md",
        "results/notebooks/toy.html", "results/notebooks/invariance.ipynb",
        "figures/fig2_segnet.pdf", "figures/table2.tex", "figures/tableA4.md",
        "figures/figA3.png", "results/notebooks/main.html", "results/main/runs.csv",
        "figures/fig4_cityscapes_segnet.pdf", "figures/figA7_cityscapes_segnet.png",
        "figures/fig3.pdf", "results/notebooks/gradstats.html",
        "results/gradstats/cityscapes/segnet/gradstats.csv",
    }  # fmt: skip
    assert expected <= set(targets)
    for target in targets:
        path = built / target
        assert path.exists(), f"missing output {target}"
        if path.is_dir():  # a generated dataset
            assert any(path.iterdir()), f"empty output directory {target}"
        else:
            assert path.stat().st_size > 0, f"empty output {target}"


@pytest.mark.slow
def test_rerun_does_nothing(built: Path) -> None:
    proc = snakemake(built, "--configfile", "workflow/config/tiny.yaml", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_claims_table_has_rows_from_both_stages(built: Path) -> None:
    import pandas as pd

    claims = pd.read_csv(built / "figures/claims.csv")
    assert set(claims["stage"]) == {"toy", "invariance", "main", "gradstats"}
    assert claims["measured"].str.len().min() > 0


@pytest.mark.slow
def test_fixed_weights_run_uses_the_smoothed_weights_of_its_source_run(built: Path) -> None:
    import pandas as pd

    from mtl_paradigms.runs import fixed_weights_from_history

    run = "cityscapes/segnet/{}/adam/lr0.01/seed0"
    fixed = json.loads((built / "results/fixed_weights" / f"{run.format('uwo')}.json").read_text())
    source = fixed_weights_from_history(built / "results/runs" / run.format("uwo") / "history.csv")
    assert fixed["weights"] == source["weights"]
    metrics = json.loads(
        (built / "results/runs" / run.format("fixed_from_uwo") / "metrics.json").read_text()
    )
    assert metrics["settings"]["method"] == "fixed"
    assert metrics["settings"]["method_params"] == {"weights": fixed["weights"]}
    runs = pd.read_csv(built / "results/main/runs.csv")
    assert "fixed_from_uwo" in set(runs["method"])


@pytest.mark.slow
def test_rendered_notebooks_show_the_figures(built: Path) -> None:
    html = (built / "results/notebooks/toy.html").read_text()
    assert "image/png" in html
    assert "Traceback" not in html


def test_dry_run_of_the_default_config(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    proc = snakemake(workdir, "-n")
    rules = ("toy_simulate", "toy_notebook", "invariance_simulate", "invariance_notebook")
    rules += ("make_synthetic", "train_stl", "baseline", "train", "aggregate_main")
    rules += ("gradstats_train", "gradstats_fig3", "gradstats_claims", "gradstats_notebook")
    for rule in (*rules, "main_notebook", "claims"):
        assert rule in proc.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("toy:\n  iteration: 10\n", "iteration"),
        ("toy:\n  iterations: many\n", "many"),
        ("invariance:\n  loss_scales: [10.0, -1.0]\n", "-1.0"),
        ("stagez:\n  toy: true\n", "stagez"),
        ("main:\n  grid:\n    methods: [ew, pcgard]\n", "pcgard"),
        ("main:\n  grid:\n    methods: [ew, fixed_from_pcgard]\n", "fixed_from_pcgard"),
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(
    tmp_path: Path, override: str, named: str
) -> None:
    workdir = copy_workflow(tmp_path)
    (workdir / "bad.yaml").write_text(override)
    proc = snakemake(workdir, "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert named in proc.stderr + proc.stdout
    assert not (workdir / "results").exists()


def test_snakemake_lint_is_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--lint"], cwd=ROOT, env=env(), capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert "Congratulations" in out, out


def test_snakefmt_is_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(BIN / "ruff"), *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_notebooks_are_committed_without_outputs() -> None:
    import nbformat

    for path in (ROOT / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tags = [c.metadata.get("tags", []) for c in nb.cells]
        assert any("parameters" in t for t in tags), f"{path.name} has no parameters cell"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} has outputs"
                assert cell.execution_count is None, f"{path.name} has execution counts"


def test_schema_knows_exactly_the_registered_methods() -> None:
    import yaml

    from mtl_paradigms.methods import METHODS

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["$defs"]["method"]["enum"]) == set(METHODS)


def test_gpu_speed_overlay_switches_the_main_runs_and_keeps_every_run_valid(
    tmp_path: Path,
) -> None:
    # workflow/config/gpu-speed.yaml layered over the default: the NYUv2 / Cityscapes runs get
    # every switch, the gradient-statistics runs (their hooks refuse compile) and CelebA (its
    # 40-task batched Jacobian) all but compile; every job's settings are accepted by
    # TrainSettings (no run would fail at its start).
    from mtl_paradigms.settings import from_json
    from mtl_paradigms.train import TrainSettings

    workdir = copy_workflow(tmp_path)
    proc = snakemake(workdir, "-n", "-p", "--configfile", "workflow/config/gpu-speed.yaml")
    runs: dict[str, list[TrainSettings]] = {"main": [], "celeba": [], "gradstats": []}
    for line in proc.stdout.splitlines():
        words = shlex.split(line.partition("Shell command: ")[2])
        if "train" not in words or "mtlp" not in words:
            continue
        flag = "--train-settings" if "gradstats" in words else "--settings"
        settings = from_json(TrainSettings, words[words.index(flag) + 1])
        kind = "gradstats" if "gradstats" in words else "main"
        runs["celeba" if settings.dataset == "celeba" else kind].append(settings)
    assert all(runs.values()), {k: len(v) for k, v in runs.items()}
    switches = ("bf16", "channels_last", "fused_optimizer", "cudnn_benchmark", "compile")
    for s in runs["main"]:
        assert [getattr(s, k) for k in switches] == [True] * 5
        assert s.compile_mode == "reduce-overhead"
    for s in runs["gradstats"]:
        assert [getattr(s, k) for k in switches] == [True, True, True, True, False]
    for s in runs["celeba"]:
        assert [getattr(s, k) for k in switches] == [True, True, True, True, False]
