"""Multi-task methods behind one interface (see :mod:`mtl_paradigms.methods.base`)."""

from mtl_paradigms.methods.base import Aggregator, Method, Weighting
from mtl_paradigms.methods.gradient import CAGrad, PCGrad
from mtl_paradigms.methods.registry import METHODS, make_method
from mtl_paradigms.methods.weighting import EW, UW, UWO, FixedWeights

__all__ = [
    "EW",
    "METHODS",
    "UW",
    "UWO",
    "Aggregator",
    "CAGrad",
    "FixedWeights",
    "Method",
    "PCGrad",
    "Weighting",
    "make_method",
]
