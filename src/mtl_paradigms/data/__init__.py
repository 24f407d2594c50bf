"""Data: on-disk formats, their loaders, downloads, and synthetic stand-ins.

* :mod:`~mtl_paradigms.data.mtan`: load and validate ``{train,val}/<modality>/{i}.npy`` into
  in-memory tensors (:class:`MTANSplit`), and the splits of Elich et al. (2024).
* :mod:`~mtl_paradigms.data.transforms`: batched random scale-crop + flip (MTAN / LibMTL).
* :mod:`~mtl_paradigms.data.synthetic`: procedural rooms / streets in the same on-disk format,
  a CelebA-format attribute set and MNIST-format digits.
* :mod:`~mtl_paradigms.data.celeba`, :mod:`~mtl_paradigms.data.mnist`: CelebA (prepared once,
  memory-mapped) and Multi-MNIST.
* :mod:`~mtl_paradigms.data.download`, :mod:`~mtl_paradigms.data.sources`,
  :mod:`~mtl_paradigms.data.prepare`: resumable verified downloads, safe extraction, releases.
* :mod:`~mtl_paradigms.data.splits`: a dataset's tasks and splits, for the trainer.

The names below are imported on first use (PEP 562), so ``import mtl_paradigms.data.download``
does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "NUM_CLASSES": "mtl_paradigms.data.mtan",
    "PAPER_VAL_SIZE": "mtl_paradigms.data.mtan",
    "TASKS": "mtl_paradigms.data.mtan",
    "DatasetError": "mtl_paradigms.data.mtan",
    "MTANSplit": "mtl_paradigms.data.mtan",
    "dataset_num_classes": "mtl_paradigms.data.mtan",
    "load_mtan": "mtl_paradigms.data.mtan",
    "paper_splits": "mtl_paradigms.data.mtan",
    "augment_batch": "mtl_paradigms.data.transforms",
    "normalize_normals": "mtl_paradigms.data.transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
