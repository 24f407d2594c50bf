"""Hostile and damaged inputs, end to end through ``mtlp`` (issue #15).

* A tar of the CVE-2025-4517 shape: a chain of folders and symbolic links whose resolved path
  exceeds ``PATH_MAX``, then a link that escapes the target through it and a file written
  through that link. ``tarfile``'s ``"data"`` filter misses the escape before Python 3.11.13 /
  3.12.11 / 3.13.4; extraction refuses every link instead, before writing anything.
* ``mtlp download`` with a malformed ``--sha256`` / ``--md5``.
* ``mtlp verify-dataset`` on a dataset with an empty or truncated ``.npy`` file.

Each verb runs in a subprocess (``python -m mtl_paradigms``), so the exit code and the exact
stderr (one error line, no traceback) are those a user sees.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtl_paradigms.data.download import ExtractionError, safe_extract
from mtl_paradigms.data.prepare import prepare_mtan

from . import releases

PATH_MAX = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
STEPS = "abcdefghijklmnop"  # one symbolic link per folder level
LONG_LINK = "l" * 254
NO_LINKS = "dataset archives never contain links"


def cve_2025_4517_tar(extract_dir: int, files: dict[str, bytes] | None = None) -> bytes:
    """A tar that writes ``<extract_dir>/../../outside/pwned.txt`` past the ``"data"`` filter.

    ``extract_dir``: the length of the (resolved) folder it is extracted into. Folder names are
    sized so that the real folders fit in ``PATH_MAX`` but the path the link chain resolves to
    does not: ``os.path.realpath`` then stops resolving and the filter judges the rest of the
    path by its text, while the kernel follows the links out of the target. ``files``: regular
    members added after the exploit (a valid release, so that an unprotected ``prepare-mtan``
    succeeds).
    """
    comp = "d" * max(1, min(255, (PATH_MAX - 127 - extract_dir) // len(STEPS) - 1))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        path = ""
        for step in STEPS:
            folder = tarfile.TarInfo(os.path.join(path, comp))
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            link = tarfile.TarInfo(os.path.join(path, step))
            link.type, link.linkname = tarfile.SYMTYPE, comp
            tar.addfile(link)
            path = os.path.join(path, comp)
        # resolves (by the kernel) to the top of the target; too long for realpath to follow
        linkpath = os.path.join("/".join(STEPS), LONG_LINK)
        top = tarfile.TarInfo(linkpath)
        top.type, top.linkname = tarfile.SYMTYPE, "../" * len(STEPS)
        tar.addfile(top)
        escape = tarfile.TarInfo("escape")  # text: inside the target; kernel: ../../outside
        escape.type, escape.linkname = tarfile.SYMTYPE, f"{linkpath}/../../outside"
        tar.addfile(escape)
        body = b"written outside the target\n"
        pwned = tarfile.TarInfo("escape/pwned.txt")
        pwned.size = len(body)
        tar.addfile(pwned, io.BytesIO(body))
        for name, data in (files or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _is_cve_shape(archive: Path, extract_dir: int) -> bool:
    """The real folders fit in PATH_MAX; the resolved long link does not."""
    with tarfile.open(archive) as tf:
        comp = len(tf.getmembers()[0].name)
    folders = extract_dir + len(STEPS) * (comp + 1)
    return folders < PATH_MAX <= folders + 1 + len(LONG_LINK)


def mtlp(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtl_paradigms", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_error_line(stderr: str) -> str:
    """The message of the only ERROR record; every line of stderr is a log record."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d [\d:,]+ [A-Z]+ \S+: ", line) for line in lines), stderr
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert " ERROR mtlp: " in errors[0]
    return errors[0].split(" ERROR mtlp: ", 1)[1]


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


# ---- CVE-2025-4517 ---------------------------------------------------------------------------


