"""Tests of the loss weightings RLW, SI, IMTL-L and DWA."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_paradigms.methods.weightings import DWA, IMTLL, RLW, SI, UW, UWO

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
F64 = torch.float64


def sample_losses(seed: int, tasks: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive differentiable losses ``(a x)^2 + 0.1`` of a parameter ``x``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(tasks, 4, generator=gen, dtype=F64)
    x = torch.randn(4, generator=gen, dtype=F64, requires_grad=True)
    return (a @ x) ** 2 + 0.1, x, a


# --- RLW ---------------------------------------------------------------------------------


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
@given(seed=SEEDS, tasks=st.integers(1, 7), alpha=st.floats(0.05, 5.0))
@settings(max_examples=30, deadline=None)
def test_rlw_weights_lie_on_the_simplex(
    distribution: str, seed: int, tasks: int, alpha: float
) -> None:
    method = RLW(distribution=distribution, alpha=alpha, seed=seed)  # type: ignore[arg-type]
    losses = torch.rand(3, 5, tasks, dtype=F64) + 0.1
    w = method.weights(losses)
    assert w.shape == losses.shape
    assert w.dtype == losses.dtype
    assert not w.requires_grad
    assert torch.all(w >= 0)
    assert torch.all(torch.isfinite(w))
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 5, dtype=F64))


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_is_deterministic_for_a_seed_and_fresh_at_every_call(distribution: str) -> None:
    losses = torch.ones(4, 3)
    first, second = RLW(distribution, seed=5), RLW(distribution, seed=5)  # type: ignore[arg-type]
    draws = [first.weights(losses) for _ in range(3)]
    torch.testing.assert_close(
        torch.stack(draws), torch.stack([second.weights(losses) for _ in range(3)])
    )
    # Fresh weights at every call and independent ones per batch element.
    assert not torch.allclose(draws[0], draws[1])
    assert not torch.allclose(draws[0][0], draws[0][1])
    # The private generator leaves the global RNG alone.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    RLW(distribution, seed=1).weights(losses)  # type: ignore[arg-type]
    torch.testing.assert_close(torch.rand(3), expected)
    # A different seed gives different draws.
    assert not torch.allclose(RLW(distribution, seed=6).weights(losses), draws[0])  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_without_a_seed_follows_the_global_seed(distribution: str) -> None:
    """Unseeded RLW is reproducible: it draws what torch's global seed (the run's seed, set by
    the trainer) fixes, and a different global seed gives different weights."""
    losses = torch.ones(4, 3)

    def draws(global_seed: int) -> torch.Tensor:
        torch.manual_seed(global_seed)
        method = RLW(distribution)  # type: ignore[arg-type]
        return torch.stack([method.weights(losses) for _ in range(3)])

    torch.testing.assert_close(draws(3), draws(3))
    assert not torch.allclose(draws(3), draws(4))


@pytest.mark.parametrize("distribution", ["normal", "dirichlet"])
def test_rlw_state_round_trip_restores_the_generator(distribution: str) -> None:
    losses = torch.ones(2, 4)
    method = RLW(distribution, seed=11)  # type: ignore[arg-type]
    method.weights(losses)
    state = method.state_dict()
    expected = [method.weights(losses) for _ in range(2)]
    restored = RLW(distribution, seed=999)  # type: ignore[arg-type]
    restored.load_state_dict(state)
    torch.testing.assert_close(
        torch.stack([restored.weights(losses) for _ in range(2)]), torch.stack(expected)
    )


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.0])
def test_rlw_dirichlet_moments(alpha: float) -> None:
    # Symmetric Dirichlet: E w_t = 1/T, Var w_t = (T - 1) / (T^2 (T alpha + 1)).
    tasks, n = 3, 40000
    w = RLW("dirichlet", alpha=alpha, seed=0).weights(torch.ones(n, tasks, dtype=F64))
    var = (tasks - 1) / (tasks**2 * (tasks * alpha + 1))
    torch.testing.assert_close(
        w.mean(0), torch.full((tasks,), 1 / tasks, dtype=F64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(w.var(0), torch.full((tasks,), var, dtype=F64), atol=0, rtol=0.05)


def test_rlw_normal_is_softmax_of_standard_normals() -> None:
    gen = torch.Generator().manual_seed(3)
    expected = torch.softmax(torch.randn(2, 5, generator=gen, dtype=F64), dim=-1)
    torch.testing.assert_close(RLW("normal", seed=3).weights(torch.ones(2, 5, dtype=F64)), expected)


def test_rlw_validation() -> None:
    with pytest.raises(ValueError, match="distribution"):
        RLW("uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha"):
        RLW("dirichlet", alpha=0.0)
    with pytest.raises(ValueError, match="seed"):
        RLW(seed=-1)
    with pytest.raises(ValueError, match="seed"):
        RLW(seed=1.5)  # type: ignore[arg-type]


# --- SI ----------------------------------------------------------------------------------


@given(seed=SEEDS, tasks=st.integers(1, 6))
@settings(max_examples=40, deadline=None)
def test_si_gradient_equals_uwo_gradient(seed: int, tasks: int) -> None:
    losses, x, _ = sample_losses(seed, tasks)
    (g_si,) = torch.autograd.grad(SI().combine(losses), x, retain_graph=True)
    (g_uwo,) = torch.autograd.grad(UWO().combine(losses), x, retain_graph=True)
    torch.testing.assert_close(g_si, g_uwo, rtol=1e-12, atol=1e-14)
    # Its weights are UW-O's, and back-propagating sum_t w_t L_t gives the same gradient.
    torch.testing.assert_close(SI().weights(losses), UWO().weights(losses))
    (g_weighted,) = torch.autograd.grad((SI().weights(losses) * losses).sum(), x)
    torch.testing.assert_close(g_weighted, g_si, rtol=1e-12, atol=1e-14)


@given(
    seed=SEEDS,
    tasks=st.integers(2, 6),
    scale_exp=st.lists(st.floats(-3, 3), min_size=6, max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_si_is_invariant_to_constant_loss_scales(
    seed: int, tasks: int, scale_exp: list[float]
) -> None:
    losses, x, _ = sample_losses(seed, tasks)
    alpha = torch.tensor([10.0**e for e in scale_exp[:tasks]], dtype=F64)
    (g_plain,) = torch.autograd.grad(SI().combine(losses), x, retain_graph=True)
    (g_scaled,) = torch.autograd.grad(SI().combine(alpha * losses), x)
    torch.testing.assert_close(g_scaled, g_plain, rtol=1e-10, atol=0)
    # The loss value only moves by the constant mean log alpha.
    torch.testing.assert_close(
        SI().combine(alpha * losses) - SI().combine(losses), alpha.log().mean()
    )


def test_si_mean_scale_and_validation() -> None:
    torch.testing.assert_close(SI().weights(torch.ones(2, 4)), torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="min_loss"):
        SI(min_loss=0.0)


# --- IMTL-L ------------------------------------------------------------------------------


def optimal_imtl_weights(losses: torch.Tensor) -> torch.Tensor:
    """Minimise IMTL-L's combined loss over its ``s`` (losses held fixed) with L-BFGS."""
    method = IMTLL()
    params = method.bind(losses.shape[-1])
    with torch.no_grad():
        params[0].data = params[0].data.to(F64)
    opt = torch.optim.LBFGS(
        params,
        lr=1,
        max_iter=200,
        tolerance_grad=1e-13,
        tolerance_change=0.0,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = method.combine(losses)
        loss.backward()
        return loss

    opt.step(closure)
    return method.weights(losses)


@given(
    seed=SEEDS,
    tasks=st.integers(1, 5),
    scale_exp=st.lists(st.floats(-2, 2), min_size=5, max_size=5),
)
@settings(max_examples=25, deadline=None)
def test_imtl_l_optimum_is_uwo_and_impartial(seed: int, tasks: int, scale_exp: list[float]) -> None:
    gen = torch.Generator().manual_seed(seed)
    losses = torch.exp(torch.randn(tasks, generator=gen, dtype=F64))
    w = optimal_imtl_weights(losses)
    # The optimum of e^s L - s is s = -log L: weights 1/(T L), UW-O's.
    torch.testing.assert_close(w, UWO().weights(losses), rtol=1e-6, atol=0)
    # Impartial: every scaled loss T w_t L_t = e^{s_t} L_t equals 1 ...
    torch.testing.assert_close(tasks * w * losses, torch.ones(tasks, dtype=F64), rtol=1e-6, atol=0)
    # ... so a loss multiplied by alpha gets an optimal weight divided by alpha.
    alpha = torch.tensor([10.0**e for e in scale_exp[:tasks]], dtype=F64)
    torch.testing.assert_close(optimal_imtl_weights(alpha * losses), w / alpha, rtol=1e-6, atol=0)


def test_imtl_l_combine_weights_and_mean_scale() -> None:
    method = IMTLL(init=0.3)
    (s,) = method.bind(3)
    losses = torch.tensor([[0.5, 2.0, 1.0], [1.0, 1.0, 3.0]])
    expected = (losses * math.exp(0.3) - 0.3).mean(-1)
    torch.testing.assert_close(method.combine(losses), expected)
    torch.testing.assert_close(method.weights(losses), torch.full((2, 3), math.exp(0.3) / 3))
    assert not method.weights(losses).requires_grad
    # The gradient with respect to s is (1/T)(e^s L - 1).
    method.combine(losses[0]).backward()
    torch.testing.assert_close(s.grad, (losses[0] * math.exp(0.3) - 1) / 3)
    # init = 0 is EW.
    ew = IMTLL()
    ew.bind(4)
    torch.testing.assert_close(ew.weights(torch.rand(4)), torch.full((4,), 0.25))


def test_imtl_l_trains_like_uw_with_the_sign_of_s_flipped() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=gen)
    x0 = torch.randn(4, generator=gen)
    trajectories = []
    for method in (IMTLL(init=0.4), UW(init=-0.4)):
        x = torch.nn.Parameter(x0.clone())
        opt = torch.optim.Adam([x, *method.bind(3)], lr=0.01)
        for _ in range(50):
            opt.zero_grad()
            method.combine((a @ x) ** 2 + 0.1).backward()
            opt.step()
        trajectories.append((x.detach(), method.weights(torch.ones(3))))
    torch.testing.assert_close(trajectories[0][0], trajectories[1][0])
    torch.testing.assert_close(trajectories[0][1], trajectories[1][1])


