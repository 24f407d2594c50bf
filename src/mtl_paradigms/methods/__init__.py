"""Multi-task methods behind one interface (see :mod:`mtl_paradigms.methods.base`).

* :mod:`~mtl_paradigms.methods.weightings` -- loss weightings, one module per method;
* :mod:`~mtl_paradigms.methods.aggregators` -- gradient aggregators, one module per method;
* :mod:`~mtl_paradigms.methods.strategies` -- optimizer-level strategies, one module per method,
  each owning its updater;
* :mod:`~mtl_paradigms.methods.registry` -- the names (:data:`METHODS`), :func:`make_method`;
* :mod:`~mtl_paradigms.methods.updater` -- updaters (one update per batch) and
  :mod:`~mtl_paradigms.methods.jacobian` -- per-task losses and gradients.
"""

from mtl_paradigms.methods.aggregators import (
    CDTT,
    EDM,
    IMTL,
    IMTLG,
    MGDA,
    MGDAUB,
    AlignedMTL,
    CAGrad,
    GradDrop,
    GradNorm,
    NashMTL,
    PCGrad,
    RotoGrad,
)  # fmt: skip
from mtl_paradigms.methods.base import Aggregator, Method, Strategy, WeightedAggregator, Weighting
from mtl_paradigms.methods.registry import METHODS, describe_methods, make_method
from mtl_paradigms.methods.strategies import MTLIO, MTLIUS, AdaTask
from mtl_paradigms.methods.updater import StepOutput, UpdateContext, Updater
from mtl_paradigms.methods.weightings import (
    DWA,
    EW,
    FAMO,
    IMTLL,
    RLW,
    SI,
    UW,
    UWO,
    AutoLambda,
    FixedWeights,
)  # fmt: skip

__all__ = [
    "CDTT", "DWA", "EDM", "EW", "FAMO", "IMTL", "IMTLG", "IMTLL", "METHODS", "MGDA", "MGDAUB",
    "MTLIO", "MTLIUS", "RLW", "SI", "UW", "UWO", "AdaTask", "Aggregator", "AlignedMTL",
    "AutoLambda", "CAGrad", "FixedWeights", "GradDrop", "GradNorm", "Method", "NashMTL", "PCGrad",
    "RotoGrad", "StepOutput", "Strategy", "UpdateContext", "Updater", "WeightedAggregator",
    "Weighting", "describe_methods", "make_method",
]  # fmt: skip
