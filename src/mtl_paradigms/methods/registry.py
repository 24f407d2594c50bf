"""Methods selectable by name, with their hyperparameters as keyword arguments.

:data:`METHODS` is the single list of method names: the config schema's ``method`` enum is
tested equal to it, and every name is a class exported by :mod:`mtl_paradigms.methods` and
defined in a module of the same name under ``weightings/``, ``aggregators/`` or ``strategies/``
(``tests/methods/test_layout.py``). Adding a method: its module, its family package's import and
``__all__``, its entry below and in :mod:`mtl_paradigms.methods`' ``__all__``, and the schema's
enum.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

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
from mtl_paradigms.methods.base import Method, Strategy
from mtl_paradigms.methods.strategies import MTLIO, MTLIUS, AdaTask
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

__all__ = ["METHODS", "describe_methods", "make_method"]

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
