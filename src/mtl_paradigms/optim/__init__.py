"""Optimizer-level multi-task strategies."""

from mtl_paradigms.optim.per_task_adam import PerTaskAdam
from mtl_paradigms.optim.signsgd import SignSGD

__all__ = ["PerTaskAdam", "SignSGD"]
