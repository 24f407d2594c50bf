"""Reading one dataset ``.npy`` file, with an error that names it and says what to do.

``np.load`` reports a damaged file without its name, and with a different exception for each
kind of damage: an empty file raises ``EOFError``, a cut header or payload ``ValueError``, a
folder or an unreadable file ``OSError``, something else ``UnpicklingError`` or
``BadZipFile``. :func:`load_npy` checks the size against the header first (so a truncated file
is reported as such, before anything large is allocated) and turns every failure into one
:class:`~mtl_paradigms.data.errors.DatasetError` line: ``<path>: cannot be read as a .npy array
(<why>); <what to do>``.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.lib import format as npformat

from mtl_paradigms.data.errors import DatasetError

#: what to do about a damaged file, when the caller has no better advice.
REPAIR = (
    "the file is damaged or incomplete (an interrupted download, extraction or copy): delete "
    "it, or the whole dataset folder, and prepare the dataset again (download it again if its "
    "archive is damaged too)"
)
_LOAD_ERRORS = (EOFError, ValueError, OSError, pickle.UnpicklingError, zipfile.BadZipFile)


def _size_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold the array its header announces; ``None`` if it may."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty: 0 bytes"
    if size < npformat.MAGIC_LEN:
        return f"only {size} bytes, too short for a .npy header"
    with open(path, "rb") as handle:
        head = handle.read(npformat.MAGIC_LEN)
        if not head.startswith(npformat.MAGIC_PREFIX):
            if head.startswith(b"PK\x03\x04"):
                return None  # a zip: np.load opens it as an .npz, refused below
            return f"not a .npy file: it starts with {head!r}"
        handle.seek(0)
        try:
            version = npformat.read_magic(handle)
        except ValueError as err:
            return f"damaged header: {err}"
        try:
            if version == (1, 0):
                shape, _, dtype = npformat.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npformat.read_array_header_2_0(handle)
            else:
                return None
        except ValueError as err:
            return f"truncated or damaged header: {err}"
        if dtype.hasobject:
            return None
        need = handle.tell() + math.prod(shape) * dtype.itemsize
    if size < need:
        return f"truncated: {size} bytes, its header announces {need}"
    return None


def load_npy(
    path: str | os.PathLike[str],
    mmap_mode: Literal["r"] | None = None,
    advice: str = REPAIR,
) -> np.ndarray:
    """The array of the ``.npy`` file ``path`` (no pickles; ``mmap_mode="r"`` maps it).

    Raise :class:`DatasetError` ``"<path>: cannot be read as a .npy array (<why>); <advice>"``
    for an empty, truncated or unreadable file, and for a file that holds no single array.
    """
    file = Path(path)
    try:
        problem = _size_problem(file)
        if problem is None:
            array = np.load(file, mmap_mode=mmap_mode, allow_pickle=False)
            if isinstance(array, np.ndarray):
                return array
            if hasattr(array, "close"):
                array.close()
            problem = f"it holds a {type(array).__name__}, not a single array"
    except _LOAD_ERRORS as err:
        problem = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    problem = " ".join(problem.split())  # one line, whatever numpy's message holds
    raise DatasetError(f"{file}: cannot be read as a .npy array ({problem}); {advice}")
