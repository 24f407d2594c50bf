"""Tests of the CAGrad toy (Elich et al. 2024, Fig. 1 / Tables 1, A3). All runs here are short."""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_paradigms.analysis.claims import Claim
from mtl_paradigms.analysis.toy_report import loss_grid, plot_fig1, write_toy_tables
from mtl_paradigms.methods import make_method
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.toy.cagrad_toy import (
    EPS,
    NOT_REACHED,
    ToyResult,
    ToySettings,
    _HitTracker,
    adam_step,
    average_gradient,
    average_loss,
    convergence_table,
    gd_step,
    global_minimizer,
    iterations_to_reach,
    run_toy,
    task_gradients,
    task_losses,
    toy_claims,
)

F64 = torch.float64


def small_settings(**overrides: object) -> ToySettings:
    base: dict[str, object] = {
        "learning_rates": [1.0, 0.05, 0.001],
        "table1_learning_rates": [1.0, 0.001],
        "fig1_learning_rates": [1.0, 0.05, 0.001],
        "iterations": 300,
        "record_every": 1,
        "grid_size": 50,
    }
    base.update(overrides)
    return ToySettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def short_result() -> ToyResult:
    return run_toy(small_settings(iterations=2000, record_every=10), progress=False)


# ------------------------------------------------------------------------------------------
# Losses and gradients
# ------------------------------------------------------------------------------------------


def reference_losses(x1: float, x2: float) -> tuple[float, float]:
    """The spec's formulas with scalar ``math``, written independently of the module."""
    f1_log = math.log(max(abs(0.5 * (-x1 - 7) - math.tanh(-x2)), EPS)) + 6
    f2_log = math.log(max(abs(0.5 * (-x1 + 3) + math.tanh(-x2) + 2), EPS)) + 6
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = max(math.tanh(x2 / 2), 0.0)
    c2 = max(math.tanh(-x2 / 2), 0.0)
    return c1 * f1_log + c2 * f1_sq, c1 * f2_log + c2 * f2_sq


@pytest.mark.parametrize(
    "point", [(0.0, -2.0), (1.0, 2.0), (-8.5, 7.5), (9.0, 9.0), (-8.5, -5.0), (3.0, -10.0)]
)
def test_losses_match_scalar_formulas(point: tuple[float, float]) -> None:
    expected = reference_losses(*point)
    got = task_losses(torch.tensor(point, dtype=F64))
    torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=1e-14, atol=1e-14)
    assert float(average_loss(torch.tensor(point, dtype=F64))) == pytest.approx(sum(expected) / 2)


def test_losses_hand_checked_values() -> None:
    # x = (0, -2): lower region, c2 = tanh(1), both quadratic parts (49 + 3.6) / 10 - 20.
    f = task_losses(torch.tensor([0.0, -2.0], dtype=F64))
    assert f.tolist() == pytest.approx([math.tanh(1) * -14.74] * 2, rel=1e-14)
    assert f[0].item() == pytest.approx(-11.22590, abs=1e-5)
    # x2 = 0: both gates vanish.
    assert task_losses(torch.tensor([3.0, 0.0], dtype=F64)).tolist() == [0.0, 0.0]
    # Upper region: x = (1, 2), c1 = tanh(1); u1 = -4 + tanh(2), u2 = 3 - tanh(2).
    f = task_losses(torch.tensor([1.0, 2.0], dtype=F64))
    expected = [
        math.tanh(1) * (math.log(4 - math.tanh(2)) + 6),
        math.tanh(1) * (math.log(3 - math.tanh(2)) + 6),
    ]
    assert f.tolist() == pytest.approx(expected, rel=1e-14)
    # On the kink u1 = 0 the logarithm is clamped at log(EPS).
    x1 = 2 * math.tanh(1.0) - 7
    f1 = task_losses(torch.tensor([x1, 1.0], dtype=F64))[0].item()
    assert f1 == pytest.approx(math.tanh(0.5) * (math.log(EPS) + 6), rel=1e-12)


