"""Benchmark of training throughput through the trainer's real update path (not a test).

    PYTHONPATH=src python benchmarks/throughput.py --device cpu --settings nyuv2_deeplabv3
    PYTHONPATH=src python benchmarks/throughput.py --device cuda --bf16 --channels-last
    PYTHONPATH=src python benchmarks/throughput.py --device cuda --bf16 --append \\
        --settings nyuv2_deeplabv3 celeba_resnet18 --methods ew pcgrad cagrad

Each (setting, method) builds the network with :func:`mtl_paradigms.models.build_model`, the
tasks as the trainer does, the method with :func:`mtl_paradigms.methods.make_method` and the
updater with :func:`mtl_paradigms.updates.make_updater` (Adam from
:func:`mtl_paradigms.train.make_optimizer`, bf16 autocast and channels_last as the trainer's
``bf16`` / ``channels_last``, the batched task Jacobian on CUDA as ``task_jacobian: auto``), and
times ``updater.step(images, targets)`` on one random batch already on the device, at the
paper's shapes (``--device cpu``: batch and image sides divided by ``--cpu-scale``). Data
loading and augmentation are not included: this is the ceiling of the update itself.

Reported per row: img/s (batch / median step), the median and quartiles of the step time
(``torch.cuda.synchronize`` around each step), the peak allocated GPU memory, and an estimated
model-FLOP utilisation: the FLOPs of one EW step of the setting (counted once with
``torch.utils.flop_counter.FlopCounterMode``: forward + backward, the optimizer step is not
counted) divided by the step time and by ``--peak-tflops`` (default: 989 TFLOP/s, H100 SXM bf16
dense, with ``--bf16``; without it 494 TFLOP/s, H100 SXM TF32 dense, since torch lets cuDNN run
fp32 convolutions in TF32 by default, or 67 TFLOP/s, fp32, where that is off). Gradient methods
are charged the EW step's FLOPs, so their MFU is the useful fraction (their extra backward
passes count as overhead). A method whose first step takes longer than ``--max-step-s`` is
skipped and listed. Results: ``<out-dir>/throughput-<device>.csv`` and ``.md``
(``--append`` merges rows into an existing CSV, replacing rows with the same key).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from _machine import cpu_name  # benchmarks/_machine.py (the script's folder)
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from mtl_paradigms.methods import make_method
from mtl_paradigms.models import build_model
from mtl_paradigms.tasks import Task, attribute_tasks, make_tasks
from mtl_paradigms.train import (
    TrainSettings,
    batched_jacobian,
    compile_model,
    make_optimizer,
    speed_flags,
)
from mtl_paradigms.updates import Updater, make_updater, per_task_losses, task_gradients

log = logging.getLogger("throughput")

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("ew", "pcgrad", "cagrad", "imtl_g", "aligned_mtl", "nash_mtl", "mgda")
#: Pseudo-method: the work every per-task-gradient method must do (forward + T backward
#: passes: the per-task gradients of the shared parameters and the heads' gradients; see
#: FloorStep), the issue's 1.1x yardstick.
FLOOR = "floor"
KEY = ["setting", "method", "precision"]
#: TrainSettings switch -> its suffix in the ``precision`` column.
SWITCH_LABELS = {"fused_optimizer": "fused", "cudnn_benchmark": "cudnnbench", "compile": "compile"}


@dataclass(frozen=True)
class Setting:
    dataset: str
    arch: str
    batch: int
    height: int
    width: int
    num_classes: int = 0  # segmentation classes; 0 for CelebA
    num_tasks: int = 0  # CelebA: binary attributes


SETTINGS: dict[str, Setting] = {
    "nyuv2_deeplabv3": Setting("nyuv2", "deeplabv3", 8, 288, 384, num_classes=13),
    "cityscapes_deeplabv3": Setting("cityscapes", "deeplabv3", 64, 128, 256, num_classes=7),
    "nyuv2_segnet": Setting("nyuv2", "segnet", 8, 288, 384, num_classes=13),
    "celeba_resnet18": Setting("celeba", "resnet18", 512, 64, 64, num_tasks=40),
}


@dataclass
class Row:
    setting: str
    method: str
    precision: str
    device: str
    batch: int
    height: int
    width: int
    tasks: int
    img_per_s: float
    ms_median: float
    ms_q1: float
    ms_q3: float
    peak_mem_gib: float
    ew_gflop: float
    mfu: float
    peak_tflops: float
    first_step_s: float = math.nan  # the first step (compilation, cuDNN autotuning) in s
    note: str = ""


def scaled(setting: Setting, scale: int) -> Setting:
    """The setting with batch and image sides divided by ``scale`` (at least 2 images, since
    BatchNorm after ASPP's global pooling needs two, and 8 px)."""
    if scale == 1:
        return setting
    return Setting(
        setting.dataset, setting.arch, max(2, setting.batch // scale),
        max(8, setting.height // scale), max(8, setting.width // scale),
        setting.num_classes, setting.num_tasks,
    )  # fmt: skip


def make_setting_tasks(setting: Setting) -> dict[str, Task]:
    if setting.dataset == "celeba":
        return attribute_tasks(f"attr{i:02d}" for i in range(setting.num_tasks))
    return make_tasks(setting.dataset, setting.num_classes)  # type: ignore[arg-type]


def random_batch(
    setting: Setting, tasks: dict[str, Task], device: torch.device, channels_last: bool
) -> tuple[Tensor, dict[str, Tensor]]:
    """Random images and targets of the right kinds, on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    n, h, w = setting.batch, setting.height, setting.width
    images = torch.randn(n, 3, h, w, generator=g)
    targets: dict[str, Tensor] = {}
    for name, task in tasks.items():
        if task.kind == "segmentation":
            targets[name] = torch.randint(0, setting.num_classes, (n, h, w), generator=g)
        elif task.kind == "depth":
            targets[name] = torch.rand(n, 1, h, w, generator=g) + 0.1
        elif task.kind == "normal":
            targets[name] = torch.nn.functional.normalize(torch.randn(n, 3, h, w, generator=g))
        else:
            targets[name] = torch.randint(0, 2, (n,), generator=g).float()
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, {k: v.to(device) for k, v in targets.items()}


def train_settings(
    setting: Setting, method_name: str, bf16: bool, channels_last: bool, **switches: Any
) -> TrainSettings:
    """The trainer's settings for ``setting``; ``switches``: ``fused_optimizer``,
    ``cudnn_benchmark``, ``compile``, ``compile_mode``."""
    return TrainSettings(
        dataset=setting.dataset, arch=setting.arch, method=method_name,  # type: ignore[arg-type]
        batch_size=setting.batch, bf16=bf16, channels_last=channels_last,
        augment=setting.dataset != "celeba", **switches,
    )  # fmt: skip


def build_updater(
    setting: Setting, settings: TrainSettings, device: torch.device
) -> tuple[Updater, dict[str, Task]]:
    """Model, tasks, method and updater exactly as :func:`mtl_paradigms.train.train` makes them
    (to be stepped under :func:`mtl_paradigms.train.speed_flags`)."""
    torch.manual_seed(0)
    tasks = make_setting_tasks(setting)
    model = build_model(
        setting.arch,  # type: ignore[arg-type]
        {name: task.out_channels for name, task in tasks.items()},
        single_task=len(tasks) == 1,
    ).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = make_method(settings.method, {})
    extra = method.bind(len(tasks), device)
    method.attach(model)
    if settings.compiled:
        compile_model(model, settings.compile_mode)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    updater = make_updater(
        model, tasks, method, extra, autocast, lambda params: make_optimizer(settings, params),
        optimizer_name=settings.optimizer, lr=settings.lr, adam_betas=settings.adam_betas,
        adam_eps=settings.adam_eps, weight_decay=settings.weight_decay,
        generator=torch.Generator().manual_seed(1),
        batched_jacobian=batched_jacobian(settings, device),
    )  # fmt: skip
    return updater, tasks


class FloorStep:
    """``step()`` = what every per-task-gradient method computes before it aggregates, as the
    trainer computes it: the forward pass, the per-task gradients of the shared parameters and
    the heads' gradients. In the per-task loop (CPU, ``compile``) that is ``T`` backward passes,
    each from its task's own loss through its head and the encoder, computing the gradients of
    both (what ``loss_t.backward()`` would); with the batched Jacobian (CUDA) one vectorised
    backward for the shared parameters and one pass for the heads. No aggregation and no
    optimizer step: the cost floor of a gradient method, the issue's 1.1x yardstick."""

    def __init__(self, updater: Updater, tasks: dict[str, Task], batched: bool) -> None:
        self.model, self.tasks, self.batched = updater.model, tasks, batched
        self.autocast = updater.autocast
        self.shared = list(updater.model.shared_parameters())
        self.heads = [p for name in tasks for p in updater.model.task_parameters(name)]

    def step(self, images: Tensor, targets: dict[str, Tensor]) -> None:
        with self.autocast:
            preds = self.model(images)
            losses = [loss.float() for loss in per_task_losses(self.tasks, preds, targets)]
        if self.batched:
            task_gradients(losses, self.shared, (), batched=True)
            torch.autograd.grad(torch.stack(losses).mean(), self.heads)
        else:
            task_gradients(losses, self.shared, self.heads)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_step(updater: Updater, images: Tensor, targets: dict[str, Tensor], device) -> float:
    _sync(device)
    start = time.perf_counter()
    updater.step(images, targets)
    _sync(device)
    return time.perf_counter() - start


def ew_flops(setting: Setting, device: torch.device, bf16: bool, channels_last: bool) -> float:
    """FLOPs of one EW update step (forward + backward) at ``setting`` (eager: the same
    arithmetic with or without the speed switches)."""
    settings = train_settings(setting, "ew", bf16, channels_last)
    updater, tasks = build_updater(setting, settings, device)
    images, targets = random_batch(setting, tasks, device, channels_last)
    counter = FlopCounterMode(display=False)
    with counter:
        updater.step(images, targets)
    return float(counter.get_total_flops())


def measure(args: argparse.Namespace) -> list[Row]:
    device = torch.device(args.device)
    label = device.type
    scale = args.cpu_scale if device.type == "cpu" else 1
    # The row's variant: precision, memory format and speed switches ("bf16+cl+fused").
    switches = {
        "fused_optimizer": args.fused, "cudnn_benchmark": args.cudnn_benchmark,
        "compile": args.compile,
    }  # fmt: skip
    precision = (
        ("bf16" if args.bf16 else "fp32")
        + ("+cl" if args.channels_last else "")
        + "".join(f"+{SWITCH_LABELS[k]}" for k, on in switches.items() if on)
        + ("-ro" if args.compile_mode == "reduce-overhead" else "")
    )
    extra = {"compile_mode": args.compile_mode}
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        # fp32 convolutions run on TF32 tensor cores where cuDNN allows it (torch's default).
        peak = 989.0 if args.bf16 else (494.0 if torch.backends.cudnn.allow_tf32 else 67.0)
    max_step = args.max_step_s or (2.0 if device.type == "cuda" else math.inf)
    rows: list[Row] = []
    for name in args.settings:
        setting = scaled(SETTINGS[name], scale)
        flops = ew_flops(setting, device, args.bf16, args.channels_last)
        log.info("%s: one EW step = %.1f GFLOP", name, flops / 1e9)
        for method_name in args.methods:
            tasks_n = setting.num_tasks or len(make_setting_tasks(setting))
            base = dict(
                setting=name, method=method_name, precision=precision, device=label,
                batch=setting.batch, height=setting.height, width=setting.width, tasks=tasks_n,
                ew_gflop=flops / 1e9, peak_tflops=peak or math.nan,
            )  # fmt: skip
            nan = dict(img_per_s=math.nan, ms_median=math.nan, ms_q1=math.nan, ms_q3=math.nan,
                       peak_mem_gib=math.nan, mfu=math.nan)  # fmt: skip
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            stack = contextlib.ExitStack()
            try:
                settings = train_settings(
                    setting, "ew" if method_name == FLOOR else method_name, args.bf16,
                    args.channels_last, **switches, **extra,
                )  # fmt: skip
                stack.enter_context(speed_flags(settings))
                updater, tasks = build_updater(setting, settings, device)
                if method_name == FLOOR:
                    updater = FloorStep(  # type: ignore[assignment]
                        updater, tasks, batched=batched_jacobian(settings, device)
                    )
                images, targets = random_batch(setting, tasks, device, args.channels_last)
                first = timed_step(updater, images, targets, device)
                base["first_step_s"] = first
                if first > max_step:
                    second = timed_step(updater, images, targets, device)
                    if second > max_step:
                        log.warning("skipping %s on %s: a step takes %.2f s", method_name,
                                    name, second)  # fmt: skip
                        rows.append(Row(**base, **nan, note=f"skipped: step {second:.2f} s"))
                        continue
                for _ in range(args.warmup):
                    timed_step(updater, images, targets, device)
                times = [
                    timed_step(updater, images, targets, device)
                    for _ in tqdm(range(args.steps), desc=f"{name} {method_name} {precision}",
                                  unit="step", leave=False)
                ]  # fmt: skip
            except torch.OutOfMemoryError:
                log.warning("%s on %s: out of memory", method_name, name)
                rows.append(Row(**base, **nan, note="out of memory"))
                continue
            except (ImportError, RuntimeError, TypeError, ValueError) as err:
                log.warning("%s on %s failed: %s", method_name, name, err)
                rows.append(Row(**base, **nan, note=f"failed: {type(err).__name__}"))
                continue
            finally:
                updater = images = targets = None  # type: ignore[assignment]
                stack.close()
            median = statistics.median(times)
            q = statistics.quantiles(times, n=4) if len(times) > 1 else [median] * 3
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if label == "cuda" else math.nan
            rows.append(Row(
                **base, img_per_s=setting.batch / median, ms_median=median * 1e3,
                ms_q1=q[0] * 1e3, ms_q3=q[2] * 1e3, peak_mem_gib=mem,
                mfu=flops / median / (peak * 1e12) if peak else math.nan,
            ))  # fmt: skip
            log.info("%s %s %s: %.1f img/s, %.1f ms/step", name, method_name, precision,
                     rows[-1].img_per_s, rows[-1].ms_median)  # fmt: skip
    return rows


def _fmt(value: object, digits: int) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}"
    )


def markdown(table: pd.DataFrame, device_type: str, machine: str) -> str:
    date = datetime.date.today().isoformat()
    cols = [
        ("setting", "setting", 0), ("method", "method", 0), ("precision", "precision", 0),
        ("batch", "batch", 0), ("HxW", "HxW", 0), ("tasks", "T", 0),
        ("img_per_s", "img/s", 1), ("ms_median", "ms/step", 1), ("ratio", "x EW step", 2),
        ("floor_ratio", "x floor", 2),
        ("peak_mem_gib", "peak GiB", 2), ("mfu", "MFU", 3), ("peak_tflops", "peak TFLOP/s", 0),
        ("first_step_s", "first step s", 2), ("note", "note", 0),
    ]  # fmt: skip
    t = table.copy()
    t["HxW"] = t.height.astype(str) + "x" + t.width.astype(str)
    ew = t[t.method == "ew"].set_index(["setting", "precision"]).ms_median
    t["ratio"] = [r.ms_median / ew.get((r.setting, r.precision), math.nan) for r in t.itertuples()]
    floor = t[t.method == FLOOR].set_index(["setting", "precision"]).ms_median
    t["floor_ratio"] = [
        r.ms_median / floor.get((r.setting, r.precision), math.nan) for r in t.itertuples()
    ]
    lines = [
        f"# Training throughput ({device_type})",
        "",
        f"Machine: {machine}; measured {date}. One `Updater.step` (forward, the method's "
        "gradients, Adam) on a random batch resident on the device; median over the timed steps. "
        "MFU = FLOPs of one EW step (FlopCounterMode) / step time / peak; `+cl` = channels_last, "
        "`+fused` = fused Adam, `+cudnnbench` = cuDNN autotuner, `+compile` = torch.compile "
        "(its compilation is in `first step s`; `-ro`: mode reduce-overhead, CUDA graphs). "
        f"`{FLOOR}` = forward + T backward passes: the per-task gradients of the shared "
        "parameters and the heads' gradients (what every gradient method must compute); "
        "`x floor` = step time / that row's.",
        "",
        "| " + " | ".join(h for _, h, _ in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in t.to_dict("records"):
        lines.append("| " + " | ".join(_fmt(r[c], d) for c, _, d in cols) + " |")
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--methods", nargs="+", default=["ew"], choices=[*METHODS, FLOOR])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (the trainer's bf16)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fused", action="store_true", help="fused Adam (fused_optimizer)")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="cuDNN autotuner (the trainer's cudnn_benchmark)")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile encoder and heads (the trainer's compile); the "
                        "first step, with the compilation, is the first_step_s column")  # fmt: skip
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead"],
                        default="default", help="with --compile: torch.compile's mode "
                        "(reduce-overhead: CUDA graphs; the variant gets '-ro')")  # fmt: skip
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed steps per row (default: 20 on CUDA, 3 on the CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per row (default: 3 on CUDA, 1 on the CPU)",
    )
    parser.add_argument("--cpu-scale", type=int, default=8,
                        help="on the CPU, divide batch and image sides by this")  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak for MFU (CUDA: 989 with --bf16, else 494 TF32)")  # fmt: skip
    parser.add_argument("--max-step-s", type=float, default=None,
                        help="skip methods with slower steps (s; CUDA default 2)")  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true",
                        help="merge into an existing CSV (same-key rows are replaced)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps if args.steps is not None else (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    table = pd.DataFrame([asdict(r) for r in measure(args)])
    args.out_dir.mkdir(parents=True, exist_ok=True)
    csv = args.out_dir / f"throughput-{device.type}.csv"
    if args.append and csv.exists():
        old = pd.read_csv(csv, dtype={"note": str}, keep_default_na=False, na_values=[""])
        old["note"] = old["note"].fillna("")
        keys = set(map(tuple, table[KEY].to_numpy().tolist()))
        old = old[[tuple(k) not in keys for k in old[KEY].to_numpy().tolist()]]
        table = pd.concat([old, table], ignore_index=True)
    _write(csv, table.to_csv(index=False))
    text = markdown(table, device.type, machine_name(device))
    _write(csv.with_suffix(".md"), text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
