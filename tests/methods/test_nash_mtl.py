"""Nash-MTL: the bargaining condition, scale properties and the degenerate cases."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_spine_methods import sample_matrix

from mtl_paradigms.methods import NashMTL, make_method
from mtl_paradigms.methods.aggregators.nash_mtl import nash_bargaining_weights
from mtl_paradigms.methods.base import gramian

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
F64 = torch.float64


def bargaining_residual(alpha: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """``max_t |alpha_t <g_t, d> - 1|`` with ``d = sum_t alpha_t g_t``."""
    d = (alpha.unsqueeze(-2) @ grads).squeeze(-2)
    return ((grads @ d.unsqueeze(-1)).squeeze(-1) * alpha - 1).abs().amax(dim=-1)


@given(seed=SEEDS, tasks=st.integers(1, 8), extra=st.integers(0, 6), conflict=st.floats(0, 1))
@settings(max_examples=40, deadline=None)
def test_default_iterations_solve_the_bargaining_condition(
    seed: int, tasks: int, extra: int, conflict: float
) -> None:
    # More dimensions than tasks: the gradients are independent, so a solution exists.
    if tasks == 1:
        gen = torch.Generator().manual_seed(seed)
        grads = torch.randn(6, 1, 1 + extra, generator=gen, dtype=F64)
    else:
        grads = sample_matrix(seed, batch=6, tasks=tasks, dim=tasks + extra, conflict=conflict)
    alpha = NashMTL().bargaining_weights(grads)
    assert torch.all(alpha > 0)
    # Machine precision on well-conditioned problems; about 1e-6 where two gradients nearly
    # cancel (alpha in the hundreds), the rounding floor of the residual itself.
    assert torch.all(bargaining_residual(alpha, grads) < 1e-5)
    # |d|^2 = sum_t alpha_t <g_t, d> = T whatever the gradients' scale.
    d = (alpha.unsqueeze(-2) @ grads).squeeze(-2)
    expected = torch.full((6,), float(tasks), dtype=F64)
    torch.testing.assert_close(d.norm(dim=-1) ** 2, expected, rtol=1e-5, atol=0)


@given(seed=SEEDS, tasks=st.integers(2, 6), scale_exp=st.lists(st.floats(-3, 3), min_size=6))
@settings(max_examples=20, deadline=None)
def test_direction_is_invariant_to_per_task_gradient_scales(
    seed: int, tasks: int, scale_exp: list[float]
) -> None:
    grads = sample_matrix(seed, batch=4, tasks=tasks, dim=tasks + 3, conflict=0.3)
    scales = torch.tensor([10.0**e for e in scale_exp[:tasks]], dtype=F64)
    scaled = grads * scales.unsqueeze(-1)
    for method in (NashMTL(max_norm=0.0), NashMTL()):
        d_plain, w_plain = method.aggregate(grads)
        d_scaled, w_scaled = method.aggregate(scaled)
        # To the solver's accuracy (about 1e-6 relative where two gradients nearly cancel).
        torch.testing.assert_close(d_scaled, d_plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(w_scaled * scales, w_plain, rtol=1e-5, atol=1e-9)


def test_hand_made_orthogonal_example() -> None:
    # g1 = (2, 0), g2 = (0, 1): alpha_1 * 4 alpha_1 = 1 and alpha_2^2 = 1, d = (1, 1).
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    alpha = NashMTL().bargaining_weights(grads)
    torch.testing.assert_close(alpha, torch.tensor([0.5, 1.0], dtype=F64))
    # Unclipped: weights alpha / T, direction d / T.
    d, w = NashMTL(max_norm=0.0).aggregate(grads)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.5], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([0.5, 0.5], dtype=F64))
    # max_norm = 1 clips |d| = sqrt(2) to 1 before the factor 1/T.
    d, w = NashMTL().aggregate(grads)
    torch.testing.assert_close(d, torch.tensor([0.5, 0.5], dtype=F64) / math.sqrt(2))
    # A generous max_norm leaves it unchanged.
    torch.testing.assert_close(NashMTL(max_norm=10.0)(grads), torch.tensor([0.5, 0.5], dtype=F64))


@given(seed=SEEDS, tasks=st.integers(1, 6), max_norm=st.floats(0.01, 5.0))
@settings(max_examples=20, deadline=None)
def test_clipping_and_mean_scale(seed: int, tasks: int, max_norm: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(5, tasks, tasks + 2, generator=gen, dtype=F64)
    alpha = NashMTL().bargaining_weights(grads)
    d, w = NashMTL(max_norm=max_norm).aggregate(grads)
    expected_norm = min(math.sqrt(tasks), max_norm) / tasks
    torch.testing.assert_close(d.norm(dim=-1), torch.full((5,), expected_norm, dtype=F64))
    # The weights stay proportional to alpha.
    torch.testing.assert_close(w / w.sum(-1, keepdim=True), alpha / alpha.sum(-1, keepdim=True))


def test_zero_gradient_gets_weight_zero_and_the_others_are_solved_alone() -> None:
    grads = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=F64)
    alpha = NashMTL().bargaining_weights(grads)
    assert alpha[1] == 0
    alone = NashMTL().bargaining_weights(grads[[0, 2]])
    torch.testing.assert_close(alpha[[0, 2]], alone)


def test_no_common_descent_direction_gives_zero_weights() -> None:
    g = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    for grads in (torch.stack([g, -g]), torch.stack([g, -3 * g, torch.zeros(3, dtype=F64)])):
        d, w = NashMTL().aggregate(grads)
        assert torch.all(w == 0)
        assert torch.all(d == 0)


def test_identical_gradients_give_equal_weights_along_the_gradient() -> None:
    g = torch.tensor([1.0, 2.0], dtype=F64)
    alpha = NashMTL().bargaining_weights(torch.stack([g, g, g]))
    # alpha_t * |g|^2 * sum(alpha) = 1 with equal alpha: alpha = 1 / (|g| sqrt(T)).
    expected = 1 / (math.sqrt(5) * math.sqrt(3))
    torch.testing.assert_close(alpha, torch.full((3,), expected, dtype=F64))


def test_batched_call_equals_one_call_per_problem_and_keeps_dtype() -> None:
    grads = sample_matrix(7, batch=5, tasks=4, dim=6)
    d, w = NashMTL().aggregate(grads)
    for i in range(5):
        d_i, w_i = NashMTL().aggregate(grads[i])
        torch.testing.assert_close(d_i, d[i])
        torch.testing.assert_close(w_i, w[i])
    g32 = grads.float()
    d32, w32 = NashMTL().aggregate(g32)
    assert d32.dtype == torch.float32
    assert w32.dtype == torch.float32
    torch.testing.assert_close(w32, w.float(), rtol=1e-4, atol=1e-6)


def test_solver_function_and_validation() -> None:
    grads = sample_matrix(3, batch=2, tasks=3, dim=5, conflict=0.0)
    alpha = nash_bargaining_weights(gramian(grads))
    assert torch.all(bargaining_residual(alpha, grads) < 1e-8)
    # Zero iterations only give the starting point, which is not the solution: zero weights.
    assert torch.all(nash_bargaining_weights(gramian(grads), iterations=0) == 0)
    with pytest.raises(ValueError, match="iterations"):
        NashMTL(iterations=0)
    with pytest.raises(ValueError, match="max_norm"):
        NashMTL(max_norm=-1.0)
    with pytest.raises(ValueError, match="iterations"):
        nash_bargaining_weights(gramian(grads), iterations=-1)
    method = make_method("nash_mtl", {"iterations": 5, "max_norm": 0.0})
    assert isinstance(method, NashMTL)
    assert method.iterations == 5
