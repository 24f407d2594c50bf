"""IMTL-L ``"imtl_l"``: the loss part of impartial MTL (Liu et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl_paradigms.methods.weightings.uw import UW


class IMTLL(UW):
    """IMTL-L, the loss-balancing half of impartial MTL (Liu et al., 2021, ICLR).

    Learnable log-scales ``s_t`` (returned by :meth:`bind`, trained by the trainer's optimizer
    with the model); the combined loss is ``(1/T) sum_t (exp(s_t) L_t - s_t)`` and the weights are
    ``exp(s_t)/T`` (mean scale; the paper's are ``exp(s_t)``). Minimising ``e^s L - s`` over ``s``
    gives ``s = -log L``, i.e. weights ``1/(T L_t)``: at its optimum IMTL-L is UW-O, and every
    scaled loss ``e^{s_t} L_t`` equals 1 (the paper's "impartial" property: a loss multiplied
    by ``alpha`` gets an optimal weight divided by ``alpha``). Note that the objective is
    :class:`~mtl_paradigms.methods.weightings.UW`'s ``L e^{-s} + s`` after the substitution
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