def test_losses_batched_shapes() -> None:
    x = torch.zeros(4, 3, 2, dtype=F64)
    assert task_losses(x).shape == (4, 3, 2)
    assert average_loss(x).shape == (4, 3)
    assert task_gradients(x).shape == (4, 3, 2, 2)
    assert average_gradient(x).shape == (4, 3, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        task_losses(torch.zeros(3, dtype=F64))


def autograd_task_gradients(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    f = task_losses(x)
    rows = [torch.autograd.grad(f[..., t].sum(), x, retain_graph=True)[0] for t in range(2)]
    return torch.stack(rows, dim=-2)


def test_gradients_match_autograd_on_seeded_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(20000, 2, generator=gen, dtype=F64) - 0.5) * 30
    special = torch.tensor(
        [[0.0, 0.0], [5.0, 0.0], [2 * math.tanh(1.0) - 7, 1.0], [-8.5, 7.5], [9.0, 9.0]],
        dtype=F64,
    )
    x = torch.cat([x, special, global_minimizer()[None]])
    torch.testing.assert_close(task_gradients(x), autograd_task_gradients(x), rtol=1e-9, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-30, 30, allow_nan=False, allow_infinity=False),
    st.floats(-30, 30, allow_nan=False, allow_infinity=False),
)
def test_gradients_match_autograd_hypothesis(x1: float, x2: float) -> None:
    x = torch.tensor([[x1, x2]], dtype=F64)
    torch.testing.assert_close(task_gradients(x), autograd_task_gradients(x), rtol=1e-9, atol=1e-9)


def test_global_minimizer() -> None:
    x_star = global_minimizer()
    assert x_star.dtype == F64
    assert x_star.tolist() == pytest.approx([0.0, -8.3552], abs=1e-3)
    assert float(average_gradient(x_star).norm()) < 1e-10
    _, _, grid = loss_grid(200, 11.0)
    assert float(average_loss(x_star)) <= grid.min()


# ------------------------------------------------------------------------------------------
# Optimiser steps
# ------------------------------------------------------------------------------------------


def test_gd_step_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 2, generator=gen, dtype=F64)
    d = torch.randn(5, 2, generator=gen, dtype=F64)
    lr = torch.tensor([10.0, 1.0, 0.1, 0.01, 0.001], dtype=F64)[:, None]
    expected = x - lr * d
    gd_step(x, d, lr)
    assert torch.equal(x, expected)


def test_adam_step_equals_torch_adam() -> None:
    gen = torch.Generator().manual_seed(2)
    lrs = [1.0, 0.05, 0.001]
    betas, eps = (0.9, 0.999), 1e-8
    x = torch.randn(3, 2, generator=gen, dtype=F64)
    refs = [x[i].clone().requires_grad_(True) for i in range(3)]
    opts = [
        torch.optim.Adam([p], lr=lr, betas=betas, eps=eps, foreach=False)
        for p, lr in zip(refs, lrs, strict=True)
    ]
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    lr = torch.tensor(lrs, dtype=F64)[:, None]
    for step in range(1, 301):
        g = torch.randn(3, 2, generator=gen, dtype=F64) * 10.0 ** torch.randint(-6, 3, (1,)).item()
        adam_step(x, g, m, v, step, lr, betas, eps)
        for i, (p, opt) in enumerate(zip(refs, opts, strict=True)):
            p.grad = g[i].clone()
            opt.step()
    torch.testing.assert_close(x, torch.stack([p.detach() for p in refs]), rtol=1e-13, atol=0)


