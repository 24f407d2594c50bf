"""Gradient aggregators: methods that map the per-task gradients to one update direction.

All of them follow the interface and the scale convention of
:mod:`mtl_paradigms.methods.base`: they take per-task shared gradients of shape
``(*batch, T, D)`` and return a direction of shape ``(*batch, D)`` on the scale of the *mean*
task gradient (equal weighting gives weights ``1/T`` summing to one; so do the weights here,
where weights exist).

One module per method, named after it in the registry: ``pcgrad``, ``cagrad``, ``mgda``,
``imtl_g``, ``aligned_mtl``, ``graddrop``, ``nash_mtl``, ``edm``, ``cdtt`` and the aggregators
with learnt or adapted parts: ``gradnorm``, ``imtl``, ``mgda_ub``, ``rotograd``. The solvers on
the probability simplex they share live in the private ``_simplex`` module.
"""

from mtl_paradigms.methods.aggregators.aligned_mtl import AlignedMTL
from mtl_paradigms.methods.aggregators.cagrad import CAGrad
from mtl_paradigms.methods.aggregators.cdtt import CDTT
from mtl_paradigms.methods.aggregators.edm import EDM
from mtl_paradigms.methods.aggregators.graddrop import GradDrop
from mtl_paradigms.methods.aggregators.gradnorm import GradNorm
from mtl_paradigms.methods.aggregators.imtl import IMTL
from mtl_paradigms.methods.aggregators.imtl_g import IMTLG
from mtl_paradigms.methods.aggregators.mgda import MGDA
from mtl_paradigms.methods.aggregators.mgda_ub import MGDAUB
from mtl_paradigms.methods.aggregators.nash_mtl import NashMTL
from mtl_paradigms.methods.aggregators.pcgrad import PCGrad
from mtl_paradigms.methods.aggregators.rotograd import RotoGrad

__all__ = [
    "CDTT", "EDM", "IMTL", "IMTLG", "MGDA", "MGDAUB", "AlignedMTL", "CAGrad", "GradDrop",
    "GradNorm", "NashMTL", "PCGrad", "RotoGrad",
]  # fmt: skip
