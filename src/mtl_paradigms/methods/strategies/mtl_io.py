"""MTL-IO ``"mtl_io"`` (Pascal et al., 2021; run by Elich et al. with SGD): as MTL-IUS, but each
task group has its own optimizer over all parameters, so the shared weights carry one set of
moments per group."""

from __future__ import annotations

from mtl_paradigms.methods.strategies._alternating import Alternating

__all__ = ["MTLIO"]


class MTLIO(Alternating):
    """MTL-IO: alternating per-group steps, one optimizer per group (``group_size`` tasks)."""

    name = "mtl_io"
    optimizer_per_group = True
