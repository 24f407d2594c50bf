"""Gama & Grassi's claim: with two tasks of equal gradient norm, CAGrad, Nash-MTL, IMTL-G and
EDM reduce to equal weights (MGDA and Aligned-MTL are checked in test_aggregators.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_paradigms.methods import EDM, IMTLG, CAGrad, NashMTL
from mtl_paradigms.methods.base import Aggregator

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)
F64 = torch.float64

CLAIMED: dict[str, Aggregator] = {
    "cagrad c=0.2": CAGrad(c=0.2),
    "cagrad c=0.5": CAGrad(c=0.5),
    "cagrad c=0.8 rescale=none": CAGrad(c=0.8, rescale="none"),
    "nash_mtl": NashMTL(),
    "nash_mtl unclipped": NashMTL(max_norm=0.0),
    "imtl_g": IMTLG(),
    "edm": EDM(),
}


def equal_norm_pairs(seed: int, batch: int, dim: int) -> torch.Tensor:
    """Pairs of gradients with equal norms at every angle short of exactly opposite."""
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(batch, 2, dim, generator=gen, dtype=F64)
    grads = grads / grads.norm(dim=-1, keepdim=True)
    # Push half of the pairs towards conflict (angles close to, but below, 180 degrees).
    conflict = torch.rand(batch, generator=gen) < 0.5
    grads[conflict, 1] = -grads[conflict, 0] + 0.3 * grads[conflict, 1]
    grads = grads / grads.norm(dim=-1, keepdim=True)
    scale = torch.exp(2 * torch.randn(batch, 1, 1, generator=gen, dtype=F64))
    return grads * scale


@pytest.mark.parametrize("name", sorted(CLAIMED))
@given(seed=SEEDS, dim=st.integers(2, 12))
@settings(max_examples=15, deadline=None)
def test_two_tasks_of_equal_gradient_norm_get_equal_weights(name: str, seed: int, dim: int) -> None:
    grads = equal_norm_pairs(seed, batch=6, dim=dim)
    _, weights = CLAIMED[name].aggregate(grads)
    assert weights is not None
    torch.testing.assert_close(weights[..., 0], weights[..., 1], rtol=1e-7, atol=0)
    assert torch.all(weights > 0)


def test_unequal_norms_break_the_symmetry() -> None:
    # The claim needs equal norms: with norms 1 and 3 at 60 degrees no method is uniform.
    grads = torch.tensor([[1.0, 0.0], [1.5, 1.5 * 3**0.5]], dtype=F64)
    for name, method in CLAIMED.items():
        _, weights = method.aggregate(grads)
        assert weights is not None
        assert not torch.isclose(weights[0], weights[1], rtol=1e-3), name