def test_imtl_l_state_round_trip_and_validation() -> None:
    method = IMTLL()
    (s,) = method.bind(3)
    with torch.no_grad():
        s.copy_(torch.tensor([0.1, -0.2, 0.3]))
    state = method.state_dict()
    restored = IMTLL()
    restored.bind(3)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.weights(torch.ones(3)), method.weights(torch.ones(3)))
    with torch.no_grad():
        s.zero_()  # the saved state is a copy
    torch.testing.assert_close(state["log_scale"], torch.tensor([0.1, -0.2, 0.3]))
    with pytest.raises(RuntimeError, match="bind"):
        IMTLL().weights(torch.ones(2))
    with pytest.raises(ValueError, match="init"):
        IMTLL(init=float("nan"))


# --- DWA ---------------------------------------------------------------------------------


def test_dwa_is_uniform_until_two_epochs_are_known() -> None:
    method = DWA()
    losses = torch.rand(2, 3)
    torch.testing.assert_close(method.weights(losses), torch.full((2, 3), 1 / 3))
    method.epoch_end(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(method.weights(losses), torch.full((2, 3), 1 / 3))
    method.epoch_end(torch.tensor([0.5, 2.0, 6.0]))
    assert not torch.allclose(method.weights(losses), torch.full((2, 3), 1 / 3))


def test_dwa_hand_computed_example() -> None:
    method = DWA(temperature=2.0)
    method.epoch_end(torch.tensor([1.0, 2.0]))
    method.epoch_end(torch.tensor([0.5, 3.0]))
    # r = (0.5, 1.5); r / 2 = (0.25, 0.75); softmax = (1, e^0.5) / (1 + e^0.5).
    e = math.exp(0.5)
    expected = torch.tensor([1 / (1 + e), e / (1 + e)], dtype=F64)
    w = method.weights(torch.ones(4, 2, dtype=F64))
    torch.testing.assert_close(w, expected.expand(4, 2))
    # Mean scale: they sum to 1 (the paper's T * softmax sums to T).
    torch.testing.assert_close(w.sum(-1), torch.ones(4, dtype=F64))
    # Only the last two epochs count: a third epoch gives r = (1, 1) -> uniform.
    method.epoch_end(torch.tensor([0.5, 3.0]))
    torch.testing.assert_close(
        method.weights(torch.ones(2, dtype=F64)), torch.full((2,), 0.5, dtype=F64)
    )


@given(seed=SEEDS, tasks=st.integers(1, 6), temperature=st.floats(0.1, 10.0))
@settings(max_examples=40, deadline=None)
def test_dwa_weights_match_the_formula(seed: int, tasks: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    before, last = torch.rand(2, tasks, generator=gen, dtype=F64) + 0.05
    method = DWA(temperature=temperature)
    method.epoch_end(before)
    method.epoch_end(last)
    ratio = last / before
    paper = tasks * torch.exp(ratio / temperature) / torch.exp(ratio / temperature).sum()
    torch.testing.assert_close(method.weights(torch.ones(tasks, dtype=F64)), paper / tasks)


def test_dwa_state_round_trip_keeps_the_history() -> None:
    method = DWA(temperature=1.5)
    method.epoch_end(torch.tensor([1.0, 2.0, 3.0]))
    restored = DWA(temperature=1.5)
    restored.load_state_dict(method.state_dict())
    # One epoch known before the checkpoint, one after: the ratio needs both.
    method.epoch_end(torch.tensor([0.2, 2.5, 3.0]))
    restored.epoch_end(torch.tensor([0.2, 2.5, 3.0]))
    losses = torch.ones(3)
    torch.testing.assert_close(restored.weights(losses), method.weights(losses))
    assert not torch.allclose(method.weights(losses), torch.full((3,), 1 / 3))
    # A checkpoint taken with two epochs restores the same weights too.
    again = DWA(temperature=1.5)
    again.load_state_dict(method.state_dict())
    torch.testing.assert_close(again.weights(losses), method.weights(losses))


def test_dwa_validation() -> None:
    with pytest.raises(ValueError, match="temperature"):
        DWA(temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        DWA(temperature=float("inf"))
    method = DWA()
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        method.epoch_end(torch.ones(2, 3))
    method.epoch_end(torch.ones(3))
    with pytest.raises(ValueError, match="2 tasks"):
        method.epoch_end(torch.ones(2))
    method.epoch_end(torch.ones(3))
    with pytest.raises(ValueError, match="3 tasks, losses have 2"):
        method.weights(torch.ones(2))


def test_names() -> None:
    assert [m.name for m in (RLW, SI, IMTLL, DWA)] == ["rlw", "si", "imtl_l", "dwa"]