def reference_run(settings: ToySettings) -> np.ndarray:
    """One point at a time with torch.optim.Adam or a plain GD update (analytic gradients: the
    trajectories pass near the logarithm's kink, where the dynamics amplify differences in the
    last bit, so autograd's gradients are compared separately, point-wise)."""
    paths = np.empty((*_shape(settings), settings.iterations + 1, 2))
    for m, name in enumerate(settings.methods):
        method = make_method(name, {"c": settings.cagrad_c} if name == "cagrad" else None)
        for o, opt_name in enumerate(settings.optimizers):
            for i, lr in enumerate(settings.learning_rates):
                for s, start in enumerate(settings.start_points):
                    p = torch.tensor(start, dtype=F64, requires_grad=True)
                    opt = torch.optim.Adam(
                        [p], lr=lr, betas=tuple(settings.adam_betas), eps=settings.adam_eps
                    )
                    paths[m, o, i, s, 0] = start
                    for k in range(settings.iterations):
                        direction = method(task_gradients(p.detach()))
                        if opt_name == "adam":
                            p.grad = direction
                            opt.step()
                        else:
                            with torch.no_grad():
                                p -= lr * direction
                        paths[m, o, i, s, k + 1] = p.detach().numpy()
    return paths


def _shape(s: ToySettings) -> tuple[int, int, int, int]:
    return (len(s.methods), len(s.optimizers), len(s.learning_rates), len(s.start_points))


