"""Where one training step's time goes (a profile, not a test).

    PYTHONPATH=src python benchmarks/profile_step.py --device cuda --setting nyuv2_deeplabv3 \\
        --method ew --bf16 --channels-last

Builds the step exactly as ``benchmarks/throughput.py`` does (the trainer's updater, or the
``floor`` pseudo-method), runs warm-up steps, then profiles ``--steps`` steps with
``torch.profiler``. It prints the wall time per step, the GPU kernel time per step and their
ratio (a step whose kernels fill well under its wall time is bound by the host: Python and
kernel launches, or synchronisations), and the operators with the most device time (or, on
the CPU, CPU time). ``--out`` also writes that report to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from pathlib import Path

import torch
from throughput import (  # benchmarks/throughput.py (the script's folder)
    FLOOR,
    METHODS,
    SETTINGS,
    FloorStep,
    build_updater,
    random_batch,
    scaled,
    train_settings,
)
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from mtl_paradigms.train import batched_jacobian, speed_flags


def report(args: argparse.Namespace) -> str:
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    setting = scaled(SETTINGS[args.setting], 1 if cuda else args.cpu_scale)
    switches = {
        "fused_optimizer": args.fused, "cudnn_benchmark": args.cudnn_benchmark,
        "compile": args.compile, "compile_mode": args.compile_mode,
    }  # fmt: skip
    settings = train_settings(
        setting, "ew" if args.method == FLOOR else args.method, args.bf16, args.channels_last,
        **switches,
    )  # fmt: skip
    with speed_flags(settings):
        updater, tasks = build_updater(setting, settings, device)
        step = (
            FloorStep(updater, tasks, batched=batched_jacobian(settings, device))
            if args.method == FLOOR
            else updater
        )
        images, targets = random_batch(setting, tasks, device, args.channels_last)
        for _ in range(args.warmup):
            step.step(images, targets)
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(args.steps):
                step.step(images, targets)
            sync()
            wall = (time.perf_counter() - start) / args.steps
    events = prof.key_averages()
    if cuda:
        # The kernels themselves (device events; not the operators that launched them, nor
        # user annotations such as the optimizer step's, which would count them twice).
        kernel = sum(
            e.self_device_time_total
            for e in prof.events()
            if e.device_type == DeviceType.CUDA and not e.is_user_annotation
        )
        kernel /= 1e3 * args.steps
        sort = "self_device_time_total"
    else:
        kernel = float("nan")
        sort = "self_cpu_time_total"
    lines = [
        f"# {args.setting} {args.method} bf16={args.bf16} channels_last={args.channels_last} "
        f"cudnn_benchmark={args.cudnn_benchmark} fused={args.fused} compile={args.compile} "
        f"({args.compile_mode}) on {device}",
        f"wall per step: {wall * 1e3:.1f} ms (under the profiler)",
    ]
    if cuda:
        lines.append(
            f"GPU kernel time per step: {kernel:.1f} ms ({kernel / (wall * 1e3):.0%} of the wall)"
        )
    lines += ["", events.table(sort_by=sort, row_limit=args.top, max_name_column_width=70)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--setting", default="nyuv2_deeplabv3", choices=list(SETTINGS))
    parser.add_argument("--method", default="ew", choices=[*METHODS, FLOOR])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--fused", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", choices=["default", "reduce-overhead"], default="default")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--top", type=int, default=25, help="operators listed")
    parser.add_argument("--cpu-scale", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    text = report(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
