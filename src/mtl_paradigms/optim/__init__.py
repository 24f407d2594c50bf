"""Optimizer-level multi-task strategies."""

from mtl_paradigms.optim.per_task_adam import PerTaskAdam

__all__ = ["PerTaskAdam"]
