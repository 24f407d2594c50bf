"""RLW ``"rlw"``: random loss weighting (Lin et al., 2022), normal or Dirichlet."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import check_positive
from mtl_paradigms.methods.base import Weighting


def _log_gamma_samples(alpha: float, shape: torch.Size, generator: torch.Generator) -> Tensor:
    """Logarithms of Gamma(``alpha``, 1) samples, drawn with ``generator`` only (float64, CPU).

    Marsaglia and Tsang's (2000) rejection sampler for shape ``a >= 1``; for ``alpha < 1`` a
    Gamma(alpha + 1) sample ``X`` is boosted to ``X * U^(1/alpha)``, kept in log space so that
    tiny ``alpha`` cannot underflow to zero. ``torch.distributions`` cannot take a generator.
    """
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    count = math.prod(shape)
    out = torch.empty(count, dtype=torch.float64)
    pending = torch.arange(count)
    while pending.numel() > 0:
        n = pending.numel()
        x = torch.randn(n, generator=generator, dtype=torch.float64)
        u = 1.0 - torch.rand(n, generator=generator, dtype=torch.float64)  # in (0, 1]
        v = (1.0 + c * x) ** 3
        positive = v > 0
        log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
        accept = positive & (torch.log(u) < 0.5 * x**2 + d - d * v + d * log_v)
        out[pending[accept]] = math.log(d) + log_v[accept]
        pending = pending[~accept]
    if boost:
        u = 1.0 - torch.rand(count, generator=generator, dtype=torch.float64)
        out = out + torch.log(u) / alpha
    return out.reshape(shape)


class RLW(Weighting):
    """Random loss weighting (Lin et al., 2022, "Reasonable effectiveness of random weighting").

    Fresh random weights at every call of :meth:`weights` (and so of :meth:`combine`), one
    independent draw per batch element:

    * ``distribution="normal"``: ``softmax(z)`` with ``z_t ~ N(0, 1)`` (RLW-Normal);
    * ``distribution="dirichlet"``: ``w ~ Dirichlet(alpha, ..., alpha)`` (RLW-Dirichlet).

    The weights sum to 1, which *is* the mean scale (their expectation is ``1/T`` each, EW's).
    The draws come from a private ``torch.Generator`` seeded with ``seed`` (``None``: torch's
    global seed, :func:`torch.initial_seed`, which the trainer sets to the run's seed, so a run
    is reproducible and its seeds differ), so they neither consume the global RNG nor depend on
    its later draws; its state is checkpointed by :meth:`state_dict`. ``alpha`` is only used by
    the Dirichlet distribution.
    """

    name = "rlw"

    def __init__(
        self,
        distribution: Literal["normal", "dirichlet"] = "normal",
        alpha: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if distribution not in ("normal", "dirichlet"):
            raise ValueError(
                f"rlw: distribution must be 'normal' or 'dirichlet', got {distribution!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"rlw: seed must be a non-negative int or None, got {seed!r}")
        self.distribution = distribution
        self.alpha = check_positive("rlw", "alpha", alpha)
        self.seed = seed
        self._generator = torch.Generator()
        self._generator.manual_seed(torch.initial_seed() if seed is None else seed)

    def weights(self, losses: Tensor) -> Tensor:
        if self.distribution == "normal":
            z = torch.randn(losses.shape, generator=self._generator, dtype=torch.float64)
        else:
            z = _log_gamma_samples(self.alpha, losses.shape, self._generator)
        # Dirichlet = normalised Gamma samples = softmax of their logarithms.
        w = torch.softmax(z, dim=-1)
        return w.to(dtype=losses.dtype, device=losses.device).detach()

    def state_dict(self) -> dict[str, object]:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._generator.set_state(state["generator"])  # type: ignore[arg-type]
