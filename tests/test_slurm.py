"""The cluster path: workflow/profiles/slurm with the `cluster` config section.

Without SLURM: what each rule asks the executor plugin for (a dry run with the profile).
With a real one-node SLURM on this host (tests/slurm_cluster.py; skipped with the reason when
it cannot be installed or started): the toy stage and every training run of the tiny config
go through `--executor slurm` with the project's profile, bundled into group jobs, the light
rules run locally, and the notebooks can be built locally afterwards.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from slurm_cluster import FAKE_GPU_MODEL, SlurmCluster, SlurmUnavailableError
from test_workflow import BIN, copy_workflow, env

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ["--workflow-profile", "workflow/profiles/slurm"]
TINY = "workflow/config/tiny.yaml"
# Where each rule runs on a cluster: submitted with cluster.gpu_jobs, with cluster.cpu_jobs,
# or locally (localrules). Every rule of the workflow is in exactly one of them.
GPU_RULES = {"train", "train_stl", "train_fixed_from", "train_celeba", "gradstats_train"}
CPU_RULES = {"toy_simulate", "invariance_simulate", "gradstats_fig3"}


def workflow_sources() -> str:
    return "\n".join(
        p.read_text() for p in [ROOT / "Snakefile", *ROOT.glob("workflow/rules/*.smk")]
    )


def local_rules() -> set[str]:
    blocks = re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", workflow_sources(), flags=re.M)
    return {name for block in blocks for name in re.findall(r"\w+", block)}


def test_every_rule_runs_locally_or_asks_the_cluster_for_its_resources() -> None:
    rules = set(re.findall(r"^rule (\w+):", workflow_sources(), flags=re.M))
    local = local_rules()
    assert not local & (GPU_RULES | CPU_RULES)
    assert rules == local | GPU_RULES | CPU_RULES, "a rule with no place on a cluster"


def dry_run_resources(
    workdir: Path, *args: str, profile: Sequence[str] = PROFILE
) -> dict[str, list[str]]:
    """rule name -> the `resources:` line of each of its jobs, from a dry run with ``profile``
    (default: the SLURM profile)."""
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", *profile, *args],
        cwd=workdir, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found: dict[str, list[str]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        if match := re.match(r"^\s*(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif rule and line.strip().startswith("resources:"):
            found.setdefault(rule, []).append(line.strip().removeprefix("resources: "))
    return found


SITE = """\
cluster:
  account: proj42
  gpu_jobs: {gpu: 1, gpu_model: a100, partition: gpu, runtime: 720, mem_mb: 24000,
             extra: "--qos=long"}
  cpu_jobs: {partition: cpu, runtime: 30, mem_mb: 2000}
"""


def test_profile_asks_for_a_gpu_only_for_training(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    (workdir / "site.yaml").write_text(SITE)
    found = dry_run_resources(workdir, "--configfile", TINY, "site.yaml")
    assert set(found) & GPU_RULES == GPU_RULES  # the tiny DAG has every kind of run
    for rule in GPU_RULES:
        for res in found[rule]:
            for part in ("gpu=1", "gpu_model=a100", "slurm_partition=gpu", "slurm_account=proj42",
                         "runtime=720", "mem_mb=24000", "slurm_extra=--qos=long"):  # fmt: skip
                assert part in res, (rule, res)
    for rule in CPU_RULES:
        (res,) = found[rule]
        assert "slurm_partition=cpu" in res
        assert "runtime=30" in res
        assert "gpu" not in res.replace("group_slot", "")
    for rule in set(found) - GPU_RULES - CPU_RULES:  # localrules: nothing to ask a cluster for
        assert all("runtime" not in res and "slurm" not in res for res in found[rule]), rule


def test_gpu_zero_switches_the_gpu_request_off(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path)
    (workdir / "site.yaml").write_text(SITE.replace("gpu: 1,", "gpu: 0,"))
    found = dry_run_resources(workdir, "--configfile", TINY, "site.yaml")
    for res in found["train"] + found["gradstats_train"]:
        assert "slurm_partition=gpu" in res
        assert "gpu=" not in res.replace("group_slot", "")
        assert "gpu_model" not in res


def test_gpu_runs_take_a_gpu_slot_so_that_a_local_run_can_share_one_gpu(tmp_path: Path) -> None:
    # `--resources gpu_slot=N` (README, "Several runs on one GPU") limits what carries a slot:
    # every GPU-capable run, and nothing else.
    workdir = copy_workflow(tmp_path)
    found = dry_run_resources(
        workdir, "--cores", "4", "--configfile", TINY, "--resources", "gpu_slot=2", profile=[]
    )
    assert set(found) & GPU_RULES == GPU_RULES
    for rule, lines in found.items():
        for res in lines:
            assert ("gpu_slot=1" in res) == (rule in GPU_RULES), (rule, res)


# ---- a real SLURM ------------------------------------------------------------------------
# The training runs ask for the cluster's one fake GPU model (a GRES backed by no device:
# SLURM schedules it, the trainer finds no CUDA and uses the CPU), 500 MB and 10 minutes.
TEST_CLUSTER = f"""\
cluster:
  gpu_jobs: {{gpu: 1, gpu_model: {FAKE_GPU_MODEL}, runtime: 10, mem_mb: 500}}
  cpu_jobs: {{runtime: 10, mem_mb: 500}}
