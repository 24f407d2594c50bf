"""EDM (equiangular direction) and CDTT (central direction + task tensioners)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_spine_methods import sample_matrix

from mtl_paradigms.methods import CDTT, EDM, MGDA, make_method

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
F64 = torch.float64


# --------------------------------------------------------------------------- EDM


@given(seed=SEEDS, tasks=st.integers(2, 6), dim=st.integers(1, 10))
@settings(max_examples=40, deadline=None)
def test_edm_is_the_rescaled_min_norm_point_of_the_unit_gradients(
    seed: int, tasks: int, dim: int
) -> None:
    grads = sample_matrix(seed, batch=5, tasks=tasks, dim=dim)
    d, w = EDM().aggregate(grads)
    norms = grads.norm(dim=-1, keepdim=True)
    units = grads / norms
    lam = MGDA().task_weights(units)
    m = (lam.unsqueeze(-2) @ units).squeeze(-2)  # min-norm point of the unit gradients
    # The weights on the original gradients sum to one and d is parallel to m.
    torch.testing.assert_close(w.sum(-1), torch.ones(5, dtype=F64))
    gamma = 1 / (lam / norms.squeeze(-1)).sum(-1, keepdim=True)
    torch.testing.assert_close(d, gamma * m, rtol=1e-9, atol=1e-12)
    # Equiangular on the support of lam, no smaller projection elsewhere (min-norm optimality).
    proj = (units @ m.unsqueeze(-1)).squeeze(-1)
    sq = (m * m).sum(-1, keepdim=True)
    tol = 1e-8 * (1 + sq)
    assert torch.all(proj >= sq - tol)
    support = lam > 1e-9
    assert torch.all((proj - sq).abs()[support] <= 1e-7 * (1 + sq.expand_as(proj)[support]))


@given(seed=SEEDS, tasks=st.integers(2, 5), scale_exp=st.lists(st.floats(-3, 3), min_size=5))
@settings(max_examples=30, deadline=None)
def test_edm_direction_keeps_its_orientation_under_per_task_gradient_scales(
    seed: int, tasks: int, scale_exp: list[float]
) -> None:
    grads = sample_matrix(seed, batch=4, tasks=tasks, dim=tasks + 2, conflict=0.3)
    scales = torch.tensor([10.0**e for e in scale_exp[:tasks]], dtype=F64)
    d_plain = EDM()(grads)
    d_scaled = EDM()(grads * scales.unsqueeze(-1))
    cosine = torch.nn.functional.cosine_similarity(d_plain, d_scaled, dim=-1)
    nonzero = d_plain.norm(dim=-1) > 1e-9 * grads.norm(dim=-1).amax(-1)
    torch.testing.assert_close(cosine[nonzero], torch.ones_like(cosine[nonzero]))


def test_edm_hand_made_examples() -> None:
    # Orthogonal g1 = (2, 0), g2 = (0, 1): lam = (1/2, 1/2), gamma = 1 / (1/4 + 1/2) = 4/3,
    # weights (1/3, 2/3), direction (2/3, 2/3), at 45 degrees to both gradients.
    grads = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=F64)
    d, w = EDM().aggregate(grads)
    torch.testing.assert_close(w, torch.tensor([1 / 3, 2 / 3], dtype=F64))
    torch.testing.assert_close(d, torch.tensor([2 / 3, 2 / 3], dtype=F64))
    # Identical gradients: the mean (the gradient itself).
    g = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    torch.testing.assert_close(EDM()(torch.stack([g, g, g])), g)
    # A zero task gradient: no shared update.
    d, w = EDM().aggregate(torch.stack([g, torch.zeros(3, dtype=F64)]))
    assert torch.all(w == 0)
    assert torch.all(d == 0)
    with pytest.raises(ValueError, match="iterations"):
        EDM(iterations=0)


# --------------------------------------------------------------------------- CDTT


def reference_cdtt(
    grads_seq: list[torch.Tensor], losses_seq: list[torch.Tensor], alpha: float, window: int
) -> list[torch.Tensor]:
    """CDTT's directions computed the geometric way (angles and a tangent), one step at a time."""
    norms_hist: list[torch.Tensor] = []
    previous = None
    out = []
    for step, (g, losses) in enumerate(zip(grads_seq, losses_seq, strict=True)):
        d = EDM()(g)
        norms_hist.append(g.norm(dim=-1))
        if step + 1 < window:
            out.append(d)
            continue
        window_sum = torch.stack(norms_hist[-window:]).sum(0)
        if previous is None:
            previous = window_sum
            out.append(d)
            continue
        v = d.clone()
        for t in range(g.shape[0]):
            p = float(window_sum[t] / previous[t]) + math.log10(float(losses[t]))
            tension = max(0.0, alpha / (1 + math.exp(-p * math.e + math.e)) + 1 - alpha)
            diff = g[t] - d
            v = v + tension * diff / diff.norm()
        for t in range(g.shape[0]):
            cos = float(g[t] @ v / (g[t].norm() * v.norm()))
            if math.degrees(math.acos(max(-1.0, min(1.0, cos)))) > 90:
                u = g[t] / g[t].norm()
                w_perp = v - (v @ u) * u
                back = v - g[t]
                angle = math.pi - math.acos(float(g[t] @ back / (g[t].norm() * back.norm())))
                v = math.tan(angle) * g[t].norm() * w_perp / w_perp.norm()
        previous = window_sum
        out.append(v)
    return out


