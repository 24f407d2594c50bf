"""More loss weightings: RLW, SI, IMTL-L and DWA.

All four follow the scale convention of :mod:`mtl_paradigms.methods.base`: weights live on the
scale of the *mean* over tasks, so the weights of equal weighting are ``1/T`` each and sum to 1.
Where the original paper uses the *sum* scale (DWA's ``T * softmax``, IMTL-L's ``e^{s_t}``), the
weights here are that paper's weights divided by ``T``; with SGD this is a factor ``T`` in the
effective learning rate, with Adam it changes nothing.

Implemented here (names as in the registry):

* :class:`RLW` ``"rlw"`` -- random loss weighting (Lin et al., 2022), normal or Dirichlet.
* :class:`SI` ``"si"`` -- scale-invariant loss ``(1/T) sum_t log L_t``.
* :class:`IMTLL` ``"imtl_l"`` -- IMTL-L, the loss part of impartial MTL (Liu et al., 2021).
* :class:`DWA` ``"dwa"`` -- dynamic weight average (Liu et al., 2019); uses the ``epoch_end``
  hook.

The weightings that need more from the trainer than the losses -- FAMO (losses after the
step), GradNorm (task-gradient norms) and Auto-Lambda (a validation meta step) -- live in
:mod:`mtl_paradigms.methods.learned`, with the hooks they use.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Weighting
from mtl_paradigms.methods.weighting import UW

__all__ = ["DWA", "IMTLL", "RLW", "SI"]


def _check_positive(method: str, param: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{method}: {param} must be a positive finite number, got {value}")
    return value


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
        self.alpha = _check_positive("rlw", "alpha", alpha)
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


class SI(Weighting):
    """Scale-invariant loss: ``combine = (1/T) sum_t log L_t`` (as screened by Gama & Grassi).

    Its gradient is ``(1/T) sum_t grad L_t / L_t``, so its weights are ``1/(T L_t)`` (detached):
    the gradient is *exactly* UW-O's (Elich et al., 2024), and a constant factor ``alpha_t`` on
    ``L_t`` only adds the constant ``log alpha_t`` to the loss, leaving the gradient unchanged.
    Only the reported value differs from UW-O (``mean log L`` instead of 1). ``min_loss`` guards
    the logarithm and the division for a loss that reaches zero. Mean scale: at ``L_t = 1`` the
    weights are ``1/T``.
    """

    name = "si"

    def __init__(self, min_loss: float = 1e-12) -> None:
        self.min_loss = _check_positive("si", "min_loss", min_loss)

    def weights(self, losses: Tensor) -> Tensor:
        num_tasks = losses.shape[-1]
        return (1.0 / (num_tasks * losses.detach().clamp_min(self.min_loss))).detach()

    def combine(self, losses: Tensor) -> Tensor:
        return torch.log(losses.clamp_min(self.min_loss)).mean(dim=-1)


class IMTLL(UW):
    """IMTL-L, the loss-balancing half of impartial MTL (Liu et al., 2021, ICLR).

    Learnable log-scales ``s_t`` (returned by :meth:`bind`, trained by the trainer's optimizer
    with the model); the combined loss is ``(1/T) sum_t (exp(s_t) L_t - s_t)`` and the weights are
    ``exp(s_t)/T`` (mean scale; the paper's are ``exp(s_t)``). Minimising ``e^s L - s`` over ``s``
    gives ``s = -log L``, i.e. weights ``1/(T L_t)``: at its optimum IMTL-L is UW-O, and every
    scaled loss ``e^{s_t} L_t`` equals 1 (the paper's "impartial" property: a loss multiplied
    by ``alpha`` gets an optimal weight divided by ``alpha``). Note that the objective is
    :class:`~mtl_paradigms.methods.weighting.UW`'s ``L e^{-s} + s`` after the substitution
    ``s -> -s``; as SGD and Adam are symmetric under a sign flip of a parameter, IMTL-L with
    ``init=c`` trains exactly like UW with ``init=-c``. ``init`` is ``s_t`` at the start
    (0: weights ``1/T``, EW). It shares UW's parameter handling (``bind``, ``log_scale``,
    checkpoint state) and differs only in the sign of ``s`` in the loss and the weights.
    """

    name = "imtl_l"

    def __init__(self, init: float = 0.0) -> None:
        if not math.isfinite(float(init)):
            raise ValueError(f"imtl_l: init must be finite, got {init}")
        super().__init__(init)

    def weights(self, losses: Tensor) -> Tensor:
        scale = torch.exp(self.log_scale.detach()) / losses.shape[-1]
        return scale.to(losses.dtype).expand_as(losses)

    def scaled_losses(self, losses: Tensor) -> Tensor:
        """The per-task scaled losses ``exp(s_t) L_t - s_t`` (differentiable in ``s``)."""
        s = self.log_scale.to(losses.dtype)
        return losses * torch.exp(s) - s

    def combine(self, losses: Tensor) -> Tensor:
        return self.scaled_losses(losses).mean(dim=-1)


class DWA(Weighting):
    """Dynamic weight average (Liu, Johns and Davison, 2019, "End-to-end multi-task learning
    with attention").

    With ``L_t(e)`` the mean training loss of task ``t`` in epoch ``e`` (given to
    :meth:`epoch_end` by the trainer), the weights during epoch ``e`` are

    ``w_t = softmax_t(r_t / temperature)``, ``r_t = L_t(e-1) / L_t(e-2)``,

    and ``1/T`` each until two epochs are known. The paper's weights are ``T * softmax``
    (summing to ``T``); here they are divided by ``T`` to sit on the mean scale, so they sum
    to 1 (EW: ``1/T``). The weights are constant within an epoch. The last two epoch losses
    are the state and survive a checkpoint. ``min_loss`` guards the ratio's denominator.
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0, min_loss: float = 1e-12) -> None:
        self.temperature = _check_positive("dwa", "temperature", temperature)
        self.min_loss = _check_positive("dwa", "min_loss", min_loss)
        self._history: list[Tensor] = []

    def epoch_end(self, mean_losses: Tensor) -> None:
        """Record the ``(T,)`` mean training loss of the epoch that just ended."""
        mean_losses = torch.as_tensor(mean_losses).detach()
        if mean_losses.ndim != 1 or mean_losses.numel() == 0:
            raise ValueError(
                f"dwa: epoch_end expects mean losses of shape (T,), got {tuple(mean_losses.shape)}"
            )
        if self._history and self._history[-1].shape != mean_losses.shape:
            raise ValueError(
                f"dwa: epoch_end got {mean_losses.numel()} tasks, "
                f"earlier epochs had {self._history[-1].numel()}"
            )
        self._history = [*self._history, mean_losses.to("cpu", torch.float64).clone()][-2:]

    def current_weights(self, num_tasks: int) -> Tensor:
        """The ``(T,)`` weights for the current epoch (float64, CPU)."""
        if len(self._history) < 2:
            return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        before, last = self._history
        if last.numel() != num_tasks:
            raise ValueError(f"dwa: history has {last.numel()} tasks, losses have {num_tasks}")
        ratio = last / before.clamp_min(self.min_loss)
        return torch.softmax(ratio / self.temperature, dim=-1)

    def weights(self, losses: Tensor) -> Tensor:
        w = self.current_weights(losses.shape[-1])
        return w.to(dtype=losses.dtype, device=losses.device).expand_as(losses).detach()

    def state_dict(self) -> dict[str, object]:
        return {"history": [h.clone() for h in self._history]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        history = state["history"]
        self._history = [torch.as_tensor(h, dtype=torch.float64).clone() for h in history][-2:]  # type: ignore[union-attr]
