"""Benchmark of the method library (not a test): the time of one training step per method,
relative to equal weighting (EW), at T = 2, 3 and 40 tasks.

    PYTHONPATH=src python benchmarks/methods.py                  # CPU (or --device cuda)
    PYTHONPATH=src python benchmarks/methods.py --tasks 2 3 --methods ew pcgrad nash_mtl

A step is what the trainer does per batch: forward, the method's gradients and one Adam step.
Every method is asked for its updater as the trainer asks (:func:`mtl_paradigms.updates.
make_updater`). Methods whose updater is the plain joint one run
:func:`mtl_paradigms.train.training_step` plus ``Adam.step``; methods that need more than one
forward/backward per batch (FAMO's re-evaluation after the step, Auto-Lambda's virtual step on
validation data, the optimizer-level strategies AdaTask, MTL-IO and MTL-IUS) run through their
updater's step, and are compared with EW timed through the same updater.

The model is a small synthetic multi-task network: a convolutional encoder on 3x32x32 images
(``--width`` filters) and one linear head per task with a binary cross-entropy loss (CelebA's
task kind), so T = 40 has 40 heads. Inputs are random; timings do not depend on the values.
Each step is timed ``--repeats`` times after ``--warmup`` untimed steps (CUDA synchronised
around every step); the table reports the median.

The *floor* rows measure what any gradient method must at least pay on top of a forward pass:
``floor: T backward`` is the forward pass plus one backward pass per task over the shared
parameters (``torch.autograd.grad`` with a retained graph, how the trainer computes per-task
gradients), and ``floor: batched`` the same Jacobian in a single vectorised backward
(``is_grads_batched``), an alternative where it is faster. Both are relative to EW.
Results: ``benchmarks/results/methods-<device>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from _machine import cpu_name  # benchmarks/_machine.py (the script's folder)
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtl_paradigms.methods import METHODS, Aggregator, Method, Weighting, make_method
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.tasks import Task, attribute_tasks
from mtl_paradigms.train import training_step
from mtl_paradigms.updates import JointUpdater, Updater, make_updater

log = logging.getLogger("benchmark")

RESULTS = Path(__file__).resolve().parent / "results"
# Hyperparameters for methods that have no usable default.
PARAMS: dict[str, Callable[[int], dict[str, object]]] = {
    "fixed": lambda t: {"weights": [1.0 / t] * t},
}


class BenchModel(MultiTaskModel):
    """A small conv encoder (two strided convolutions, pooled) and ``T`` linear heads."""

    def __init__(self, num_tasks: int, width: int) -> None:
        encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        heads = {f"t{i:02d}": nn.Linear(4 * width, 1) for i in range(num_tasks)}
        super().__init__(encoder, heads, arch="bench")


@dataclass
class Row:
    device: str
    tasks: int
    method: str
    kind: str
    path: str
    median_s: float
    q1_s: float
    q3_s: float
    ratio_to_ew: float = float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(step: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _batch(num_tasks: int, batch: int, device: torch.device, seed: int) -> tuple[Tensor, dict]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
    targets = {
        f"t{i:02d}": torch.randint(0, 2, (batch,), generator=gen).float().to(device)
        for i in range(num_tasks)
    }
    return images, targets


def _kind(name: str) -> str:
    cls = METHODS[name]
    if issubclass(cls, Weighting):
        return "weighting"
    if issubclass(cls, Aggregator):
        return "aggregator"
    return "strategy"


def _updater(
    model: BenchModel,
    tasks: dict[str, Task],
    name: str,
    images: Tensor,
    batched: bool = False,
) -> tuple[Method, Updater]:
    """Method ``name`` and the updater it asks for (the trainer's :func:`make_updater`)."""
    device = images.device
    method = make_method(name, PARAMS.get(name, lambda t: {})(len(tasks)))
    extra = method.bind(len(tasks), device)
    generator = torch.Generator().manual_seed(1)
    val = _batch(len(tasks), images.shape[0], device, seed=2)
    updater = make_updater(
        model, tasks, method, extra, torch.autocast(device.type, enabled=False),
        lambda params: torch.optim.Adam(params, lr=1e-4),
        optimizer_name="adam", lr=1e-4, adam_betas=(0.9, 0.999), adam_eps=1e-8,
        weight_decay=0.0, generator=generator, val_batch=lambda: val, batched_jacobian=batched,
    )  # fmt: skip
    return method, updater


def _step_of(updater: Updater, images: Tensor, targets: dict) -> Callable[[], object]:
    return lambda: updater.step(images, targets)


def _method_step(
    model: BenchModel,
    tasks: dict[str, Task],
    name: str,
    images: Tensor,
    targets: dict,
    batched: bool = False,
) -> tuple[str, Callable[[], object]]:
    """``(path, step)`` of method ``name``: the method's updater decides. A plain
    :class:`JointUpdater` (no hook around the step) is timed as :func:`training_step` plus its
    optimizer's step (``"training_step"``); any other updater (Auto-Lambda's meta step, FAMO's
    losses after the step, the strategies) through its full ``step`` (``"updater"``)."""
    method, updater = _updater(model, tasks, name, images, batched)
    if type(updater) is not JointUpdater or method.needs_after_step_losses:
        return "updater", _step_of(updater, images, targets)
    optimizer = updater.optimizer
    autocast = torch.autocast(images.device.type, enabled=False)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        out = training_step(
            model, tasks, method, images, targets, autocast, updater.method_params,
            batched_jacobian=batched,
        )  # fmt: skip
        optimizer.step()
        return out

    return "training_step", step


def _floor_steps(
    model: BenchModel, tasks: dict[str, Task], images: Tensor, targets: dict
) -> dict[str, Callable[[], object]]:
    """Forward + one backward per task over the shared parameters; and the batched Jacobian."""
    shared = model.shared_parameters()
    num_tasks = len(tasks)

    def losses() -> Tensor:
        preds = model(images)
        return torch.stack([task.loss(preds[n], targets[n]) for n, task in tasks.items()])

    def loop() -> object:
        values = losses()
        return [torch.autograd.grad(values[t], shared, retain_graph=True) for t in range(num_tasks)]

    def batched() -> object:
        values = losses()
        eye = torch.eye(num_tasks, device=images.device)
        return torch.autograd.grad(values, shared, grad_outputs=eye, is_grads_batched=True)

    return {"floor: T backward": loop, "floor: batched": batched}


def _configs(
    num_tasks: int, names: list[str], args: argparse.Namespace, device: torch.device
) -> list[tuple[str, str, Callable[[], object]]]:
    """``(method, path, step)`` for every method at ``num_tasks`` tasks, each with its own model."""
    tasks = attribute_tasks(f"t{i:02d}" for i in range(num_tasks))
    images, targets = _batch(num_tasks, args.batch, device, seed=0)
    batched = args.jacobian == "batched" or (args.jacobian == "auto" and device.type == "cuda")
    configs: list[tuple[str, str, Callable[[], object]]] = []
    for name in ["ew", *[n for n in names if n != "ew"]]:
        torch.manual_seed(0)
        model = BenchModel(num_tasks, args.width).to(device)
        try:
            path, step = _method_step(model, tasks, name, images, targets, batched)
            configs.append((name, path, step))
            if name == "ew":
                # EW through the updater too, the reference for the updater rows; and the floors.
                ew_model = BenchModel(num_tasks, args.width).to(device)
                _, ew_updater = _updater(ew_model, tasks, "ew", images)
                configs.append(("ew", "updater", _step_of(ew_updater, images, targets)))
                for floor, step in _floor_steps(model, tasks, images, targets).items():
                    configs.append((floor, "autograd", step))
        except (ImportError, TypeError, ValueError) as err:
            log.warning("skipping %s at T=%d: %s", name, num_tasks, err)
    return configs


def run(args: argparse.Namespace) -> pd.DataFrame:
    """Time every configuration; the repeats are interleaved (one step of each configuration
    per round), so that a slow spell of a shared machine hits all methods alike."""
    device = torch.device(args.device)
    label = "cuda" if device.type == "cuda" else "cpu"
    names = args.methods or sorted(METHODS)
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    rows: list[Row] = []
    for num_tasks in args.tasks:
        configs = []
        for name, path, step in _configs(num_tasks, names, args, device):
            try:
                _time(step, device, args.warmup, 0)
            except RuntimeError as err:  # e.g. a vmapped backward some layer does not support
                log.warning("%s (%s) at T=%d failed: %s", name, path, num_tasks, err)
                continue
            configs.append((name, path, step))
        times: dict[tuple[str, str], list[float]] = {(n, p): [] for n, p, _ in configs}
        for _ in tqdm(range(args.repeats), desc=f"T={num_tasks} on {label}", unit="round"):
            for name, path, step in configs:
                times[(name, path)] += _time(step, device, 0, 1)
        for (name, path), ts in times.items():
            q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
            kind = "floor" if path == "autograd" else _kind(name)
            rows.append(Row(label, num_tasks, name, kind, path, statistics.median(ts), q[0], q[2]))
    table = pd.DataFrame([asdict(r) for r in rows])
    ew = table[table.method == "ew"].set_index(["tasks", "path"]).median_s
    for i, r in table.iterrows():
        reference = ew.get((r.tasks, "training_step" if r.path == "autograd" else r.path))
        table.loc[i, "ratio_to_ew"] = r.median_s / reference if reference else float("nan")
    return table


def markdown(table: pd.DataFrame, args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    wide = table.pivot_table(index="method", columns="tasks", values="ratio_to_ew", aggfunc="first")
    ms = table[table.method == "ew"].pivot_table(
        index="path", columns="tasks", values="median_s", aggfunc="first"
    )
    kinds = table.drop_duplicates("method").set_index("method")[["kind", "path"]]
    wide = kinds.join(wide).sort_values(["kind", "method"])
    lines = [
        f"# Step time per method relative to EW ({table.device.iloc[0]})",
        "",
        f"Measured {datetime.date.today().isoformat()} on {machine}; torch {torch.__version__}, "
        f"Python {sys.version.split()[0]}; batch {args.batch}, encoder width {args.width}, "
        f"median of {args.repeats} steps after {args.warmup} warm-up steps.",
        "",
        "EW's own step (ms): "
        + "; ".join(
            f"{path}: " + ", ".join(f"T={t} {1000 * v:.1f}" for t, v in ms.loc[path].items())
            for path in ms.index
        ),
        "",
        "| method | kind | timed through | "
        + " | ".join(f"T={t}" for t in wide.columns[2:])
        + " |",
        "|---|---|---|" + "---|" * (len(wide.columns) - 2),
    ]
    for name, r in wide.iterrows():
        cells = [f"{v:.2f}" if pd.notna(v) else "–" for v in r.iloc[2:]]
        lines.append(f"| {name} | {r.kind} | {r.path} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 40])
    parser.add_argument("--methods", nargs="*", help="default: every registered method")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="filters of the first conv layer")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--jacobian", choices=["auto", "loop", "batched"], default="auto",
        help="per-task gradients as the trainer's task_jacobian (auto: batched on CUDA)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    table = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    label = table.device.iloc[0]
    csv_path, md_path = args.out / f"methods-{label}.csv", args.out / f"methods-{label}.md"
    tmp = csv_path.with_suffix(f".csv.tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    text = markdown(table, args)
    tmp = md_path.with_suffix(f".md.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(md_path)
    log.info("wrote %s and %s", csv_path, md_path)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
