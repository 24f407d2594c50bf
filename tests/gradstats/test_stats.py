"""Pair statistics on constructed gradients, against hand-computed values and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mtl_paradigms.gradstats import SUMMARY_COLUMNS
from mtl_paradigms.gradstats.stats import (
    gradient_statistics,
    gram,
    interference_from_gram,
    opposite_sign_counts,
    summarise,
)


def pair(stats: pd.DataFrame, comparison: str, variant: str, fixed: int, a: int, b: int):
    rows = stats[
        (stats["comparison"] == comparison)
        & (stats["variant"] == variant)
        & (stats["fixed"] == fixed)
        & (stats["first"] == a)
        & (stats["second"] == b)
    ]
    assert len(rows) == 1
    return rows.iloc[0].to_dict()


CONSTRUCTED = torch.tensor(
    [
        [[1.0, 0, 0, 0], [0, 1, 0, 0], [-1, 0, 0, 0]],  # sample 0: orthogonal, opposite
        [[2.0, 0, 0, 0], [0, -1, 1, 0], [1, 1, 1, 1]],  # sample 1: task 0 a scaled copy
    ],
    dtype=torch.float64,
)


def test_orthogonal_opposite_and_scaled_copies() -> None:
    pairs = gradient_statistics(CONSTRUCTED).pairs
    orthogonal = pair(pairs, "inter_task", "pairwise", 0, 0, 1)
    assert orthogonal | {"cosine": 0, "magnitude": 1, "conflict": 0, "dot": 0} == orthogonal
    opposite = pair(pairs, "inter_task", "pairwise", 0, 0, 2)
    assert opposite["cosine"] == pytest.approx(-1)
    assert opposite["magnitude"] == pytest.approx(1)
    assert opposite["conflict"] == pytest.approx(1 / 4)  # one of four coordinates
    assert opposite["dot"] == pytest.approx(-1)
    scaled = pair(pairs, "inter_sample", "pairwise", 0, 0, 1)  # task 0: g and 2g
    assert scaled["cosine"] == pytest.approx(1)
    assert scaled["magnitude"] == pytest.approx(2 * 1 * 2 / (1 + 4))
    assert scaled["conflict"] == 0
    assert scaled["dot"] == pytest.approx(2)
    mixed = pair(pairs, "inter_sample", "pairwise", 1, 0, 1)  # [0,1,0,0] vs [0,-1,1,0]
    assert mixed["cosine"] == pytest.approx(-1 / math.sqrt(2))
    assert mixed["magnitude"] == pytest.approx(2 * math.sqrt(2) / 3)
    assert mixed["conflict"] == pytest.approx(1 / 4)
    counts = pairs.groupby(["comparison", "variant"]).size().to_dict()
    assert counts == {
        ("inter_sample", "pairwise"): 3 * 1,  # T tasks x N(N-1)/2
        ("inter_task", "pairwise"): 2 * 3,  # N samples x T(T-1)/2
        ("inter_sample", "averaged"): 1,
        ("inter_task", "averaged"): 3,
    }


def brute_force(g: np.ndarray) -> dict[tuple, tuple[float, float, float, float]]:
    def stats(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return (
            float(a @ b / (na * nb)),
            float(2 * na * nb / (na**2 + nb**2)),
            float(np.mean(np.sign(a) * np.sign(b) < 0)),
            float(a @ b),
        )

    n, t, _ = g.shape
    out = {}
    for i in range(n):
        for a, b in itertools.combinations(range(t), 2):
            out["inter_task", "pairwise", i, a, b] = stats(g[i, a], g[i, b])
    for k in range(t):
        for a, b in itertools.combinations(range(n), 2):
            out["inter_sample", "pairwise", k, a, b] = stats(g[a, k], g[b, k])
    per_sample, per_task = g.mean(axis=1), g.mean(axis=0)
    for a, b in itertools.combinations(range(n), 2):
        out["inter_sample", "averaged", -1, a, b] = stats(per_sample[a], per_sample[b])
    for a, b in itertools.combinations(range(t), 2):
        out["inter_task", "averaged", -1, a, b] = stats(per_task[a], per_task[b])
    return out


def test_every_pair_matches_brute_force_on_random_gradients() -> None:
    g = torch.randn(5, 4, 37, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g[0, 1, :5] = 0  # exact zeros: not counted as conflicting
    result = gradient_statistics(g, chunk=8)  # several Gram chunks
    expected = brute_force(g.numpy())
    assert len(result.pairs) == len(expected)
    for row in result.pairs.itertuples(index=False):
        key = (row.comparison, row.variant, row.fixed, row.first, row.second)
        np.testing.assert_allclose(
            (row.cosine, row.magnitude, row.conflict, row.dot), expected[key], rtol=1e-10
        )
    mean = g.mean(dim=0).numpy()
    avg = mean.mean(axis=0)
    cos = [m @ avg / (np.linalg.norm(m) * np.linalg.norm(avg)) for m in mean]
    assert result.interference == pytest.approx(float(np.mean(cos)), rel=1e-10)


def test_interference_of_identical_and_opposite_tasks() -> None:
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    assert interference_from_gram(gram(same)) == pytest.approx(1.0)
    orthogonal = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert interference_from_gram(gram(orthogonal)) == pytest.approx(1 / math.sqrt(2))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # the mean gradient is zero
    assert math.isnan(interference_from_gram(gram(opposite)))


def test_gram_is_exact_over_chunks() -> None:
    a = torch.randn(6, 1000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(gram(a, chunk=7), (a.double() @ a.double().T), rtol=1e-5, atol=1e-3)
    signs = torch.sign(a)
    expected = ((signs[:, None, :] * signs[None, :, :]) < 0).sum(-1).double()
    assert torch.equal(opposite_sign_counts(a, chunk=13), expected)


def test_a_zero_gradient_has_no_cosine_and_is_left_out_of_the_summary() -> None:
    g = torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]], [[1.0, -1.0]]])  # 3 samples, 1 task
    pairs = gradient_statistics(g).pairs
    zero = pair(pairs, "inter_sample", "pairwise", 0, 0, 1)
    assert math.isnan(zero["cosine"])
    assert zero["magnitude"] == 0
    summary = summarise(pairs, keys={"epoch": 1})
    rows = summary[
        (summary["comparison"] == "inter_sample")
        & (summary["variant"] == "pairwise")
        & (summary["subset"] == "all")
    ].set_index("statistic")
    assert rows.loc["cosine", "n"] == 1  # only (0, 2) has two non-zero gradients
    assert rows.loc["cosine", "mean"] == 0
    assert rows.loc["magnitude", "n"] == 3
    assert rows.loc["magnitude", "mean"] == pytest.approx(1 / 3)


def test_summary_rows_match_numpy() -> None:
    values = np.array([-0.9, -0.2, 0.1, 0.4, 0.5, 0.8])
    pairs = pd.DataFrame(
        {
            "comparison": "inter_task", "variant": "pairwise", "fixed": 0,
            "first": 0, "second": 1, "cosine": values, "magnitude": values + 1,
            "conflict": values / 10, "dot": values * 3,
        }
    )  # fmt: skip
    summary = summarise(pairs, [0.5, 0.7], keys={"epoch": 4})
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert len(summary) == 3 * 4 + 1  # subsets x statistics + interference
    for subset, mask in (
        ("all", values == values),
        ("positive", values > 0),
        ("negative", values < 0),
    ):
        row = summary[(summary["statistic"] == "magnitude") & (summary["subset"] == subset)]
        v = values[mask] + 1
        assert row["n"].item() == len(v)
        assert row["mean"].item() == pytest.approx(v.mean())
        assert row["std"].item() == pytest.approx(v.std())
        assert row["p2_5"].item() == pytest.approx(np.percentile(v, 2.5))
        assert row["p97_5"].item() == pytest.approx(np.percentile(v, 97.5))
    inter = summary[summary["statistic"] == "interference"].iloc[0]
    assert (inter["comparison"], inter["n"], inter["mean"]) == (
        "task_vs_mean",
        2,
        pytest.approx(0.6),
    )
    assert (summary["epoch"] == 4).all()
