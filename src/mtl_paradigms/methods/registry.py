"""Methods selectable by name, with their hyperparameters as keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mtl_paradigms.methods.aggregators import IMTLG, MGDA, AlignedMTL, GradDrop
from mtl_paradigms.methods.base import Method
from mtl_paradigms.methods.edm import CDTT, EDM
from mtl_paradigms.methods.gradient import CAGrad, PCGrad
from mtl_paradigms.methods.learned import FAMO, IMTL, MGDAUB, AutoLambda, GradNorm
from mtl_paradigms.methods.loss_weightings import DWA, IMTLL, RLW, SI
from mtl_paradigms.methods.nash_mtl import NashMTL
from mtl_paradigms.methods.rotograd import RotoGrad
from mtl_paradigms.methods.strategies import MTLIO, MTLIUS, AdaTask, Strategy
from mtl_paradigms.methods.weighting import EW, UW, UWO, FixedWeights

_ALL: tuple[type[Method], ...] = (
    EW, FixedWeights, UW, UWO, RLW, SI, IMTLL, DWA,
    PCGrad, CAGrad, MGDA, IMTLG, AlignedMTL, GradDrop,
    NashMTL, EDM, CDTT,
    GradNorm, FAMO, AutoLambda, IMTL, MGDAUB, RotoGrad,
    AdaTask, MTLIUS, MTLIO,
)  # fmt: skip
METHODS: dict[str, type[Method]] = {cls.name: cls for cls in _ALL}


def make_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """Build method ``name`` with hyperparameters ``params``; unknown names or keys raise."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}") from None
    params = dict(params or {})
    allowed = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"method {name!r}: unknown hyperparameter(s) {unknown}; allowed: {allowed}"
        )
    return cls(**params)


def describe_methods() -> list[dict[str, Any]]:
    """Name, kind and hyperparameters (with defaults) of every method, for ``mtlp methods``."""
    rows = []
    for name, cls in sorted(METHODS.items()):
        sig = inspect.signature(cls)
        params = {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in sig.parameters.values()
        }
        if issubclass(cls, Strategy):
            kind = "strategy"
        else:
            kind = "aggregator" if cls.requires_grads else "weighting"
        doc = (inspect.getdoc(cls) or "").splitlines()[0]
        rows.append({"name": name, "kind": kind, "hyperparameters": params, "summary": doc})
    return rows
