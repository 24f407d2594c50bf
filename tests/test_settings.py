from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from mtl_paradigms.settings import SettingsError, from_json, from_mapping
from mtl_paradigms.train import TrainSettings


@dataclass(frozen=True)
class Example:
    rate: float = 0.1
    steps: int = 10
    names: list[str] = field(default_factory=lambda: ["a"])
    mode: Literal["x", "y"] = "x"
    flag: bool = False


def test_defaults_and_conversion() -> None:
    ex = from_mapping(Example, {"rate": 1, "names": ["p", "q"]})
    assert ex.rate == 1.0
    assert isinstance(ex.rate, float)
    assert ex.names == ["p", "q"]
    assert ex.steps == 10


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"rtae": 1.0}, r"unknown key\(s\) \['rtae'\]"),
        ({"steps": 1.5}, r"settings\.steps: expected an integer"),
        ({"steps": True}, r"settings\.steps: expected an integer"),
        ({"rate": "fast"}, r"settings\.rate: expected a number"),
        ({"names": "abc"}, r"settings\.names: expected a list"),
        ({"names": [1]}, r"settings\.names\[0\]: expected a string"),
        ({"mode": "z"}, r"settings\.mode: 'z' is not one of"),
        ({"flag": 1}, r"settings\.flag: expected true/false"),
    ],
)
def test_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_mapping(Example, data)


def test_from_json() -> None:
    assert from_json(Example, '{"steps": 3}').steps == 3
    assert from_json(Example, "").steps == 10
    with pytest.raises(SettingsError, match="not valid JSON"):
        from_json(Example, "{steps: 3}")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"lr": 0.0}, "train.lr"),
        ({"lr": float("nan")}, "train.lr"),
        ({"weight_decay": -1e-5}, "train.weight_decay"),
        ({"lr_gamma": float("inf")}, "train.lr_gamma"),
        ({"epochs": 0}, "train.epochs"),
        ({"batch_size": 0}, "train.batch_size"),
        ({"val_size": 0}, "train.val_size"),
        ({"tasks": ["segmentation", "albedo"]}, "train.tasks"),
        ({"tasks": []}, "train.tasks"),
        ({"dataset": "celeba", "augment": True}, "train.augment"),
        ({"compile_mode": "reduce-overhead"}, "train.compile_mode"),
        ({"compile": True, "task_jacobian": "batched"}, "train.compile"),
    ],
)
def test_bad_train_settings_are_refused_naming_the_key(values: dict, named: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(named)):
        TrainSettings(**values)
