"""Multi-task methods behind one interface (see :mod:`mtl_paradigms.methods.base`)."""

from mtl_paradigms.methods.aggregators import IMTLG, MGDA, AlignedMTL, GradDrop
from mtl_paradigms.methods.base import Aggregator, Method, WeightedAggregator, Weighting
from mtl_paradigms.methods.edm import CDTT, EDM
from mtl_paradigms.methods.gradient import CAGrad, PCGrad
from mtl_paradigms.methods.loss_weightings import DWA, IMTLL, RLW, SI
from mtl_paradigms.methods.nash_mtl import NashMTL
from mtl_paradigms.methods.registry import METHODS, make_method
from mtl_paradigms.methods.weighting import EW, UW, UWO, FixedWeights

__all__ = [
    "CDTT",
    "DWA",
    "EDM",
    "EW",
    "IMTLG",
    "IMTLL",
    "METHODS",
    "MGDA",
    "RLW",
    "SI",
    "UW",
    "UWO",
    "Aggregator",
    "AlignedMTL",
    "CAGrad",
    "FixedWeights",
    "GradDrop",
    "Method",
    "NashMTL",
    "PCGrad",
    "WeightedAggregator",
    "Weighting",
    "make_method",
]