def test_cve_2025_4517_link_chain_is_refused_by_safe_extract(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    extract_dir = len(str(work.resolve())) + len("/.out.12345678.tmp")
    archive = work / "poc.tar"
    archive.write_bytes(cve_2025_4517_tar(extract_dir))
    assert _is_cve_shape(archive, extract_dir)
    with pytest.raises(ExtractionError) as err:
        safe_extract(archive, work / "out")
    message = str(err.value)
    assert message.startswith(f"{archive}: member 'a' is a symbolic link (to 'ddd")
    assert "refusing to extract" in message
    assert NO_LINKS in message
    assert "\n" not in message
    assert _tree(tmp_path) == ["outside", "work", "work/poc.tar"]  # nothing inside or outside


def test_prepare_mtan_refuses_the_cve_2025_4517_tar(tmp_path: Path) -> None:
    """Unprotected, this archive extracts, writes outside/pwned.txt, and the verb exits 0."""
    release = releases.mtan_release(tmp_path / "src", "nyuv2")
    files = {
        f"nyuv2/{p.relative_to(release).as_posix()}": p.read_bytes()
        for p in sorted(release.rglob("*.npy"))
    }
    (tmp_path / "outside").mkdir()
    data = tmp_path / "data"
    data.mkdir()
    extract_dir = len(str(data.resolve())) + len("/.nyuv2.12345678.extract")
    archive = tmp_path / "nyuv2.tar"
    archive.write_bytes(cve_2025_4517_tar(extract_dir, files))
    assert _is_cve_shape(archive, extract_dir)
    before = _tree(tmp_path)

    result = mtlp("prepare-mtan", "--dataset", "nyuv2", "--archive", archive, "--out",
                  data / "nyuv2", cwd=tmp_path)  # fmt: skip

    assert result.returncode == 2, result.stderr
    error = _one_error_line(result.stderr)
    assert error.startswith(f"{archive}: member 'a' is a symbolic link")
    assert NO_LINKS in error
    assert _tree(tmp_path) == before  # no target, no scratch folder, nothing in outside/
    assert list((tmp_path / "outside").iterdir()) == []
    assert list(data.iterdir()) == []


def test_prepare_mtan_refuses_a_link_in_a_nested_archive(tmp_path: Path) -> None:
    """A release zip that holds a tar with one (harmless-looking) link is refused as a whole."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        link = tarfile.TarInfo("readme")
        link.type, link.linkname = tarfile.SYMTYPE, "nyuv2/train"
        tf.addfile(link)
    archive = tmp_path / "outer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner.tgz", buffer.getvalue())
    with pytest.raises(ExtractionError) as err:
        prepare_mtan([archive], "nyuv2", tmp_path / "data" / "nyuv2")
    message = str(err.value)
    assert "inner.tgz: member 'readme' is a symbolic link (to 'nyuv2/train')" in message
    assert NO_LINKS in message
    assert list((tmp_path / "data").iterdir()) == []


# ---- malformed expected checksums ------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [  # more cases, in-process: test_download.py
        ("--sha256", "abc", "64 hexadecimal digits (the sha256 digest)"),
        ("--md5", "z" * 32, "32 hexadecimal digits (the md5 digest)"),
    ],
)
def test_download_with_a_malformed_digest_exits_2_in_one_line(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    out = tmp_path / "f.gz"
    result = mtlp("download", "--source", "mnist", "--file", "train-images-idx3-ubyte.gz",
                  "--out", out, "--mirrors-only", "--url", "http://127.0.0.1:9/f.gz",
                  "--retries", "0", option, value, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = _one_error_line(result.stderr)
    assert error == f"{option} {value!r}: expected {expected}, or '' for none"
    assert _tree(tmp_path) == []


# ---- empty or truncated .npy files -----------------------------------------------------------


@pytest.mark.parametrize("keep", [0, -10], ids=["empty", "truncated"])
def test_verify_dataset_names_an_empty_or_truncated_file(tmp_path: Path, keep: int) -> None:
    root = releases.mtan_release(tmp_path, "nyuv2")
    damaged = root / "train" / "depth" / "2.npy"
    damaged.write_bytes(damaged.read_bytes()[:keep])
    report = tmp_path / "report.json"
    result = mtlp("verify-dataset", "--dataset", "nyuv2", "--root", root, "--out", report,
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    error = _one_error_line(result.stderr)
    assert error.startswith(f"{damaged}: cannot be read as a .npy array (")
    assert "mtlp prepare-mtan" in error
    why = "the file is empty: 0 bytes" if keep == 0 else "truncated: "
    assert error.startswith(f"{damaged}: cannot be read as a .npy array ({why}")
    assert not report.exists()
