"""From downloaded archives to dataset folders: MTAN releases (NYUv2, Cityscapes).

:func:`prepare_mtan` extracts an archive safely (:func:`~mtl_paradigms.data.download.
safe_extract` rules) into a temporary folder, extracts archives found inside it (Dropbox sends
a shared folder as a zip that may itself hold the dataset's zip), finds the folder that holds
``train/`` and ``val/`` with every modality, checks the layout
(:func:`~mtl_paradigms.data.mtan.check_layout`) and renames that folder into place. Nothing
is left at the target when any step fails.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mtl_paradigms.data.download import archive_kind, extract_into
from mtl_paradigms.data.mtan import FOLDERS, SPLITS, DatasetError, check_layout

logger = logging.getLogger(__name__)

MAX_DEPTH = 4
MAX_NESTED = 8


def _find_release(tree: Path, dataset: str) -> Path | None:
    candidates = [tree]
    for depth in range(MAX_DEPTH + 1):
        # train/image and val/image mark a release; check_layout then names what is missing
        found = [c for c in candidates if all((c / s / "image").is_dir() for s in SPLITS)]
        if found:
            if len(found) > 1:
                raise DatasetError(f"several {dataset} releases in one archive: {found}")
            return found[0]
        if depth == MAX_DEPTH:
            break
        candidates = [d for c in candidates for d in sorted(c.iterdir()) if d.is_dir()]
    return None


def _nested_archives(tree: Path) -> list[Path]:
    return [
        p
        for p in sorted(tree.rglob("*"))
        if p.is_file() and p.suffix.lower() in (".zip", ".tar", ".tgz", ".gz") and archive_kind(p)
    ]


def prepare_mtan(
    archives: Sequence[str | os.PathLike[str]],
    dataset: str,
    out_dir: str | os.PathLike[str],
    expect_sizes: bool = False,
) -> dict[str, int]:
    """Extract ``archives`` and put the ``dataset`` release at ``out_dir``; return its counts."""
    if dataset not in FOLDERS:
        raise ValueError(f"dataset must be one of {list(FOLDERS)}, got {dataset!r}")
    target = Path(out_dir)
    if target.exists():
        raise FileExistsError(f"{target}: already exists; remove it to rebuild")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extract", dir=target.parent))
    try:
        for archive in archives:
            extract_into(archive, work)
        release = _find_release(work, dataset)
        for _ in range(MAX_NESTED):
            if release is not None:
                break
            nested = _nested_archives(work)
            if not nested:
                break
            for inner in nested:
                logger.info("extracting the nested archive %s", inner.relative_to(work))
                extract_into(inner, inner.parent)
                inner.unlink()
            release = _find_release(work, dataset)
        if release is None:
            folders = "{train,val}/{" + ",".join(FOLDERS[dataset]) + "}/<i>.npy"
            raise DatasetError(
                f"{', '.join(map(str, archives))}: no {dataset} release inside (expected "
                f"{folders} within {MAX_DEPTH} folder levels)"
            )
        try:
            counts = check_layout(release, dataset, expect_sizes=expect_sizes)
        except DatasetError as err:  # name the file inside the archive, not the scratch folder
            inside = ", ".join(Path(a).name for a in archives)
            raise DatasetError(str(err).replace(f"{work}/", f"{inside}: ")) from err
        os.rename(release, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("%s: %s release with %s images", target, dataset, counts)
    return counts