def test_run_matches_per_point_reference_with_torch_optimizers() -> None:
    s = small_settings(
        learning_rates=[0.5, 0.01],
        table1_learning_rates=[0.5],
        fig1_learning_rates=[0.5],
        iterations=200,
    )
    result = run_toy(s, progress=False)
    assert result.trajectories.shape == (*_shape(s), 201, 2)
    np.testing.assert_allclose(result.trajectories, reference_run(s), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Bookkeeping of the run
# ------------------------------------------------------------------------------------------


def test_hit_tracker_first_hit_and_settled() -> None:
    xstar = torch.zeros(2, dtype=F64)
    far, near, nan = [5.0, 0.0], [0.01, 0.0], [math.nan, 0.0]
    per_element = [
        [far, far, near, far, near],  # in at 2, out at 3, in from 4 on
        [far, far, far, far, far],  # never
        [near, near, near, near, near],  # in from the start
        [far, near, far, far, nan],  # in at 1, ends outside (NaN counts as outside)
    ]
    path = torch.tensor(per_element, dtype=F64).transpose(0, 1)  # (iterations + 1, B, 2)
    tracker = _HitTracker(path[0], xstar, tolerance=0.05)
    tracker.update(path[1:3], offset=1)  # a chunk boundary inside the run
    tracker.update(path[3:], offset=3)
    assert tracker.first_hit.tolist() == [2, -1, 0, 1]
    assert tracker.settled(path[-1]).tolist() == [4, -1, 0, -1]


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_first_hit_matches_trajectory(chunk: int) -> None:
    s = small_settings(iterations=150, learning_rates=[1.0, 0.05, 0.001], methods=["ew", "cagrad"])
    result = run_toy(s, progress=False, chunk=chunk)
    dist = np.linalg.norm(result.trajectories - result.minimizer, axis=-1)  # every iteration
    inside = dist <= s.tolerance
    expected_first = np.where(inside.any(-1), inside.argmax(-1), -1)
    np.testing.assert_array_equal(result.first_hit, expected_first)
    outside = ~inside
    last_out = np.where(outside.any(-1), s.iterations - outside[..., ::-1].argmax(-1), -1)
    expected_settled = np.where(inside[..., -1], last_out + 1, -1)
    np.testing.assert_array_equal(result.settled, expected_settled)
    assert (result.first_hit >= 0).any()  # something reached within 150 iterations
    assert (result.first_hit < 0).any()  # and something did not
    np.testing.assert_array_equal(result.final_points, result.trajectories[..., -1, :])


def test_start_at_minimum_hits_at_zero() -> None:
    x_star = global_minimizer().tolist()
    s = small_settings(start_points=[x_star, [9.0, 9.0]], optimizers=["gd"], iterations=20)
    result = run_toy(s, progress=False)
    assert (result.first_hit[..., 0] == 0).all()
    assert (result.settled[..., 0] == 0).all()
    assert (result.first_hit[..., 1] == -1).all()


def test_recording_every_k_includes_final_point() -> None:
    s = small_settings(iterations=25, record_every=10)
    result = run_toy(s, progress=False)
    assert result.trajectory_steps.tolist() == [0, 10, 20, 25]
    np.testing.assert_array_equal(result.trajectories[..., -1, :], result.final_points)
    full = run_toy(small_settings(iterations=25, record_every=1), progress=False)
    np.testing.assert_array_equal(full.trajectories[..., [0, 10, 20, 25], :], result.trajectories)
    np.testing.assert_allclose(result.final_loss, average_loss(torch.tensor(result.final_points)))


def test_run_is_deterministic() -> None:
    s = small_settings(iterations=200)
    a, b = run_toy(s, progress=False), run_toy(s, progress=False)
    for name in ToyResult.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_save_load_round_trip(tmp_path, short_result: ToyResult) -> None:
    path = short_result.save(tmp_path / "toy.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["toy.npz"]  # no temporary file left
    with np.load(path) as data:
        assert "meta" in data.files
    loaded = ToyResult.load(path)
    assert loaded.settings == short_result.settings
    for field in ("methods", "optimizers", "learning_rates", "start_points"):
        assert getattr(loaded, field) == getattr(short_result, field)
    for name in ToyResult.ARRAY_FIELDS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(short_result, name))
    again = loaded.save(tmp_path / "again.npz")
    assert again.read_bytes() == path.read_bytes()  # reproducible bytes


# ------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------


def test_default_settings() -> None:
    s = ToySettings()
    assert s.learning_rates == [10, 5, 1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001]
    assert s.optimizers == ["gd", "adam"]
    assert s.methods == ["ew", "pcgrad", "cagrad"]
    assert s.start_points == [[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]]
    assert (s.iterations, s.record_every, s.grid_size, s.grid_limit) == (100000, 10, 500, 11.0)
    assert s.tolerance > 0
    round_trip = ToySettings.from_mapping(json.loads(s.to_json()))
    assert round_trip == s


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"optimizers": ["sgd"]}, "optimizers"),
        ({"optimizers": []}, "optimizers"),
        ({"methods": ["no_such_method"]}, "methods"),
        ({"methods": ["uwo"]}, "methods"),  # a loss weighting, not an aggregator
        ({"learning_rates": [1.0, 0.0], "table1_learning_rates": [1.0]}, "learning_rates"),
        ({"learning_rates": [1.0, -0.1], "table1_learning_rates": [1.0]}, "learning_rates"),
        ({"learning_rates": [1.0, 1.0]}, "learning_rates"),
        ({"iterations": 0}, "iterations"),
        ({"iterations": 10.5}, "iterations"),
        ({"tolerance": 0.0}, "tolerance"),
        ({"record_every": 0}, "record_every"),
        ({"cagrad_c": -1.0}, "cagrad_c"),
        ({"start_points": [[1.0, 2.0, 3.0]]}, "start_points"),
        ({"start_points": []}, "start_points"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas"),
        ({"grid_size": 1}, "grid_size"),
        ({"fig1_learning_rates": [0.3]}, "fig1_learning_rates"),
        ({"table1_learning_rates": [10.0]}, "table1_learning_rates"),
        ({"learning_rates": "fast"}, "learning_rates"),
    ],
)
def test_settings_validation(overrides: dict[str, object], field: str) -> None:
    base = dataclasses.asdict(small_settings())
    base.update(overrides)
    with pytest.raises(ValueError, match=field):
        ToySettings(**base)


def test_settings_from_mapping_rejects_unknown_keys_and_types() -> None:
    with pytest.raises(SettingsError, match="learning_rate"):
        ToySettings.from_mapping({"learning_rate": [0.1]})
    with pytest.raises(SettingsError, match="iterations"):
        ToySettings.from_mapping({"iterations": "many"})
    assert ToySettings.from_mapping({"iterations": 5}).iterations == 5


# ------------------------------------------------------------------------------------------
# Tables, claims and figures
# ------------------------------------------------------------------------------------------


