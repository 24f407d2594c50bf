"""The trainer on a prepared CelebA-format folder: attribute tasks, official splits, the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl_paradigms.analysis.attributes import attribute_table
from mtl_paradigms.data.celeba import prepare_celeba
from mtl_paradigms.data.synthetic.celeba import SyntheticCelebASettings, write_synthetic_celeba
from mtl_paradigms.settings import SettingsError, from_mapping
from mtl_paradigms.train import TrainSettings, train


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("celeba")
    raw = write_synthetic_celeba(SyntheticCelebASettings(num_images=60), work / "raw")
    return prepare_celeba(raw, work / "prepared", size=32)


def settings(prepared: Path, **extra: object) -> TrainSettings:
    base = {
        "dataset": "celeba", "data_dir": str(prepared), "arch": "resnet18", "augment": False,
        "selection": "val_loss", "epochs": 2, "batch_size": 8, "eval_batch_size": 16,
        "device": "cpu", "lr": 1e-3,
    }  # fmt: skip
    return from_mapping(TrainSettings, {**base, **extra}, "train")


def test_celeba_run_reports_every_attribute(prepared: Path, tmp_path: Path) -> None:
    metrics = train(settings(prepared, tasks=["Smiling", "Male", "Noisy"]), tmp_path / "run")
    assert metrics["diverged"] is False
    assert set(metrics["test"]) == {
        f"{a}/{m}" for a in ("Smiling", "Male", "Noisy") for m in ("accuracy", "f1")
    }
    assert all(0 <= v <= 1 for v in metrics["test"].values())


def test_celeba_settings_are_checked(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="augment"):
        settings(prepared, augment=True)
    with pytest.raises(SettingsError, match="Bald"):
        train(settings(prepared, tasks=["Bald"]), tmp_path / "bad")


def test_attribute_table(prepared: Path, tmp_path: Path) -> None:
    records = []
    for method in ("ew", "uwo"):
        out = tmp_path / method
        train(settings(prepared, method=method, epochs=1), out)
        records.append(json.loads((out / "metrics.json").read_text()))
    table = attribute_table(records, ("ew", "adam"))
    assert list(table.columns)[1:] == ["ew (adam, lr 0.001, n=1)", "uwo (adam, lr 0.001, n=1)"]
    assert table["attribute"].iloc[-1] == "Δm vs ew (adam) (%)"
    assert table.iloc[-1, 1] == "+0.00 ± 0.00"  # the reference against itself
    assert len(table) == 13 + 3
    with pytest.raises(ValueError, match="reference"):
        attribute_table(records, ("uw", "adam"))
