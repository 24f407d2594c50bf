"""Argument and state checks shared by several methods."""

from __future__ import annotations

import math

from torch import Tensor


def check_positive(method: str, param: str, value: float) -> float:
    """``value`` as a float; raises unless it is positive and finite."""
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{method}: {param} must be a positive finite number, got {value}")
    return value


def require_bound(value: Tensor | None, method: str) -> Tensor:
    """``value``, set by :meth:`~mtl_paradigms.methods.base.Method.bind`; raises if unbound."""
    if value is None:
        raise RuntimeError(f"{method}: call bind(num_tasks) before use (the trainer does)")
    return value
