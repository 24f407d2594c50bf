"""Benchmark of the gradient statistics (not a test): per-sample x per-task gradients layer-wise
(one batched forward, ``T`` backward passes) and with ``torch.func`` (vmap + jacrev) against an
explicit per-sample loop, and the training overhead of extracting statistics every ``k``
iterations.

    PYTHONPATH=src python benchmarks/gradstats.py                       # CPU, default scale
    PYTHONPATH=src python benchmarks/gradstats.py --preset paper-nyuv2 --device cuda

Reported per configuration:

* ``layers_s`` / ``vmap_s`` / ``loop_s``: median seconds of one call for ``samples`` samples x
  ``tasks`` tasks (after a warm-up call), ``speedup = loop_s / layers_s`` and
  ``vmap_speedup = loop_s / vmap_s``, throughput in per-sample-per-task gradients per second, and
  the relative differences ``|layers - loop| / |loop|`` and ``|vmap - loop| / |loop|``;
* ``extract_s``: one whole extraction (BatchNorm statistics, the ``auto`` engine, Gram
  statistics);
* ``step_s``: one training step (forward, mean loss, backward, Adam) on the full batch;
* ``overhead``: the extra time of ``steps`` training steps with an extraction every ``every``
  steps, relative to the same steps without (goal of issue 6: at most 20 %);
* FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and
  convolutions, forward and backward): ``loop_gflop``, ``layers_gflop`` (the layer-wise
  gradients), ``step_gflop`` (one training step); ``flop_speedup = loop / layers`` is the
  speed-up a compute-bound machine can reach at most, and ``flop_overhead = (BatchNorm statistics
  pass + layers) / (every x step)`` the least overhead it can reach.

Inputs are random tensors of the dataset's shapes (the timings do not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mtl_paradigms.gradstats.extract import GradStatsSettings, extract
from mtl_paradigms.gradstats.layers import layerwise_per_sample_task_gradients
from mtl_paradigms.gradstats.persample import (
    batch_norm_statistics,
    loop_per_sample_task_gradients,
    per_sample_task_gradients,
)
from mtl_paradigms.models import build_model
from mtl_paradigms.tasks import make_tasks

log = logging.getLogger("benchmark")

PRESETS: dict[str, dict[str, object]] = {
    # the embedded default of the workflow (SegNet at 1/8 width on 32x48 synthetic NYUv2)
    "default": {"dataset": "nyuv2", "width": 0.125, "height": 32, "image_width": 48, "batch": 8},
    # the default network with the paper's Cityscapes batch (64), of which 8 samples are used
    "default-b64": {
        "dataset": "cityscapes",
        "width": 0.125,
        "height": 32,
        "image_width": 64,
        "batch": 64,
    },
    # a mid-size CPU setting
    "cpu-mid": {"dataset": "nyuv2", "width": 0.25, "height": 64, "image_width": 96, "batch": 8},
    # the paper's setups (SegNet at full width)
    "paper-nyuv2": {
        "dataset": "nyuv2",
        "width": 1.0,
        "height": 288,
        "image_width": 384,
        "batch": 8,
    },
    "paper-cityscapes": {
        "dataset": "cityscapes",
        "width": 1.0,
        "height": 128,
        "image_width": 256,
        "batch": 64,
    },
}


@dataclass
class Result:
    preset: str
    device: str
    dataset: str
    width: float
    image: str
    batch: int
    samples: int
    tasks: int
    shared_parameters: int
    layers_s: float
    vmap_s: float
    loop_s: float
    speedup: float
    vmap_speedup: float
    layers_grads_per_s: float
    vmap_grads_per_s: float
    loop_grads_per_s: float
    relative_difference: float
    vmap_relative_difference: float
    extract_s: float
    step_s: float
    every: int
    overhead: float
    loop_gflop: float
    layers_gflop: float
    stats_gflop: float
    step_gflop: float
    flop_speedup: float
    flop_overhead: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs of one call of ``fn`` (``FlopCounterMode``: matrix products and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def random_batch(dataset: str, n: int, h: int, w: int, classes: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, h, w, generator=g)
    targets = {
        "segmentation": torch.randint(0, classes, (n, h, w), generator=g),
        "depth": torch.rand(n, 1, h, w, generator=g) + 0.1,
    }
    if dataset == "nyuv2":
        normal = torch.randn(n, 3, h, w, generator=g)
        targets["normal"] = torch.nn.functional.normalize(normal, dim=1)
    return images.to(device), {k: v.to(device) for k, v in targets.items()}


def run(preset: str, device: torch.device, args: argparse.Namespace) -> Result:
    cfg = PRESETS[preset]
    dataset, batch = str(cfg["dataset"]), int(cfg["batch"])  # type: ignore[call-overload]
    h, w = int(cfg["height"]), int(cfg["image_width"])  # type: ignore[call-overload]
    classes = 13 if dataset == "nyuv2" else 7
    tasks = make_tasks(dataset, classes)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = build_model("segnet", {n: t.out_channels for n, t in tasks.items()},
                        width=float(cfg["width"])).to(device)  # type: ignore[arg-type]  # fmt: skip
    model.train()
    images, targets = random_batch(dataset, batch, h, w, classes, device)
    k = min(args.samples, batch)
    sub_images = images[:k]
    sub_targets = {n: t[:k] for n, t in targets.items()}
    d = sum(p.numel() for p in model.shared_parameters())
    log.info("%s on %s: SegNet width %s, %dx%d, batch %d, D=%d", preset, device, cfg["width"],
             h, w, batch, d)  # fmt: skip

    def vmapped() -> torch.Tensor:
        return per_sample_task_gradients(
            model, tasks, sub_images, sub_targets, stats_images=images, chunk_size=args.chunk_size
        )

    def looped() -> torch.Tensor:
        return loop_per_sample_task_gradients(
            model, tasks, sub_images, sub_targets, stats_images=images
        )

    def layered() -> torch.Tensor:
        return layerwise_per_sample_task_gradients(
            model, tasks, sub_images, sub_targets, stats_images=images
        )

    a, b, c = vmapped(), looped(), layered()
    vmap_rel = float((a - b).norm() / b.norm())
    rel = float((c - b).norm() / b.norm())
    del a, b, c
    layers_s = timed(layered, device, args.repeats)
    vmap_s = timed(vmapped, device, args.repeats)
    loop_s = timed(looped, device, args.repeats)
    gs = GradStatsSettings(every=args.every, samples=k, chunk_size=args.chunk_size)
    gen = torch.Generator().manual_seed(0)
    extract_s = timed(lambda: extract(model, tasks, images, targets, gs, gen), device, args.repeats)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_steps(with_stats: bool) -> None:
        for i in range(args.steps):
            if with_stats and i % args.every == 0:
                extract(model, tasks, images, targets, gs, gen)
            optimizer.zero_grad(set_to_none=True)
            preds = model(images)
            loss = torch.stack([t.loss(preds[n], targets[n]) for n, t in tasks.items()]).mean()
            loss.backward()
            optimizer.step()

    plain = timed(lambda: train_steps(False), device, max(1, args.repeats // 2))
    with_stats = timed(lambda: train_steps(True), device, max(1, args.repeats // 2))

    def one_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        preds = model(images)
        torch.stack([t.loss(preds[n], targets[n]) for n, t in tasks.items()]).mean().backward()

    flops = {
        name: count_flops(fn)
        for name, fn in (("loop", looped), ("layers", layered), ("step", one_step),
                         ("stats", lambda: batch_norm_statistics(model, images)))
    }  # fmt: skip
    grads = k * len(tasks)
    return Result(
        preset=preset, device=str(device), dataset=dataset, width=float(cfg["width"]),  # type: ignore[arg-type]
        image=f"{h}x{w}", batch=batch, samples=k, tasks=len(tasks), shared_parameters=d,
        layers_s=layers_s, vmap_s=vmap_s, loop_s=loop_s, speedup=loop_s / layers_s,
        vmap_speedup=loop_s / vmap_s, layers_grads_per_s=grads / layers_s,
        vmap_grads_per_s=grads / vmap_s, loop_grads_per_s=grads / loop_s,
        relative_difference=rel, vmap_relative_difference=vmap_rel, extract_s=extract_s,
        step_s=plain / args.steps, every=args.every, overhead=with_stats / plain - 1,
        loop_gflop=flops["loop"] / 1e9, layers_gflop=flops["layers"] / 1e9,
        stats_gflop=flops["stats"] / 1e9, step_gflop=flops["step"] / 1e9,
        flop_speedup=flops["loop"] / flops["layers"],
        flop_overhead=(flops["stats"] + flops["layers"]) / (args.every * flops["step"]),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", choices=sorted(PRESETS),
                        help="configuration(s) to run (default: default)")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    parser.add_argument("--samples", type=int, default=8, help="samples per extraction")
    parser.add_argument("--every", type=int, default=5, help="iterations between extractions")
    parser.add_argument("--steps", type=int, default=20, help="training steps per overhead run")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (median)")
    parser.add_argument("--chunk-size", type=int, default=None, help="vmap chunk (samples)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    results = [asdict(run(p, device, args)) for p in (args.preset or ["default"])]
    meta = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    columns = ("preset", "samples", "tasks", "shared_parameters", "layers_s", "vmap_s", "loop_s",
               "speedup", "vmap_speedup", "flop_speedup", "relative_difference", "extract_s",
               "step_s", "overhead", "flop_overhead")  # fmt: skip
    sys.stdout.write(json.dumps(meta) + "\n")
    sys.stdout.write(" ".join(f"{c:>12}" for c in columns) + "\n")
    for r in results:
        cells = [f"{r[c]:>12.4g}" if isinstance(r[c], float) else f"{r[c]!s:>12}" for c in columns]
        sys.stdout.write(" ".join(cells) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