"""
ONE_RUN = "results/runs/cityscapes/segnet/ew/adam/lr0.01/seed0/metrics.json"
TARGETS = [ONE_RUN, "results/toy/cagrad_toy.npz", "results/invariance/checks.csv"]
RUN_ARGS = [
    *TARGETS,
    "--configfile", TINY, "test-cluster.yaml",
    # no accounting here: sacct cannot answer, squeue can (MinJobAge keeps finished jobs)
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "4",
    "--group-components", "toys=2", "stl=2", "train=1",
    "--latency-wait", "5",
]  # fmt: skip
TIMEOUT = 420


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    lock = open("/tmp/mtlp-slurm-test.lock", "w")  # noqa: SIM115 (one cluster per host)
    fcntl.flock(lock, fcntl.LOCK_EX)
    slurm = SlurmCluster(tmp_path_factory.mktemp("slurm"), fake_gpus=2)
    try:
        slurm.start()
    except SlurmUnavailableError as err:
        lock.close()
        pytest.skip(f"no local SLURM: {err}")
    try:
        yield slurm
    finally:
        slurm.stop()
        lock.close()


def run_with_kill_fallback(cmd: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run cmd in its own session; past the timeout SIGTERM it, then SIGKILL (snakemake
    ignores SIGTERM while it waits for cluster jobs)."""
    log_path = cwd / "snakemake-slurm.out"
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return -1, log_path.read_text()
    return proc.returncode, log_path.read_text()


@pytest.fixture(scope="module")
def slurm_run(
    cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, list[dict[str, str]]]:
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm-workflow"))
    (workdir / "test-cluster.yaml").write_text(TEST_CLUSTER)
    rc, log = run_with_kill_fallback(
        [str(BIN / "snakemake"), *PROFILE, *RUN_ARGS], workdir, TIMEOUT
    )
    jobs = [job for job in cluster.jobs() if Path(job.get("WorkDir", "")) == workdir]
    if rc != 0:
        states = "\n".join(f"{j['JobId']} {j.get('JobState')} {j.get('Reason')}" for j in jobs)
        pytest.fail(f"snakemake --executor slurm ended with {rc}:\n{log[-6000:]}\n{states}")
    return workdir, log, jobs


GROUPS = ("toys", "stl", "train")  # workflow/profiles/slurm


def by_group(jobs: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Group name -> its SLURM jobs; the executor's comment is rule_<group>_<rules...>."""
    groups: dict[str, list[dict[str, str]]] = {}
    for job in jobs:
        name = next((g for g in GROUPS if job["Comment"].startswith(f"rule_{g}_")), None)
        groups.setdefault(name or job["Comment"], []).append(job)
    return groups


@pytest.mark.slow
@pytest.mark.slurm
def test_stage_outputs_exist(slurm_run: tuple[Path, str, list[dict[str, str]]]) -> None:
    workdir, _, _ = slurm_run
    runs = sorted((workdir / "results/runs").rglob("metrics.json"))
    assert len(runs) == 3  # the tiny config's 2 single-task runs, then one multi-task run
    for path in [*runs, *(workdir / t for t in TARGETS)]:
        assert path.stat().st_size > 0, path
    assert (workdir / "results/baselines/cityscapes/segnet.json").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_jobs_went_through_slurm_bundled_in_groups(
    slurm_run: tuple[Path, str, list[dict[str, str]]],
) -> None:
    workdir, log, jobs = slurm_run
    groups = by_group(jobs)
    # toy + invariance in one job, the 2 single-task runs in one, the multi-task run alone
    assert {name: len(js) for name, js in groups.items()} == {"toys": 1, "stl": 1, "train": 1}
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        assert job["ExitCode"] == "0:0", job
        slurm_log = Path(job["StdOut"])
        assert slurm_log.is_relative_to(workdir / ".snakemake/slurm_logs"), slurm_log
        assert "Finished jobid" in slurm_log.read_text()
    assert len(re.findall(r"submitted with SLURM jobid", log)) == 3


@pytest.mark.slow
@pytest.mark.slurm
def test_group_jobs_are_sized_for_runs_one_after_another(
    slurm_run: tuple[Path, str, list[dict[str, str]]],
) -> None:
    _, _, jobs = slurm_run
    members = {"toys": 2, "stl": 2, "train": 1}
    for name, group in by_group(jobs).items():
        for job in group:
            # jobs of 10 minutes each, run in series: their sum; one GPU, one CPU at a time
            assert job["TimeLimit"] == f"00:{10 * members[name]}:00", (name, job["TimeLimit"])
            assert job["NumCPUs"] == "1", (name, job["NumCPUs"])
            gpus = re.findall(r"gres:gpu:(?:(\w+):)?(\d+)", job.get("TresPerJob", ""))
            if name == "toys":
                assert gpus == [], job.get("TresPerJob")
            else:  # the training runs: one GPU of the configured model
                assert gpus == [(FAKE_GPU_MODEL, "1")], job.get("TresPerJob")


@pytest.mark.slow
@pytest.mark.slurm
def test_light_rules_ran_locally(slurm_run: tuple[Path, str, list[dict[str, str]]]) -> None:
    _, log, jobs = slurm_run
    for rule in ("make_synthetic", "baseline"):
        assert f"localrule {rule}:" in log
        assert not any(rule in job["Comment"] for job in jobs)


@pytest.mark.slow
@pytest.mark.slurm
def test_notebooks_build_locally_afterwards(
    slurm_run: tuple[Path, str, list[dict[str, str]]],
) -> None:
    workdir, _, _ = slurm_run
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "2", "figures/table2.csv", "--configfile", TINY],
        cwd=workdir, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = re.findall(r"^\s*(?:local)?rule (\w+):", proc.stdout, flags=re.M)
    # what the cluster made counts as done: the other 3 multi-task runs, then the light rules
    assert planned.count("train") == 3, planned
    assert {"aggregate_main", "main_notebook"} <= set(planned)
    assert not {"train_stl", "baseline", "make_synthetic"} & set(planned), planned
