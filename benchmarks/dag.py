"""Benchmark of the workflow's plan (not a test): how long `snakemake -n` takes to build the DAG
of a config, the time every cluster user pays on each invocation.

    python benchmarks/dag.py                                    # paper.yaml, 3 runs
    python benchmarks/dag.py --config workflow/config/default.yaml -n 5
    python benchmarks/dag.py --profile /tmp/dag.prof            # plus one cProfile'd run

Each run is a fresh `snakemake -n` process in the repository (it writes nothing but
Snakemake's own metadata under .snakemake/); the first run also fills the method-registry
cache (.snakemake/mtlp), as a cluster user's first call would. Printed: the wall and CPU
(user + system) time of every run, their min and median, the number of jobs, and the machine
(CPU, core count, load average at the start: wall times are only comparable on an idle
machine; CPU time suffers less from a shared one).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]


def snakemake_bin() -> str:
    here = Path(sys.executable).parent / "snakemake"
    return str(here) if here.exists() else shutil.which("snakemake") or "snakemake"


def cpu_seconds() -> float:
    """User + system CPU time of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dry_run(config: str, extra: list[str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, number of jobs) of one `snakemake -n` of ``config``."""
    cmd = [snakemake_bin(), "-n", "--configfile", config, *extra]
    cpu = cpu_seconds()
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    found = re.search(r"^total\s+(\d+)\s*$", proc.stdout + proc.stderr, re.MULTILINE)
    return seconds, cpu, int(found.group(1)) if found else -1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="workflow/config/paper.yaml")
    parser.add_argument("-n", "--runs", type=int, default=3)
    parser.add_argument("--profile", help="also write one cProfile'd run here (pstats file)")
    parser.add_argument(
        "extra", nargs="*", help="more snakemake arguments (after --), e.g. -- --printshellcmds"
    )
    args = parser.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {load:.2f}")
    print(f"snakemake -n --configfile {args.config} {' '.join(args.extra)}".rstrip())
    times, cpus = [], []
    jobs = -1
    for i in range(args.runs):
        seconds, cpu, jobs = dry_run(args.config, args.extra)
        times.append(seconds)
        cpus.append(cpu)
        print(f"  run {i + 1}: {seconds:.2f} s wall, {cpu:.2f} s CPU ({jobs} jobs)", flush=True)
    print(
        f"wall: min {min(times):.2f} s, median {statistics.median(times):.2f} s; "
        f"CPU: min {min(cpus):.2f} s, median {statistics.median(cpus):.2f} s; "
        f"{len(times)} runs, {jobs} jobs"
    )
    if args.profile:
        cmd = [sys.executable, "-m", "cProfile", "-o", args.profile, snakemake_bin(), "-n",
               "--configfile", args.config, *args.extra]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True)
        import pstats

        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
