"""GradDrop ``"graddrop"``: gradient sign dropout (Chen et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Aggregator, check_matrix


class GradDrop(Aggregator):
    """GradDrop (Chen et al., 2020, "Just pick a sign"): randomly keep one sign per coordinate.

    Per coordinate, the sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` is the
    probability of keeping the positive components; one uniform draw ``U`` per coordinate
    (shared by the tasks) keeps the positive components if ``U < P`` and the negative ones
    otherwise. With ``leak`` ``l``, each task contributes ``l g_t + (1 - l) mask_t * g_t``
    (``l = 1`` is EW). The direction is the **mean** over tasks (mean convention of
    :mod:`mtl_paradigms.methods.base`); where every task agrees in sign it is the plain mean.
    A coordinate where all gradients vanish has ``P = 1/2`` and stays zero.

    ``k`` steepens the keep function, ``P = 1/2 + k (sum_t g_t / sum_t |g_t|) / 2`` clipped to
    ``[0, 1]`` (``k = 1``, the default, is the paper's identity ``f``; the sibling study's code
    calls it ``k``). With ``p`` given, the *random* variant of that code is used instead: each
    component is kept with probability ``1 - p`` regardless of its sign. The original applies
    GradDrop to gradients at a shared *representation*, per example; here it acts on the
    per-task gradients of the shared parameters, as the other aggregators do. Draws come from
    a CPU ``torch.Generator`` seeded with ``seed`` (one draw per coordinate and batch element
    per call, so successive calls differ but a fresh instance with the same seed repeats).
    """

    name = "graddrop"

    def __init__(
        self, leak: float = 0.0, k: float = 1.0, p: float | None = None, seed: int | None = None
    ) -> None:
        if not (0.0 <= leak <= 1.0):
            raise ValueError(f"graddrop: leak must be in [0, 1], got {leak!r}")
        if not k > 0:
            raise ValueError(f"graddrop: k must be positive, got {k!r}")
        if p is not None and not (0.0 <= p < 1.0):
            raise ValueError(f"graddrop: p must be in [0, 1) or None, got {p!r}")
        self.leak = float(leak)
        self.k = float(k)
        self.p = None if p is None else float(p)
        self.seed = seed
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)

    def purity(self, grads: Tensor) -> Tensor:
        """The sign purity ``P`` per coordinate, shape ``(*batch, D)``, in ``[0, 1]``."""
        check_matrix(grads)
        total = grads.sum(dim=-2)
        abs_total = grads.abs().sum(dim=-2)
        ratio = torch.where(
            abs_total > 0, total / abs_total.clamp_min(torch.finfo(grads.dtype).tiny), 0.0
        )
        return (0.5 * (1.0 + self.k * ratio)).clamp(0.0, 1.0)

    def masks(self, grads: Tensor) -> Tensor:
        """A fresh random keep-mask of shape ``(*batch, T, D)`` (consumes generator draws)."""
        if self.p is not None:
            u = torch.rand(grads.shape, generator=self._generator, dtype=grads.dtype)
            return (u >= self.p).to(grads.device)
        p = self.purity(grads)
        u = torch.rand(p.shape, generator=self._generator, dtype=p.dtype).to(p.device)
        keep_positive = (u < p).unsqueeze(-2)
        return torch.where(grads > 0, keep_positive, ~keep_positive)

    def __call__(self, grads: Tensor) -> Tensor:
        masked = grads * self.masks(grads)
        if self.leak > 0:
            masked = self.leak * grads + (1.0 - self.leak) * masked
        return masked.mean(dim=-2)