@given(seed=SEEDS, tasks=st.integers(2, 4), alpha=st.sampled_from([0.0, 0.2, 0.6, 1.0]))
@settings(max_examples=20, deadline=None)
def test_cdtt_matches_the_geometric_construction(seed: int, tasks: int, alpha: float) -> None:
    window, steps = 3, 8
    gen = torch.Generator().manual_seed(seed)
    grads_seq = [sample_matrix(seed + k, batch=1, tasks=tasks, dim=5)[0] for k in range(steps)]
    losses_seq = [torch.rand(tasks, generator=gen, dtype=F64) * 3 + 0.05 for _ in range(steps)]
    expected = reference_cdtt(grads_seq, losses_seq, alpha, window)
    method = CDTT(alpha=alpha, window=window)
    for k, (g, losses) in enumerate(zip(grads_seq, losses_seq, strict=True)):
        method.observe(losses)
        d, w = method.aggregate(g)
        torch.testing.assert_close(d, expected[k], rtol=1e-7, atol=1e-9)
        # The tracked weights reproduce the direction and sum to one.
        torch.testing.assert_close(w @ g, d, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=F64))
        if k < window:  # until a previous window sum exists: EDM
            torch.testing.assert_close(w, EDM().task_weights(g))


def test_cdtt_tension_values() -> None:
    method = CDTT(alpha=0.6)
    one = torch.ones(3, dtype=F64)
    # p = ratio + log10(L); at p = 1 the sigmoid is 1/2: tension 1 - alpha/2.
    torch.testing.assert_close(method.tension(one, one), torch.full((3,), 0.7, dtype=F64))
    losses = torch.tensor([1e-6, 1.0, 1e6], dtype=F64)
    tau = method.tension(one, losses)
    assert torch.all(tau[:-1] < tau[1:])  # larger loss, larger tension
    assert torch.all(tau >= 0.4 - 1e-12)
    assert torch.all(tau <= 1.0)
    torch.testing.assert_close(CDTT(alpha=0.0).tension(one, losses), torch.ones(3, dtype=F64))
    # A non-positive loss is clamped, not NaN.
    assert torch.isfinite(method.tension(one, torch.zeros(3, dtype=F64))).all()


def test_cdtt_needs_the_losses_and_checks_their_shape() -> None:
    grads = sample_matrix(0, batch=1, tasks=3, dim=4)[0]
    method = CDTT()
    with pytest.raises(RuntimeError, match="observe"):
        method.aggregate(grads)
    method.observe(torch.ones(2))
    with pytest.raises(ValueError, match="do not match"):
        method.aggregate(grads)
    method.observe(torch.ones(3))
    method.aggregate(grads)
    with pytest.raises(RuntimeError, match="observe"):  # the losses are used once
        method.aggregate(grads)


def test_cdtt_state_round_trip_continues_identically() -> None:
    steps = [sample_matrix(k, batch=2, tasks=3, dim=6) for k in range(16)]
    losses = [torch.full((2, 3), 0.5 + 0.1 * k, dtype=F64) for k in range(16)]
    straight = CDTT(alpha=0.4, window=4)
    resumed = CDTT(alpha=0.4, window=4)
    for k in range(16):
        straight.observe(losses[k])
        w_straight = straight.task_weights(steps[k])
        if k == 7:
            resumed = CDTT(alpha=0.4, window=4)
            resumed.load_state_dict(straight.state_dict())
        elif k > 7:
            resumed.observe(losses[k])
            torch.testing.assert_close(resumed.task_weights(steps[k]), w_straight)
    # bind starts afresh: the first call is EDM again.
    straight.bind(3)
    straight.observe(losses[0])
    torch.testing.assert_close(straight.task_weights(steps[0]), EDM().task_weights(steps[0]))


def test_cdtt_zero_gradient_and_validation() -> None:
    g = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64)
    method = CDTT(window=1)
    for _ in range(3):
        method.observe(torch.ones(2, dtype=F64))
        d, w = method.aggregate(g)
        assert torch.all(w == 0)
        assert torch.all(d == 0)
    for bad in ({"alpha": 1.5}, {"alpha": -0.1}, {"window": 0}, {"iterations": 0}):
        with pytest.raises(ValueError, match="cdtt"):
            make_method("cdtt", bad)
