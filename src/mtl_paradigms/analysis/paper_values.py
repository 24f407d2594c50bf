"""Numbers reported by Elich et al. (2024) for the main training grid, as data.

Source: Elich, Kirchdorfer, Köhler, Schott, "Examining Common Paradigms in Multi-Task
Learning", GCPR 2024 (arXiv 2311.04698v5), as transcribed in the project's
``spec/elich2024.md``: Table 2 (Pareto-optimal run counts), the Δm examples of Tables A4–A7
and the single-task (STL, Adam) reference metrics of Tables A4–A7. Only the values that the
spec states are here; everything else (e.g. Table A2's per-method counts) is absent, and a
look-up of an absent value returns ``None``.

Keys follow the run table (``runs.csv``): panels are ``(dataset, arch)`` with datasets
``"cityscapes"`` / ``"nyuv2"`` and architectures ``"segnet"`` / ``"deeplabv3"``; metric keys
are ``task/metric``; optimizers ``"adam"`` / ``"sgd"`` (SGD with momentum). Method names are
matched loosely (case, ``-``, ``_`` and spaces ignored), so ``"aligned_mtl"``,
``"alignedmtl"`` and ``"Aligned-MTL"`` all find the Aligned-MTL value.

Units are the paper's: Δm in percent (lower is better); the Cityscapes relative depth error
is printed in the paper on a different scale from the absolute one (29.88 / 47.37) and is
kept as printed.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

Panel = tuple[str, str]

SOURCE: Final = "Elich et al. 2024 (GCPR; arXiv 2311.04698v5)"

CS_SEGNET: Final[Panel] = ("cityscapes", "segnet")
CS_DLV3: Final[Panel] = ("cityscapes", "deeplabv3")
NYU_SEGNET: Final[Panel] = ("nyuv2", "segnet")
NYU_DLV3: Final[Panel] = ("nyuv2", "deeplabv3")
PANELS: Final = (CS_SEGNET, CS_DLV3, NYU_SEGNET, NYU_DLV3)

TABLE2_COUNTS: Final = MappingProxyType(
    {
        # (Adam PO all runs, Adam PO w.r.t. SGD only, SGD PO all runs, SGD PO w.r.t. Adam only)
        CS_SEGNET: {"adam_po_all": 5, "adam_po_vs_sgd": 24, "sgd_po_all": 0, "sgd_po_vs_adam": 0},
        CS_DLV3: {"adam_po_all": 10, "adam_po_vs_sgd": 24, "sgd_po_all": 0, "sgd_po_vs_adam": 0},
        NYU_SEGNET: {"adam_po_all": 11, "adam_po_vs_sgd": 21, "sgd_po_all": 1, "sgd_po_vs_adam": 1},
        NYU_DLV3: {"adam_po_all": 16, "adam_po_vs_sgd": 21, "sgd_po_all": 6, "sgd_po_vs_adam": 6},
    }
)
"""Table 2: number of Pareto-optimal runs per panel."""


def _per_panel(values: tuple[float, float, float, float]) -> dict[Panel, float]:
    return dict(zip(PANELS, values, strict=True))


DELTA_M: Final = MappingProxyType(
    {
        # (method, optimizer) -> {panel: Δm in %}; panel order CS-SegNet, CS-DLV3, NYU-SegNet,
        # NYU-DLV3 as in the spec. AdaTask runs with (per-task) Adam only.
        ("ew", "adam"): _per_panel((79.43, -0.80, 10.08, 2.70)),
        ("ew", "sgd"): _per_panel((86.24, 46.88, 12.84, 5.21)),
        ("uw", "adam"): _per_panel((5.44, -3.65, 5.42, 1.59)),
        ("imtl", "adam"): _per_panel((16.55, -3.38, 2.06, -0.39)),
        ("cagrad", "adam"): _per_panel((35.81, -2.59, -0.65, 0.10)),
        ("aligned_mtl", "adam"): _per_panel((32.76, -1.79, -0.86, -0.33)),
        ("adatask", "adam"): _per_panel((21.28, -1.77, 1.00, -0.39)),
    }
)
"""Tables A4–A7: Δm (%, lower is better) at the selected learning rate, mean over 3 seeds."""

STL_REFERENCE: Final = MappingProxyType(
    {
        CS_SEGNET: {
            "segmentation/miou": 0.7122,
            "segmentation/pixacc": 0.9221,
            "depth/abs_err": 0.0134,
            "depth/rel_err": 29.88,
        },
        CS_DLV3: {
            "segmentation/miou": 0.7203,
            "segmentation/pixacc": 0.9253,
            "depth/abs_err": 0.0132,
            "depth/rel_err": 47.37,
        },
        NYU_SEGNET: {
            "segmentation/miou": 0.392,
            "segmentation/pixacc": 0.646,
            "depth/abs_err": 0.607,
            "depth/rel_err": 0.258,
            "normal/mean": 24.74,
            "normal/median": 18.49,
            "normal/within_11.25": 0.308,
            "normal/within_22.5": 0.582,
            "normal/within_30": 0.700,
        },
        NYU_DLV3: {
            "segmentation/miou": 0.552,
            "segmentation/pixacc": 0.767,
            "depth/abs_err": 0.365,
            "depth/rel_err": 0.152,
            "normal/mean": 21.16,
            "normal/median": 14.52,
            "normal/within_11.25": 0.402,
            "normal/within_22.5": 0.668,
            "normal/within_30": 0.768,
        },
    }
)
"""Tables A4–A7: single-task baselines (Adam), test metrics per panel."""


def squash(name: str) -> str:
    """Method name reduced for loose matching: lower case without ``-``, ``_`` and spaces."""
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def paper_delta_m(dataset: str, arch: str, method: str, optimizer: str) -> float | None:
    """The paper's Δm (%) for ``method`` with ``optimizer`` on ``dataset``/``arch``, or None."""
    for (m, opt), per_panel in DELTA_M.items():
        if squash(m) == squash(method) and opt == optimizer.lower():
            return per_panel.get((dataset.lower(), arch.lower()))
    return None


def paper_table2(dataset: str, arch: str) -> dict[str, int] | None:
    """The paper's Table 2 counts for ``dataset``/``arch`` (keys as in TABLE2_COUNTS), or None."""
    counts = TABLE2_COUNTS.get((dataset.lower(), arch.lower()))
    return dict(counts) if counts is not None else None


def paper_stl(dataset: str, arch: str) -> dict[str, float] | None:
    """The paper's STL reference metrics for ``dataset``/``arch`` (``task/metric`` keys)."""
    ref = STL_REFERENCE.get((dataset.lower(), arch.lower()))
    return dict(ref) if ref is not None else None
