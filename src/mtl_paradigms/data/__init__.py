"""Dense-prediction data: the MTAN format (NYUv2, Cityscapes), its augmentation, synthetic scenes.

* :mod:`~mtl_paradigms.data.mtan`: load and validate ``{train,val}/<modality>/{i}.npy`` into
  in-memory tensors (:class:`MTANSplit`), and the splits of Elich et al. (2024).
* :mod:`~mtl_paradigms.data.transforms`: batched random scale-crop + flip (MTAN / LibMTL).
* :mod:`~mtl_paradigms.data.synthetic`: procedural rooms / streets in the same on-disk format.
"""

from mtl_paradigms.data.mtan import (
    NUM_CLASSES,
    PAPER_VAL_SIZE,
    TASKS,
    DatasetError,
    MTANSplit,
    dataset_num_classes,
    load_mtan,
    paper_splits,
)
from mtl_paradigms.data.transforms import augment_batch, normalize_normals

__all__ = [
    "NUM_CLASSES",
    "PAPER_VAL_SIZE",
    "TASKS",
    "DatasetError",
    "MTANSplit",
    "augment_batch",
    "dataset_num_classes",
    "load_mtan",
    "normalize_normals",
    "paper_splits",
]
