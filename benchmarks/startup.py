"""Benchmark of a training job's start-up (not a test): what every `mtlp train` job pays before
its first step, each step measured in fresh processes.

    python benchmarks/startup.py            # 5 repeats of each
    python benchmarks/startup.py -n 3 --importtime /tmp/importtime.txt

Measured (min and median wall seconds over ``-n`` fresh processes):

* ``python -c pass``: the interpreter;
* ``mtlp --help``: the CLI's own imports;
* ``import torch``;
* ``import mtl_paradigms.train`` (torch, torchvision, the models, methods, data);
* ``first optimizer``: constructing the first ``torch.optim.Adam`` after ``import torch``
  (in-process time), and whether it imported ``torch._dynamo``; ``first step``: its first
  ``step()`` (ditto); ``import torch._dynamo`` alone, after ``import torch``;
* ``mtlp train``: a whole run of one epoch on a tiny synthetic Cityscapes (the tiny config's
  sizes), and its share before the first step where the log says so.

``--importtime FILE`` writes ``python -X importtime -c 'import mtl_paradigms.train'`` there and
prints the 15 largest cumulative imports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(sys.executable).parent


def mtlp() -> str:
    here = BIN / "mtlp"
    return str(here) if here.exists() else shutil.which("mtlp") or "mtlp"


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def inner(code: str) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; it prints a JSON object of timings."""
    out = subprocess.run(
        [PY, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


OPTIMIZER = """
import json, sys, time
import torch
p = torch.nn.Parameter(torch.zeros(10))
t = time.perf_counter(); opt = torch.optim.Adam([p], lr=1e-3); t_init = time.perf_counter() - t
dyn_init = "torch._dynamo" in sys.modules
p.grad = torch.ones(10)
t = time.perf_counter(); opt.step(); t_step = time.perf_counter() - t
dyn_step = "torch._dynamo" in sys.modules
print(json.dumps({"first optimizer": t_init, "first step": t_step,
                  "dynamo after init": dyn_init, "dynamo after step": dyn_step}))
"""
DYNAMO = """
import json, time
import torch
t = time.perf_counter()
import torch._dynamo
print(json.dumps({"import torch._dynamo": time.perf_counter() - t}))
"""

SYNTHETIC = {"dataset": "cityscapes", "height": 32, "num_train": 24, "num_val": 12, "seed": 1,
             "width": 32}  # fmt: skip
TRAIN = {
    "adam_betas": [0.9, 0.999], "adam_eps": 1e-08, "arch": "segnet", "augment": True,
    "batch_size": 8, "dataset": "cityscapes", "device": "cpu", "epochs": 1, "lr": 0.01,
    "lr_gamma": 0.5, "lr_step_every": 3, "method": "ew", "momentum": 0.9, "optimizer": "adam",
    "seed": 0, "selection": "val_loss", "tasks": ["segmentation", "depth"], "val_size": 8,
    "weight_decay": 1e-05, "width": 0.125,
}  # fmt: skip


def summary(name: str, values: list[float]) -> None:
    print(f"{name:<28} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--importtime", help="write python -X importtime output here")
    args = parser.parse_args(argv)
    n = args.runs

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {load:.2f}; {n} runs each")
    summary("python -c pass", [wall([PY, "-c", "pass"]) for _ in range(n)])
    summary("mtlp --help", [wall([mtlp(), "--help"]) for _ in range(n)])
    summary("import torch", [wall([PY, "-c", "import torch"]) for _ in range(n)])
    summary(
        "import mtl_paradigms.train",
        [wall([PY, "-c", "import mtl_paradigms.train"]) for _ in range(n)],
    )
    rows = [inner(OPTIMIZER) for _ in range(n)]
    for key in ("first optimizer", "first step"):
        summary(f"{key} (in-process)", [r[key] for r in rows])
    print(
        f"{'':<28} torch._dynamo imported by the constructor: {rows[0]['dynamo after init']}, "
        f"after the first step: {rows[0]['dynamo after step']}"
    )
    summary("import torch._dynamo", [inner(DYNAMO)["import torch._dynamo"] for _ in range(n)])

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cityscapes"
        subprocess.run(
            [mtlp(), "make-synthetic", "--settings", json.dumps(SYNTHETIC), "--out", str(data)],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        settings = json.dumps(TRAIN | {"data_dir": str(data)})
        times = []
        for i in range(n):
            out = Path(tmp) / f"run{i}"
            cmd = [mtlp(), "train", "--settings", settings, "--out", str(out), "--threads", "1"]
            times.append(wall(cmd))
        summary("mtlp train (1 tiny epoch)", times)

    if args.importtime:
        proc = subprocess.run(
            [PY, "-X", "importtime", "-c", "import mtl_paradigms.train"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        Path(args.importtime).write_text(proc.stderr)
        rows_it = []
        for line in proc.stderr.splitlines():
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[1].isdigit():
                rows_it.append((int(parts[1]), parts[2]))
        print("largest cumulative imports of mtl_paradigms.train (s):")
        for us, name in sorted(rows_it, reverse=True)[:15]:
            print(f"  {us / 1e6:6.2f}  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
