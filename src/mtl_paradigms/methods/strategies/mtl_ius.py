"""MTL-IUS ``"mtl_ius"`` (Pascal et al., 2021): for every batch, one step per task group on
the group's loss, with one shared optimizer (the same batch for all groups)."""

from __future__ import annotations

from mtl_paradigms.methods.strategies._alternating import Alternating

__all__ = ["MTLIUS"]


class MTLIUS(Alternating):
    """MTL-IUS: alternating per-group steps with one shared optimizer (``group_size`` tasks)."""

    name = "mtl_ius"
    optimizer_per_group = False
