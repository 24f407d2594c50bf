"""Property tests of MGDA, IMTL-G, Aligned-MTL and GradDrop on sampled gradient matrices."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_spine_methods import sample_matrix

from mtl_paradigms.methods.aggregators import IMTLG, MGDA, AlignedMTL, GradDrop
from mtl_paradigms.methods.aggregators._simplex import (
    MAX_EXACT_TASKS,
    min_norm_weights,
    minimize_on_simplex,
)
from mtl_paradigms.methods.aggregators.mgda import _min_norm_by_supports, _quadratic
from mtl_paradigms.methods.base import gramian

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
F64 = torch.float64


def simplex_grid(n: int) -> torch.Tensor:
    """All points ``(i, j, n - i - j) / n`` of the 3-simplex."""
    pts = [
        (i / n, j / n, 1 - (i + j) / n)
        for i, j in itertools.product(range(n + 1), repeat=2)
        if i + j <= n
    ]
    return torch.tensor(pts, dtype=F64)


def sq_norm_of_combination(w: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...i,ij,...j->...", w, gram, w)


# --------------------------------------------------------------------------- MGDA


@given(seed=SEEDS, dim=st.integers(1, 10))
@settings(max_examples=40, deadline=None)
def test_mgda_two_task_weights_match_brute_force(seed: int, dim: int) -> None:
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    w = MGDA().task_weights(grads)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(6, dtype=F64))
    gram = gramian(grads)
    xs = torch.linspace(0, 1, 5001, dtype=F64)
    grid = torch.stack([xs, 1 - xs], -1)
    for i in range(grads.shape[0]):
        brute = sq_norm_of_combination(grid, gram[i]).min()
        found = sq_norm_of_combination(w[i], gram[i])
        assert found <= brute + 1e-12 * gram[i].abs().max()


@given(seed=SEEDS)
@settings(max_examples=8, deadline=None)
def test_mgda_three_task_weights_match_brute_force(seed: int) -> None:
    grads = sample_matrix(seed, batch=3, tasks=3, dim=5)
    w = MGDA().task_weights(grads)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, dtype=F64))
    gram = gramian(grads)
    grid = simplex_grid(300)
    for i in range(3):
        brute = sq_norm_of_combination(grid, gram[i]).min()
        found = sq_norm_of_combination(w[i], gram[i])
        # Exact support enumeration: no grid point does better.
        assert found <= brute + 1e-12 * gram[i].abs().max()


@given(seed=SEEDS, tasks=st.integers(2, 5), dim=st.integers(1, 10))
@settings(max_examples=30, deadline=None)
def test_mgda_direction_does_not_conflict_with_any_task(seed: int, tasks: int, dim: int) -> None:
    # Optimality of the min-norm point d: <g_t, d> >= |d|^2 for every task, hence >= 0.
    grads = sample_matrix(seed, batch=6, tasks=tasks, dim=dim)
    d = MGDA()(grads)
    dots = (grads @ d.unsqueeze(-1)).squeeze(-1)  # (batch, T)
    sq = (d * d).sum(-1, keepdim=True)
    scale = gramian(grads).abs().amax(dim=(-1, -2)).unsqueeze(-1)
    tol = 1e-10 * scale
    assert torch.all(dots >= sq - tol)


@given(seed=SEEDS, tasks=st.integers(3, 40), dim=st.integers(1, 60))
@settings(max_examples=40, deadline=None)
def test_wolfe_min_norm_point_is_certified_and_matches_the_exact_solver(
    seed: int, tasks: int, dim: int
) -> None:
    # Wolfe's algorithm (MGDA beyond MAX_EXACT_TASKS): feasible, first-order optimal, equal to
    # the support enumeration where that runs, and never worse than the iterative solver.
    # dim < tasks gives affinely dependent gradients (degenerate faces).
    grads = sample_matrix(seed, batch=2, tasks=tasks, dim=dim)
    gram = gramian(grads)
    w = min_norm_weights(gram)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, dtype=F64))
    scale = torch.diagonal(gram, dim1=-2, dim2=-1).amax(-1)
    value = _quadratic(w, gram)
    assert torch.all((gram @ w.unsqueeze(-1)).squeeze(-1).amin(-1) >= value - 1e-10 * scale)
    if tasks <= MAX_EXACT_TASKS:
        exact = _quadratic(_min_norm_by_supports(gram), gram)
        assert torch.all((value - exact).abs() <= 1e-10 * scale)
    else:
        iterative = minimize_on_simplex(lambda v: _quadratic(v, gram), gram, iterations=100)
        assert torch.all(value <= _quadratic(iterative, gram) + 1e-12 * scale)


def test_mgda_beyond_the_exact_limit_uses_wolfe() -> None:
    grads = sample_matrix(5, batch=2, tasks=MAX_EXACT_TASKS + 2, dim=12)
    torch.testing.assert_close(
        MGDA().task_weights(grads), min_norm_weights(gramian(grads)), rtol=0, atol=0
    )
    # degenerate: identical and zero gradients
    same = torch.ones(12, 5, dtype=F64)
    assert float(_quadratic(min_norm_weights(gramian(same)), gramian(same))) == pytest.approx(5.0)
    zero = torch.zeros(12, 5, dtype=F64)
    torch.testing.assert_close(min_norm_weights(gramian(zero)).sum(), torch.tensor(1.0, dtype=F64))


def test_mgda_hand_made_examples() -> None:
    # Orthogonal unit gradients: the midpoint. Collinear gradients: the shorter one.
    # An obtuse pair: the foot of the perpendicular from 0 onto the segment.
    grads = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [2.0, 0.0]], [[1.0, 0.0], [-1.0, 1.0]]],
        dtype=F64,
    )
    expected_w = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.6, 0.4]], dtype=F64)
    torch.testing.assert_close(MGDA().task_weights(grads), expected_w)
    expected_d = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.2, 0.4]], dtype=F64)
    torch.testing.assert_close(MGDA()(grads), expected_d)


@given(seed=SEEDS, tasks=st.integers(1, 5), dim=st.integers(1, 8))
@settings(max_examples=10, deadline=None)
def test_mgda_identical_gradients_give_their_mean(seed: int, tasks: int, dim: int) -> None:
    g = torch.randn(3, 1, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    grads = g.expand(3, tasks, dim)
    torch.testing.assert_close(MGDA()(grads), grads.mean(-2))


@given(seed=SEEDS, dim=st.integers(2, 10))
@settings(max_examples=30, deadline=None)
def test_mgda_two_tasks_of_equal_norm_get_equal_weights(seed: int, dim: int) -> None:
    # True for two tasks: the min-norm point of a segment between equal-norm ends is its
    # midpoint (an isosceles triangle with the origin).
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    grads = grads / grads.norm(dim=-1, keepdim=True)
    w = MGDA().task_weights(grads)
    torch.testing.assert_close(w, torch.full_like(w, 0.5))


def test_mgda_three_tasks_of_equal_norm_need_not_get_equal_weights() -> None:
    # Unit g1, g2 orthogonal and g3 their normalised bisector: the min-norm point is the
    # midpoint of g1 and g2 (norm 1/sqrt(2) < 1), so g3 gets weight zero.
    s = 2**-0.5
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]], dtype=F64)
    w = MGDA().task_weights(grads)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0], dtype=F64), atol=1e-6, rtol=0)


def test_mgda_validation() -> None:
    with pytest.raises(ValueError, match="iterations"):
        MGDA(iterations=0)
    with pytest.raises(ValueError, match="shape"):
        MGDA()(torch.ones(3))


# --------------------------------------------------------------------------- IMTL-G


@given(seed=SEEDS, tasks=st.integers(2, 5), extra=st.integers(0, 6))
@settings(max_examples=40, deadline=None)
def test_imtlg_projections_on_unit_gradients_are_equal(seed: int, tasks: int, extra: int) -> None:
    grads = sample_matrix(seed, batch=6, tasks=tasks, dim=tasks + extra)
    w = IMTLG().task_weights(grads)
    torch.testing.assert_close(w.sum(-1), torch.ones(6, dtype=F64))
    d = IMTLG()(grads)
    torch.testing.assert_close(d, (w.unsqueeze(-1) * grads).sum(-2))
    units = grads / grads.norm(dim=-1, keepdim=True)
    proj = (units @ d.unsqueeze(-1)).squeeze(-1)  # (batch, T)
    scale = grads.norm(dim=-1).amax(-1, keepdim=True)
    assert torch.all((proj - proj[:, :1]).abs() <= 1e-7 * scale)


@given(seed=SEEDS, dim=st.integers(2, 10))
@settings(max_examples=30, deadline=None)
def test_imtlg_two_tasks_of_equal_norm_get_equal_weights(seed: int, dim: int) -> None:
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    grads = 3.0 * grads / grads.norm(dim=-1, keepdim=True)
    w = IMTLG().task_weights(grads)
    torch.testing.assert_close(w, torch.full_like(w, 0.5))
    torch.testing.assert_close(IMTLG()(grads), grads.mean(-2))


@given(seed=SEEDS, tasks=st.integers(1, 5), dim=st.integers(1, 8))
@settings(max_examples=20, deadline=None)
def test_imtlg_identical_gradients_give_their_mean(seed: int, tasks: int, dim: int) -> None:
    # The weights sum to one, so IMTL-G is on the mean scale without a factor 1/T.
    g = torch.randn(3, 1, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    grads = g.expand(3, tasks, dim)
    torch.testing.assert_close(IMTLG()(grads), grads.mean(-2))


def test_imtlg_hand_made_example() -> None:
    # g1 = (1, 0), g2 = (0, 2): d = (a, 2 (1 - a)) with equal coordinates, a = 2/3.
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    torch.testing.assert_close(IMTLG().task_weights(grads), torch.tensor([2 / 3, 1 / 3], dtype=F64))
    torch.testing.assert_close(IMTLG()(grads), torch.tensor([2 / 3, 2 / 3], dtype=F64))


# --------------------------------------------------------------------------- Aligned-MTL


@given(seed=SEEDS, tasks=st.integers(2, 5), extra=st.integers(0, 6))
@settings(max_examples=40, deadline=None)
def test_aligned_mtl_aligned_gradients_are_orthonormal_up_to_scale(
    seed: int, tasks: int, extra: int
) -> None:
    grads = sample_matrix(seed, batch=6, tasks=tasks, dim=tasks + extra)
    eigvals = torch.linalg.eigvalsh(gramian(grads))
    for mode, sigma in [
        ("min", eigvals[:, 0]),
        ("rmse", eigvals.mean(-1)),
        ("median", eigvals.median(-1).values),
    ]:
        method = AlignedMTL(scale_mode=mode)
        aligned_gram = gramian(method.aligned_gradients(grads))
        # Condition number one: orthogonal rows, all of squared norm sigma.
        expected = sigma.view(-1, 1, 1) * torch.eye(tasks, dtype=F64)
        scale = eigvals[:, -1].view(-1, 1, 1)
        assert torch.all((aligned_gram - expected).abs() <= 1e-8 * scale)
        # The direction is the mean of the aligned gradients.
        torch.testing.assert_close(method(grads), method.aligned_gradients(grads).mean(-2))


@given(seed=SEEDS, dim=st.integers(1, 10), c=st.floats(0.01, 100.0))
@settings(max_examples=30, deadline=None)
def test_aligned_mtl_same_direction_two_tasks_give_the_mean(seed: int, dim: int, c: float) -> None:
    # Rank one: the kept eigenvector spans (1, c), B is its projector and leaves G unchanged.
    g = torch.randn(4, 1, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    grads = torch.cat([g, c * g], dim=-2)
    method = AlignedMTL()
    torch.testing.assert_close(method.aligned_gradients(grads), grads)
    torch.testing.assert_close(method(grads), grads.mean(-2))


@given(seed=SEEDS, dim=st.integers(2, 10))
@settings(max_examples=30, deadline=None)
def test_aligned_mtl_two_tasks_of_equal_norm_get_equal_weights(seed: int, dim: int) -> None:
    # (1, 1) is an eigenvector of an equal-diagonal 2x2 Gram matrix, so 1^T B is parallel to
    # it: equal weights (below 1/2 when the gradients agree, as the update is shrunk).
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    grads = grads / grads.norm(dim=-1, keepdim=True)
    w = AlignedMTL().task_weights(grads)
    torch.testing.assert_close(w[:, 0], w[:, 1])
    assert torch.all(w <= 0.5 + 1e-12)


def test_aligned_mtl_orthogonal_equal_norm_gradients_give_the_mean() -> None:
    grads = 2.0 * torch.eye(3, 4, dtype=F64)
    torch.testing.assert_close(AlignedMTL()(grads), grads.mean(-2))


def test_aligned_mtl_zero_gradients_give_zero() -> None:
    grads = torch.zeros(2, 3, 4, dtype=F64)
    torch.testing.assert_close(AlignedMTL()(grads), torch.zeros(2, 4, dtype=F64))


def test_aligned_mtl_validation() -> None:
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol"):
        AlignedMTL(rtol=-1.0)


# --------------------------------------------------------------------------- GradDrop


def test_graddrop_is_deterministic_for_a_seed_and_has_the_right_shape() -> None:
    grads = sample_matrix(3, batch=4, tasks=5, dim=7).view(2, 2, 5, 7)
    out = GradDrop(seed=1)(grads)
    assert out.shape == (2, 2, 7)
    torch.testing.assert_close(GradDrop(seed=1)(grads), out)
    assert not torch.equal(GradDrop(seed=2)(grads), out)


@given(seed=SEEDS, tasks=st.integers(1, 5), dim=st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_graddrop_keeps_one_sign_per_coordinate(seed: int, tasks: int, dim: int) -> None:
    grads = sample_matrix(seed, batch=6, tasks=tasks, dim=dim) if tasks > 1 else None
    if grads is None:
        grads = torch.randn(6, 1, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    out = GradDrop(seed=seed)(grads)
    pos_mean = grads.clamp_min(0).mean(-2)
    neg_mean = grads.clamp_max(0).mean(-2)
    assert torch.all((out == pos_mean) | (out == neg_mean))
    # Where every task agrees in sign (or is zero) the coordinate is the plain mean.
    agree = torch.all(grads >= 0, dim=-2) | torch.all(grads <= 0, dim=-2)
    torch.testing.assert_close(out[agree], grads.mean(-2)[agree])


def test_graddrop_keeps_positive_parts_with_probability_purity() -> None:
    grads = torch.tensor([[3.0, 1.0, 0.0], [-1.0, -1.0, 2.0]], dtype=F64)
    # Purity: (1 + 2/4) / 2 = 0.75, (1 + 0/2) / 2 = 0.5, 1 (agreement).
    method = GradDrop(seed=0)
    torch.testing.assert_close(method.purity(grads), torch.tensor([0.75, 0.5, 1.0], dtype=F64))
    kept_positive = (method(grads.expand(20000, 2, 3)) > 0).to(F64).mean(0)
    torch.testing.assert_close(
        kept_positive, torch.tensor([0.75, 0.5, 1.0], dtype=F64), atol=0.02, rtol=0
    )


@given(seed=SEEDS, tasks=st.integers(1, 5), dim=st.integers(1, 12))
@settings(max_examples=20, deadline=None)
def test_graddrop_full_leak_is_the_mean(seed: int, tasks: int, dim: int) -> None:
    grads = torch.randn(3, tasks, dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    torch.testing.assert_close(GradDrop(leak=1.0, seed=0)(grads), grads.mean(-2))


def test_graddrop_validation() -> None:
    with pytest.raises(ValueError, match="leak"):
        GradDrop(leak=1.5)
    with pytest.raises(ValueError, match="shape"):
        GradDrop()(torch.ones(3))


def test_graddrop_k_steepens_the_keep_function_and_p_drops_at_random() -> None:
    grads = torch.tensor([[1.0, -1.0, 3.0], [1.0, 3.0, -1.0]])
    plain = GradDrop().purity(grads)
    steep = GradDrop(k=2.0).purity(grads)
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.75, 0.75]))
    torch.testing.assert_close(steep, torch.tensor([1.0, 1.0, 1.0]))  # clipped at 1
    big = torch.randn(4, 20000, generator=torch.Generator().manual_seed(0))
    kept = GradDrop(p=0.25, seed=0).masks(big).float().mean().item()
    assert abs(kept - 0.75) < 0.01
    with pytest.raises(ValueError, match="graddrop: p"):
        GradDrop(p=1.0)
    with pytest.raises(ValueError, match="graddrop: k"):
        GradDrop(k=0.0)