def test_convergence_table_format(short_result: ToyResult) -> None:
    result = dataclasses.replace(short_result, first_hit=np.full_like(short_result.first_hit, 7))
    m, o, i = result.index("ew", "adam", 0.001)
    result.first_hit[m, o, i, 1] = -1  # one start point never reached
    result.first_hit[result.index("cagrad", "gd", 1.0)] = [3, 12, 5]
    table = convergence_table(result, [1.0, 0.001])
    assert list(table.columns) == ["optimizer", "method", "1", "0.001"]
    rows = list(zip(table["optimizer"], table["method"], strict=True))
    assert rows == [
        ("GD", "EW"),
        ("GD", "PCGrad"),
        ("GD", "CAGrad"),
        ("Adam", "EW"),
        ("Adam", "PCGrad"),
        ("Adam", "CAGrad"),
    ]
    assert table.loc[3, "0.001"] == NOT_REACHED
    assert table.loc[2, "1"] == 12  # max over start points
    assert table.loc[5, "0.001"] == 7
    with pytest.raises(ValueError, match="not part of this run"):
        convergence_table(result, [0.5])
    settled = convergence_table(short_result, [1.0], criterion="settled")
    assert settled.shape == (6, 3)


def test_iterations_to_reach(short_result: ToyResult) -> None:
    with pytest.raises(KeyError):
        iterations_to_reach(short_result, "ew", "adam", 0.123)
    with pytest.raises(ValueError, match="criterion"):
        iterations_to_reach(short_result, "ew", "adam", 0.001, "sometime")  # type: ignore[arg-type]


def _with_hits(result: ToyResult, hits: dict[tuple[str, str, float], list[int]]) -> ToyResult:
    first = np.full_like(result.first_hit, -1)
    for key, values in hits.items():
        first[result.index(*key)] = values
    return dataclasses.replace(result, first_hit=first, settled=first.copy())


def test_toy_claims_are_computed_from_data(short_result: ToyResult) -> None:
    claims = toy_claims(short_result)
    assert len(claims) == 2
    assert all(isinstance(c, Claim) and c.stage == "toy" for c in claims)
    assert all(isinstance(c.reproduced, bool) and c.measured for c in claims)

    paper_like = _with_hits(
        short_result,
        {
            ("ew", "adam", 0.001): [-1, 900, -1],
            ("cagrad", "adam", 0.001): [1500, 800, 1700],
            ("ew", "gd", 0.05): [40, 90, 60],
        },
    )
    a, b = toy_claims(paper_like)
    assert a.reproduced
    assert b.reproduced
    assert "GD lr 0.05" in b.measured
    assert "90" in b.measured

    contrary = _with_hits(
        short_result,
        {("ew", "adam", 0.001): [10, 20, 30], ("cagrad", "adam", 0.001): [-1, 5, 5]},
    )
    a, b = toy_claims(contrary)
    assert not a.reproduced
    assert not b.reproduced

    no_adam = run_toy(small_settings(optimizers=["gd"], iterations=5), progress=False)
    assert not toy_claims(no_adam)[0].reproduced


def test_plot_fig1_and_tables_write_files(tmp_path, short_result: ToyResult) -> None:
    fig = plot_fig1(short_result, tmp_path / "fig1")
    assert len(fig.axes) == 12
    plt.close(fig)
    for suffix in (".pdf", ".png"):
        assert (tmp_path / f"fig1{suffix}").stat().st_size > 0
    paths = write_toy_tables(short_result, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"{stem}{ext}" for stem in ("table1", "tableA3") for ext in (".csv", ".md", ".tex")
    )
    assert all(p.stat().st_size > 0 for p in paths)
    md = (tmp_path / "table1.md").read_text(encoding="utf-8")
    assert f"{short_result.settings.tolerance:g}" in md
    assert str(short_result.settings.iterations) in md


def test_plot_fig1_without_stem_marks_missing_panels() -> None:
    result = run_toy(
        small_settings(methods=["ew"], optimizers=["adam"], iterations=5), progress=False
    )
    fig = plot_fig1(result)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts.count("not run") == 9  # GD row and column set, CAGrad row
    plt.close(fig)
