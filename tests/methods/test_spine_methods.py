"""Property tests of EW, PCGrad, CAGrad and UW-O on sampled gradient matrices."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mtl_paradigms.methods import EW, UWO, CAGrad, FixedWeights, PCGrad, make_method
from mtl_paradigms.methods.aggregators._simplex import project_to_simplex
from mtl_paradigms.methods.aggregators.cagrad import (
    _cagrad_active_set,
    _cagrad_by_supports,
    _cagrad_face,
    _cagrad_iterative,
    _cagrad_objective,
)
from mtl_paradigms.methods.base import gramian

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


def sample_matrix(
    seed: int, batch: int, tasks: int, dim: int, conflict: float = 0.5
) -> torch.Tensor:
    """Random gradient matrices, part of them with strongly conflicting rows."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(batch, tasks, dim, generator=gen, dtype=torch.float64)
    scales = torch.exp(torch.randn(batch, tasks, 1, generator=gen, dtype=torch.float64))
    grads = grads * scales
    flip = torch.rand(batch, generator=gen) < conflict
    grads[flip, 1] = -0.8 * grads[flip, 0] + 0.1 * grads[flip, 1]
    return grads


@given(seed=SEEDS, tasks=st.integers(1, 6), dim=st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_ew_weighting_and_aggregator_agree(seed: int, tasks: int, dim: int) -> None:
    # Back-propagating the EW-combined loss equals aggregating per-task gradients with EW.
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(tasks, dim, generator=gen, dtype=torch.float64)
    x = torch.randn(dim, generator=gen, dtype=torch.float64, requires_grad=True)
    losses = (a @ x) ** 2
    (combined_grad,) = torch.autograd.grad(EW().combine(losses), x, retain_graph=True)
    per_task = torch.stack([torch.autograd.grad(loss, x, retain_graph=True)[0] for loss in losses])
    torch.testing.assert_close(EW()(per_task), combined_grad)
    torch.testing.assert_close(EW().weights(losses).sum(), torch.tensor(1.0, dtype=torch.float64))


@given(seed=SEEDS, dim=st.integers(2, 12))
@settings(max_examples=60, deadline=None)
def test_pcgrad_two_tasks_removes_conflict(seed: int, dim: int) -> None:
    grads = sample_matrix(seed, batch=8, tasks=2, dim=dim)
    g1, g2 = grads[:, 0], grads[:, 1]
    out = PCGrad()(grads)
    dot = (g1 * g2).sum(-1)
    # Each projected gradient is orthogonal to the other task's gradient when they conflicted,
    # so the mean has a non-negative inner product with both task gradients.
    tol = 1e-9 * (g1.norm(dim=-1) * g2.norm(dim=-1) + 1)
    assert torch.all((out * g1).sum(-1) >= -tol)
    assert torch.all((out * g2).sum(-1) >= -tol)
    # Where there is no conflict PCGrad is the mean gradient.
    agree = dot >= 0
    torch.testing.assert_close(out[agree], grads[agree].mean(-2))


def test_pcgrad_hand_made_example() -> None:
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    # g1 . g2 = -1: g1' = g1 + 0.5 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1).
    expected = torch.tensor([0.25, 0.75], dtype=torch.float64)
    torch.testing.assert_close(PCGrad()(grads), expected)


def _pcgrad_by_projection(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """PCGrad as the paper writes it: sequential projections of D-vectors."""
    sq_norms = (grads * grads).sum(-1)
    projected = []
    for i, others in enumerate(orders):
        g_i = grads[..., i, :]
        for j in others:
            g_j = grads[..., j, :]
            dot = (g_i * g_j).sum(-1, keepdim=True)
            norm_j = sq_norms[..., j : j + 1]
            g_i = g_i - torch.where((dot < 0) & (norm_j > 0), dot / norm_j, 0.0) * g_j
        projected.append(g_i)
    return torch.stack(projected, dim=-2).mean(-2)


@given(seed=SEEDS, tasks=st.integers(2, 7), dim=st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_pcgrad_in_gram_space_equals_the_sequential_projections(
    seed: int, tasks: int, dim: int
) -> None:
    grads = sample_matrix(seed, batch=3, tasks=tasks, dim=dim)
    grads[0, -1] = 0.0  # a zero gradient is never projected against
    # the same random orders: same seed, and the reference is handed the drawn orders
    orders = PCGrad(seed=seed).projection_orders(tasks)
    direction, weights = PCGrad(seed=seed).aggregate(grads)
    expected = _pcgrad_by_projection(grads, orders)
    torch.testing.assert_close(direction, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(direction, (weights.unsqueeze(-1) * grads).sum(-2))
    torch.testing.assert_close(PCGrad()(torch.ones(1, 4)), torch.ones(4))  # one task: itself


def test_pcgrad_is_deterministic_for_a_seed() -> None:
    grads = sample_matrix(3, batch=4, tasks=5, dim=7)
    torch.testing.assert_close(PCGrad(seed=1)(grads), PCGrad(seed=1)(grads))


@given(seed=SEEDS, tasks=st.integers(1, 5), dim=st.integers(1, 10))
@settings(max_examples=40, deadline=None)
def test_cagrad_with_c_zero_is_the_mean(seed: int, tasks: int, dim: int) -> None:
    grads = (
        sample_matrix(seed, batch=4, tasks=tasks, dim=dim) if tasks > 1 else torch.randn(4, 1, dim)
    )
    torch.testing.assert_close(CAGrad(c=0.0)(grads), grads.mean(-2))


@given(seed=SEEDS, dim=st.integers(1, 10), c=st.floats(0.05, 2.0))
@settings(max_examples=40, deadline=None)
def test_cagrad_two_task_weights_are_optimal(seed: int, dim: int, c: float) -> None:
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    method = CAGrad(c=c)
    w = method.task_weights(grads)
    gram = gramian(grads)
    b = gram.mean(-1)
    k = c * b.mean(-1).clamp_min(0).sqrt()
    xs = torch.linspace(0, 1, 20001, dtype=torch.float64)
    grid = torch.stack([xs, 1 - xs], -1)
    for i in range(grads.shape[0]):
        brute = _cagrad_objective(grid, gram[i], b[i], k[i]).min()
        found = _cagrad_objective(w[i], gram[i], b[i], k[i])
        # sqrt(|g_w|^2) turns rounding of order eps * |G|^2 into ~sqrt(eps) * |G| at the kink.
        assert found <= brute + 1e-7 * gram[i].abs().max() + 1e-12


@given(seed=SEEDS, c=st.floats(0.1, 1.0))
@settings(max_examples=10, deadline=None)
def test_cagrad_three_task_weights_match_brute_force(seed: int, c: float) -> None:
    # Includes the ill-conditioned case (optimum at a vertex) found by hypothesis.
    seed = 7843055 if seed % 5 == 0 else seed
    grads = sample_matrix(seed, batch=3, tasks=3, dim=5)
    w = CAGrad(c=c).task_weights(grads)
    gram = gramian(grads)
    b = gram.mean(-1)
    k = c * b.mean(-1).clamp_min(0).sqrt()
    n = 300
    pts = [
        (i / n, j / n, 1 - (i + j) / n)
        for i, j in itertools.product(range(n + 1), repeat=2)
        if i + j <= n
    ]
    grid = torch.tensor(pts, dtype=torch.float64)
    for i in range(3):
        brute = _cagrad_objective(grid, gram[i], b[i], k[i]).min()
        found = _cagrad_objective(w[i], gram[i], b[i], k[i])
        # The support enumeration is exact (condition numbers ~1e4 occur in these samples).
        assert found <= brute + 1e-10 * gram[i].abs().max() + 1e-12


def _cagrad_problem(grads: torch.Tensor, c: float):
    gram = gramian(grads)
    b = gram.mean(-1)
    return gram, b, c * b.mean(-1).clamp_min(0).sqrt()


def _assert_certified_optimum(
    w: torch.Tensor, optimal: torch.Tensor, gram: torch.Tensor, b: torch.Tensor,
    k: torch.Tensor, gen: torch.Generator,
) -> None:  # fmt: skip
    """``w`` (``(batch, T)``) is certified, on the simplex, no worse than the iterative solver
    and than 200 random points of the simplex."""
    assert bool(optimal.all())
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=torch.float64))
    found = _cagrad_objective(w, gram, b, k)
    iterative = _cagrad_objective(_cagrad_iterative(gram, b, k), gram, b, k)
    assert torch.all(found <= iterative + 1e-10 * gram.abs().amax((-2, -1)))
    shape = (200, 1, w.shape[-1])
    points = project_to_simplex(torch.randn(*shape, generator=gen, dtype=torch.float64))
    assert torch.all(found <= _cagrad_objective(points, gram, b, k) + 1e-12)


@given(seed=SEEDS, tasks=st.integers(3, 8), extra=st.integers(0, 6), c=st.floats(0.05, 2.0))
@settings(max_examples=40, deadline=None)
def test_cagrad_support_enumeration_is_certified_and_beats_the_iterative_solver(
    seed: int, tasks: int, extra: int, c: float
) -> None:
    # Gradients in general position (dim >= tasks): every face's Gram block is invertible, so
    # the enumeration must certify its answer, and no feasible point may do better than it.
    grads = sample_matrix(seed, batch=3, tasks=tasks, dim=tasks + extra)
    gram, b, k = _cagrad_problem(grads, c)
    w, optimal = _cagrad_by_supports(gram, b, k)
    _assert_certified_optimum(w, optimal, gram, b, k, torch.Generator().manual_seed(seed))


@given(
    seed=SEEDS,
    tasks=st.integers(9, 40),
    extra=st.integers(0, 20),
    c=st.floats(0.05, 5.0),
    common=st.floats(0.0, 2.0),
)
@settings(max_examples=25, deadline=None)
def test_cagrad_active_set_beyond_eight_tasks_is_certified_and_beats_the_iterative_solver(
    seed: int, tasks: int, extra: int, c: float, common: float
) -> None:
    # Beyond the enumeration limit: gradients in general position around a shared component of
    # varying strength (from conflicting to aligned tasks) and scales spread over a factor ~50.
    gen = torch.Generator().manual_seed(seed)
    dim = tasks + extra
    scales = torch.exp(torch.randn(2, tasks, 1, generator=gen, dtype=torch.float64))
    grads = torch.randn(2, tasks, dim, generator=gen, dtype=torch.float64) * scales
    grads = grads + common * torch.randn(2, 1, dim, generator=gen, dtype=torch.float64)
    gram, b, k = _cagrad_problem(grads, c)
    w, optimal = _cagrad_active_set(gram, b, k)
    _assert_certified_optimum(w, optimal, gram, b, k, gen)
    # what the method returns beyond eight tasks
    torch.testing.assert_close(CAGrad(c=c).task_weights(grads), w, rtol=0, atol=0)


@given(seed=SEEDS, tasks=st.integers(3, 8), extra=st.integers(0, 6), c=st.floats(0.05, 2.0))
@settings(max_examples=30, deadline=None)
def test_cagrad_active_set_agrees_with_the_support_enumeration(
    seed: int, tasks: int, extra: int, c: float
) -> None:
    # Two exact solvers of one convex problem: the same minimum, and (the minimiser is unique
    # for gradients in general position) the same weights.
    grads = sample_matrix(seed, batch=3, tasks=tasks, dim=tasks + extra)
    gram, b, k = _cagrad_problem(grads, c)
    w, optimal = _cagrad_active_set(gram, b, k)
    reference, _ = _cagrad_by_supports(gram, b, k)
    assert bool(optimal.all())
    scale = gram.abs().amax((-2, -1))
    found = _cagrad_objective(w, gram, b, k)
    assert torch.all((found - _cagrad_objective(reference, gram, b, k)).abs() <= 1e-10 * scale)
    torch.testing.assert_close(w, reference, rtol=0, atol=1e-6)


@given(seed=SEEDS, tasks=st.integers(3, 8), c=st.floats(0.05, 2.0))
@settings(max_examples=30, deadline=None)
def test_cagrad_face_step_lands_on_the_optimum_from_its_face(
    seed: int, tasks: int, c: float
) -> None:
    # The active-set search's face step: given the optimal face, the closed form is the
    # optimum itself, with tau = r / k.
    grads = sample_matrix(seed, batch=1, tasks=tasks, dim=tasks + 2)[0]
    gram, b, k = _cagrad_problem(grads, c)
    optimum, optimal = _cagrad_by_supports(gram, b, k)
    assume(bool(optimal) and int((optimum > 0).sum()) >= 2)
    face = _cagrad_face(gram.numpy(), b.numpy(), float(k), np.flatnonzero(optimum.numpy() > 0))
    assert face is not None
    w, tau = face
    np.testing.assert_allclose(w, optimum.numpy(), atol=1e-8)
    r = float(optimum @ gram @ optimum) ** 0.5
    assert tau == pytest.approx(r / float(k), rel=1e-8)


def test_cagrad_with_c_zero_beyond_eight_tasks_is_the_mean() -> None:
    grads = sample_matrix(5, batch=3, tasks=12, dim=20)
    torch.testing.assert_close(CAGrad(c=0.0)(grads), grads.mean(-2))
    gram, b, k = _cagrad_problem(grads, 0.0)
    w, optimal = _cagrad_active_set(gram, b, k)
    assert bool(optimal.all())
    # F is linear: the best vertex
    torch.testing.assert_close(w, torch.nn.functional.one_hot(b.argmin(-1), 12).double())


@pytest.mark.parametrize(
    "grads",
    [
        # zero in the hull of the gradients (g1 = -g2): r = 0 at the optimum, no certificate
        torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]),
        # identical gradients: every face Gram block is singular
        torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]),
        # more tasks than dimensions
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [0.5, -0.2]]),
        # beyond the enumeration limit: 12 tasks in 3 dimensions, zero inside their hull
        torch.cat([torch.eye(3), -torch.eye(3), torch.ones(3, 3), -2 * torch.ones(3, 3)]),
        # beyond the enumeration limit: 10 identical gradients
        torch.tensor([[1.0, -2.0, 0.5]]).repeat(10, 1),
    ],
)
def test_cagrad_degenerate_gradients_fall_back_to_a_feasible_optimum(grads: torch.Tensor) -> None:
    grads = grads.double()
    w = CAGrad(c=0.5).task_weights(grads)
    assert torch.all(w >= 0)
    assert float(w.sum()) == pytest.approx(1.0)
    gram, b, k = _cagrad_problem(grads, 0.5)
    points = project_to_simplex(torch.randn(500, grads.shape[0], dtype=torch.float64))
    assert (
        float(_cagrad_objective(w, gram, b, k))
        <= float(_cagrad_objective(points, gram, b, k).min()) + 1e-6
    )


