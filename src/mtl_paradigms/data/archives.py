"""Safe extraction of dataset archives (zip and tar, any compression).

Every member is checked before anything is written; one bad member refuses the whole archive
with an :class:`ExtractionError` (a ``ValueError``: ``mtlp`` reports it in one line) naming the
archive and the member. Refused:

* names that could leave the target: absolute paths, ``..`` components, drive letters, NUL;
* links of any kind: tar symbolic links and hard links (``issym()``/``islnk()``), zip entries
  whose Unix mode (the high 16 bits of ``external_attr``) is ``S_IFLNK``. No real dataset
  archive holds a link, and refusing them all closes the escapes that checking link targets
  misses, on every Python version (CVE-2025-4517 and relatives: a chain of symbolic links whose
  resolved path exceeds ``PATH_MAX`` defeats ``tarfile``'s ``"data"`` filter before Python
  3.11.13 / 3.12.11 / 3.13.4);
* devices, FIFOs and any other member that is neither a regular file nor a folder.

Tar archives are then extracted through :mod:`tarfile`'s ``"data"`` filter as well.
:func:`safe_extract` extracts into a temporary folder beside the target, renamed into place on
success; a refused archive leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from mtl_paradigms.io import atomic_directory

logger = logging.getLogger(__name__)

COPY_BYTES = 1 << 16
_SHOWN_CHARS = 100  # longer member and link names are elided in messages
_NO_LINKS = (
    "dataset archives never contain links, so this one is corrupt or malicious: download it "
    "again from a trusted source"
)


class ExtractionError(ValueError):
    """An archive is unsafe (absolute path, ``..``, link, device) or unreadable."""


def _show(name: str) -> str:
    """``repr(name)``, its middle elided when long (keeps messages on one readable line)."""
    if len(name) > _SHOWN_CHARS:
        half = _SHOWN_CHARS // 2
        name = f"{name[:half]}…{name[-half:]}"
    return repr(name)


def archive_kind(path: str | os.PathLike[str]) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` (by content, not by name)."""
    p = Path(path)
    if zipfile.is_zipfile(p):
        return "zip"
    if tarfile.is_tarfile(p):
        return "tar"
    return None


def check_member_name(name: str, archive: Path) -> PurePosixPath:
    """The member's relative path; raise :class:`ExtractionError` if it could leave the target."""
    normalized = name.replace("\\", "/")
    posix = PurePosixPath(normalized)
    if (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized)
        or ".." in posix.parts
        or "\x00" in normalized
    ):
        raise ExtractionError(
            f"{archive}: unsafe member {_show(name)} (absolute path or '..'); refusing to "
            "extract. The archive is corrupt or malicious: download it again from a trusted source"
        )
    return posix


def _refuse_link(archive: Path, name: str, kind: str, target: str | None) -> ExtractionError:
    to = f" (to {_show(target)})" if target is not None else ""
    return ExtractionError(
        f"{archive}: member {_show(name)} is a {kind}{to}; refusing to extract: {_NO_LINKS}"
    )


def _refuse_special(archive: Path, name: str, kind: str) -> ExtractionError:
    return ExtractionError(
        f"{archive}: member {_show(name)} is a special file ({kind}); refusing to extract: "
        "dataset archives hold only files and folders"
    )


def _check_zip_member(info: zipfile.ZipInfo, archive: Path) -> None:
    check_member_name(info.filename, archive)
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded (a file)
    if kind == stat.S_IFLNK:  # the zip format has no hard links
        raise _refuse_link(archive, info.filename, "symbolic link", None)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise _refuse_special(archive, info.filename, f"Unix file type {kind:#o}")


def _extract_zip(archive: Path, out: Path) -> int:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything
            _check_zip_member(info, archive)
        for info in members:
            path = out.joinpath(*check_member_name(info.filename, archive).parts)
            if info.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_BYTES)
    return len(members)


def _check_tar_member(member: tarfile.TarInfo, archive: Path, out: Path) -> None:
    check_member_name(member.name, archive)
    if member.issym():
        raise _refuse_link(archive, member.name, "symbolic link", member.linkname)
    if member.islnk():
        raise _refuse_link(archive, member.name, "hard link", member.linkname)
    if not (member.isreg() or member.isdir()):
        raise _refuse_special(archive, member.name, f"device, FIFO or tar type {member.type!r}")
    try:
        tarfile.data_filter(member, str(out))
    except tarfile.FilterError as err:
        raise ExtractionError(
            f"{archive}: unsafe member {_show(member.name)} ({err}); refusing to extract"
        ) from err


def _extract_tar(archive: Path, out: Path) -> int:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:  # check everything before writing anything
            _check_tar_member(member, archive, out)
        tf.extractall(out, members=members, filter="data")
    return len(members)


def extract_into(archive: str | os.PathLike[str], out: str | os.PathLike[str]) -> int:
    """Extract ``archive`` (zip or tar, any compression) into the existing folder ``out``."""
    src = Path(archive)
    kind = archive_kind(src)
    try:
        if kind == "zip":
            return _extract_zip(src, Path(out))
        if kind == "tar":
            return _extract_tar(src, Path(out))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        raise ExtractionError(f"{src}: cannot be read as an archive ({err})") from err
    raise ExtractionError(f"{src}: neither a zip nor a tar archive")


def safe_extract(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Extract ``archive`` into the new folder ``target``, atomically (see the module doc)."""
    with atomic_directory(target) as tmp:
        count = extract_into(archive, tmp)
    logger.info("extracted %d members of %s into %s", count, archive, target)
    return Path(target)
