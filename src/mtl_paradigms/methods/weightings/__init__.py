"""Loss weightings: methods that map the per-task losses to task weights.

All follow the scale convention of :mod:`mtl_paradigms.methods.base`: weights live on the scale
of the *mean* over tasks, so the weights of equal weighting are ``1/T`` each and sum to 1. Where
the original paper uses the *sum* scale (DWA's ``T * softmax``, IMTL-L's ``e^{s_t}``), the
weights here are that paper's weights divided by ``T``; with SGD this is a factor ``T`` in the
effective learning rate, with Adam it changes nothing.

One module per method, named after it in the registry: ``ew``, ``fixed``, ``uw``, ``uwo``,
``rlw``, ``si``, ``imtl_l``, ``dwa`` and the weightings that need more from the trainer than the
losses: ``famo`` (losses after the step) and ``auto_lambda`` (a validation meta step, with its
own updater).
"""

from mtl_paradigms.methods.weightings.auto_lambda import AutoLambda, AutoLambdaUpdater
from mtl_paradigms.methods.weightings.dwa import DWA
from mtl_paradigms.methods.weightings.ew import EW
from mtl_paradigms.methods.weightings.famo import FAMO
from mtl_paradigms.methods.weightings.fixed import FixedWeights
from mtl_paradigms.methods.weightings.imtl_l import IMTLL
from mtl_paradigms.methods.weightings.rlw import RLW
from mtl_paradigms.methods.weightings.si import SI
from mtl_paradigms.methods.weightings.uw import UW
from mtl_paradigms.methods.weightings.uwo import UWO

__all__ = [
    "DWA", "EW", "FAMO", "IMTLL", "RLW", "SI", "UW", "UWO", "AutoLambda", "AutoLambdaUpdater",
    "FixedWeights",
]  # fmt: skip