def test_cagrad_direction_closed_form() -> None:
    # Orthogonal unit gradients: by symmetry w = (1/2, 1/2), g_w = g0 = (1/2, 1/2),
    # d = g0 (1 + c), rescaled by 1 + c back to g0.
    grads = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(CAGrad(c=0.5)(grads), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(
        CAGrad(c=0.5, rescale="none")(grads), torch.tensor([0.75, 0.75], dtype=torch.float64)
    )


@given(seed=SEEDS, dim=st.integers(2, 10), c=st.floats(0.1, 0.9))
@settings(max_examples=40, deadline=None)
def test_cagrad_improves_worst_task_over_mean(seed: int, dim: int, c: float) -> None:
    # CAGrad maximises the worst-case local improvement within a ball around g0: its
    # (unscaled) direction's min_t <g_t, d> is at least that of the mean gradient.
    grads = sample_matrix(seed, batch=6, tasks=2, dim=dim)
    d = CAGrad(c=c, rescale="none")(grads)
    g0 = grads.mean(-2)
    worst_d = (grads @ d.unsqueeze(-1)).squeeze(-1).amin(-1)
    worst_mean = (grads @ g0.unsqueeze(-1)).squeeze(-1).amin(-1)
    assert torch.all(worst_d >= worst_mean - 1e-9 * (1 + worst_mean.abs()))


@given(
    seed=SEEDS,
    tasks=st.integers(2, 6),
    scale_exp=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_uwo_is_invariant_to_constant_loss_scales(
    seed: int, tasks: int, scale_exp: list[float]
) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(tasks, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor([10.0**e for e in scale_exp[:tasks]], dtype=torch.float64)
    losses = (a @ x) ** 2 + 0.1
    (g_plain,) = torch.autograd.grad(UWO().combine(losses), x, retain_graph=True)
    (g_scaled,) = torch.autograd.grad(UWO().combine(alpha * losses), x)
    torch.testing.assert_close(g_scaled, g_plain, rtol=1e-10, atol=0)


def test_fixed_weights_validation() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        FixedWeights([0.5, -1.0])
    with pytest.raises(ValueError, match="2 weights for 3 tasks"):
        FixedWeights([0.5, 0.5]).weights(torch.ones(3))


@given(seed=SEEDS, tasks=st.integers(1, 8))
@settings(max_examples=50, deadline=None)
def test_simplex_projection(seed: int, tasks: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    v = 3 * torch.randn(5, tasks, generator=gen, dtype=torch.float64)
    w = project_to_simplex(v)
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(5, dtype=torch.float64))
    # A point of the simplex projects to itself.
    torch.testing.assert_close(project_to_simplex(w), w)


def test_make_method_rejects_unknown_names_and_hyperparameters() -> None:
    with pytest.raises(ValueError, match="unknown method 'pcgard'"):
        make_method("pcgard")
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['alpha'\]"):
        make_method("cagrad", {"alpha": 0.5})
    assert make_method("cagrad", {"c": 0.2}).c == 0.2


def test_bad_gradient_matrix_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        PCGrad()(torch.ones(3))
