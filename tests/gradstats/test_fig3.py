"""The Fig 3 experiment: its data, a short run of both setups, and the claims it feeds."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtl_paradigms.analysis.gradstats_claims import fig3_claims
from mtl_paradigms.cli import main
from mtl_paradigms.gradstats.fig3 import (
    Fig3Settings,
    make_subpopulation_data,
    split_targets,
)
from mtl_paradigms.settings import SettingsError

TINY = Fig3Settings(num_train=64, num_test=32, epochs=2, batch_size=16, every=2, channels=4)


def test_the_single_label_is_the_union_of_the_split_labels() -> None:
    settings = Fig3Settings()
    images, subpop, positive = make_subpopulation_data(
        settings, 200, torch.Generator().manual_seed(0)
    )
    assert images.shape == (200, 3, settings.image_size, settings.image_size)
    assert torch.bincount(subpop).tolist() == [50] * 4
    split = split_targets(subpop, positive, 4)
    union = torch.stack(list(split.values())).amax(dim=0)
    assert torch.equal(union, positive.float())
    assert (torch.stack(list(split.values())).sum(dim=0) <= 1).all()  # one task per sample
    assert 0.3 < positive.float().mean() < 0.7


def test_sub_populations_are_visually_distinct() -> None:
    """Each sub-population is told apart from the others by the nearest mean image."""
    settings = replace(Fig3Settings(), noise_std=0.0)
    g = torch.Generator().manual_seed(1)
    images, subpop, _ = make_subpopulation_data(settings, 400, g)
    # the mean colour per channel is a crude but sufficient descriptor of a style
    colour = images.mean(dim=(2, 3))
    centroids = torch.stack([colour[subpop == s].mean(0) for s in range(4)])
    nearest = torch.cdist(colour, centroids).argmin(dim=1)
    assert (nearest == subpop).float().mean() > 0.9


def test_a_short_run_gives_both_setups_statistics(tmp_path: Path) -> None:
    out, training_out = tmp_path / "fig3.csv", tmp_path / "training.csv"
    args = ["gradstats", "fig3", "--out", str(out), "--training", str(training_out)]
    assert main([*args, "--settings", json.dumps(asdict(TINY))]) == 0
    stats, training = pd.read_csv(out), pd.read_csv(training_out)
    assert set(stats["setup"]) == {"single", "split"}
    assert sorted(training["epoch"].unique()) == [1, 2]
    single = stats[stats["setup"] == "single"]
    assert set(single["comparison"]) == {"inter_sample", "task_vs_mean"}  # one task: no pairs
    split = stats[(stats["setup"] == "split") & (stats["comparison"] == "inter_task")]
    assert {"all", "own_vs_other", "other_vs_other"} <= set(split["pair_type"])
    types = set(single.loc[single["comparison"] == "inter_sample", "pair_type"])
    assert "cross_subpopulation/same_class" in types
    cosine = single[(single["statistic"] == "cosine") & (single["subset"] == "all")
                    & (single["variant"] == "pairwise")]  # fmt: skip
    pooled = cosine[cosine["pair_type"] == "all"].groupby("epoch")["n"].sum()
    parts = cosine[cosine["pair_type"] != "all"].groupby("epoch")["n"].sum()
    assert pooled.equals(parts)
    claims = fig3_claims(stats, training)
    assert len(claims) == 2
    assert all("split setup inter-task" in c.measured for c in claims)
    assert main([*args, "--settings", '{"subpopulations": 9}']) == 2


def test_settings_are_checked() -> None:
    with pytest.raises(SettingsError, match="subpopulations"):
        Fig3Settings(subpopulations=1)
    with pytest.raises(SettingsError, match="batch_size"):
        Fig3Settings(batch_size=1000, num_train=10)
