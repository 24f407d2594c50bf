"""The throughput benchmark runs through the trainer's update path on the CPU (not timed)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def throughput(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("throughput")


@pytest.mark.slow
def test_throughput_writes_a_row_per_method_with_the_floor_ratio(throughput, tmp_path) -> None:
    throughput.main([
        "--device", "cpu", "--settings", "nyuv2_segnet", "--methods", "ew", "floor", "pcgrad",
        "--cpu-scale", "8", "--steps", "1", "--warmup", "0", "--out-dir", str(tmp_path),
    ])  # fmt: skip
    table = pd.read_csv(tmp_path / "throughput-cpu.csv")
    assert list(table.method) == ["ew", "floor", "pcgrad"]
    assert (table.ms_median > 0).all()
    assert (table.batch.tolist(), table.height.tolist()) == ([2] * 3, [36] * 3)  # 1/8 shapes
    assert "| nyuv2_segnet | pcgrad | fp32 |" in (tmp_path / "throughput-cpu.md").read_text()


def test_the_floor_computes_the_per_task_and_the_heads_gradients(throughput) -> None:
    # What every per-task-gradient method needs: T passes, each computing the gradients of
    # its head and of the shared parameters, no other head's (one pass per task's own loss).
    import torch

    setting = throughput.scaled(throughput.SETTINGS["nyuv2_segnet"], 8)
    settings = throughput.train_settings(setting, "ew", False, False)
    updater, tasks = throughput.build_updater(setting, settings, torch.device("cpu"))
    images, targets = throughput.random_batch(setting, tasks, torch.device("cpu"), False)
    floor = throughput.FloorStep(updater, tasks, batched=False)
    calls: list[str] = []
    for name, head in updater.model.heads.items():
        head.register_full_backward_hook(lambda *_, name=name: calls.append(name))
    floor.step(images, targets)
    assert sorted(calls) == sorted(tasks)
