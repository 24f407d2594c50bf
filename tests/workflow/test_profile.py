"""The default workflow profile (profiles/default): a plain `snakemake` from the repository root
picks it up, so it needs no --cores, prints shell commands and shows a failed job's log."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import BIN, ROOT, copy_workflow, env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository's workflow with its default profile, where Snakemake looks for it."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    shutil.copytree(ROOT / "profiles", workdir / "profiles")
    return workdir


def plain_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`snakemake ARGS` as a user types it: no --cores, no profile named."""
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )  # fmt: skip


def test_profile_sets_what_the_readme_says() -> None:
    profile = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert profile["cores"] == "all"
    assert profile["rerun-incomplete"] is True
    assert profile["show-failed-logs"] is True
    assert profile["printshellcmds"] is True


def test_plain_dry_run_from_the_root_uses_the_default_profile(workdir: Path) -> None:
    proc = plain_snakemake(workdir, "-n", "--config", "stages={}")
    assert proc.returncode == 0, proc.stdout
    assert "Using workflow specific profile profiles/default" in proc.stdout
    assert "Shell command: mtlp claims" in proc.stdout  # printshellcmds


def test_a_failed_jobs_log_reaches_the_terminal(workdir: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    config = {
        "results_dir": str(results),
        "main": {
            "datasets": {
                "cityscapes": {
                    "source": "real",
                    "tasks": ["segmentation", "depth"],
                    "data_dir": str(tmp_path / "no-such-dataset"),
                }
            }
        },
    }
    (tmp_path / "fail.yaml").write_text(yaml.safe_dump(config))
    target = f"{results}/data/cityscapes.verified.json"
    # no --cores: `cores: all` of the profile
    proc = plain_snakemake(workdir, target, "--configfile", str(tmp_path / "fail.yaml"))
    assert proc.returncode != 0
    log = results / "logs/verify_dataset/cityscapes.log"
    failure = [line for line in log.read_text().splitlines() if line.strip()][-1]
    assert "no-such-dataset" in failure
    assert failure in proc.stdout, proc.stdout  # show-failed-logs
    # without the profile, the log stays in its file
    log.unlink()
    proc = plain_snakemake(
        workdir, target, "--workflow-profile", "none", "--cores", "1",
        "--configfile", str(tmp_path / "fail.yaml"),
    )  # fmt: skip
    assert proc.returncode != 0
    assert failure not in proc.stdout
