"""Fixed weights ``"fixed"``: scalarisation with constant weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Weighting


class FixedWeights(Weighting):
    """Scalarisation with constant weights. Weights are used as given (no normalisation):
    under the mean convention, ``weights = [1/T] * T`` is EW."""

    name = "fixed"

    def __init__(self, weights: Sequence[float]) -> None:
        if len(weights) == 0:
            raise ValueError("fixed weights: need one weight per task, got none")
        if any(w < 0 for w in weights):
            raise ValueError(f"fixed weights must be non-negative, got {list(weights)}")
        self.task_weights = [float(w) for w in weights]

    def weights(self, losses: Tensor) -> Tensor:
        if losses.shape[-1] != len(self.task_weights):
            raise ValueError(
                f"fixed weights: {len(self.task_weights)} weights for {losses.shape[-1]} tasks"
            )
        # (a copy to a GPU that does not wait for it: no host sync per step)
        w = torch.tensor(self.task_weights, dtype=losses.dtype)
        w = w.to(losses.device, non_blocking=True)
        return w.expand_as(losses)
