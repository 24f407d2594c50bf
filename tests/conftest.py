"""Fixtures shared across the test folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mtl_paradigms.data.synthetic.scenes import SyntheticSettings, write_synthetic_mtan


@pytest.fixture(scope="module")
def tiny_nyuv2(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int], Path]:
    """``tiny_nyuv2(num_train)``: a synthetic NYUv2-format folder of 32 x 32 scenes (8 of them
    in the validation split), written once per module and size."""
    made: dict[int, Path] = {}

    def make(num_train: int) -> Path:
        if num_train not in made:
            out = tmp_path_factory.mktemp("data") / "nyuv2"
            settings = SyntheticSettings(
                dataset="nyuv2", num_train=num_train, num_val=8, height=32, width=32
            )
            write_synthetic_mtan(settings, out)
            made[num_train] = out
        return made[num_train]

    return make
