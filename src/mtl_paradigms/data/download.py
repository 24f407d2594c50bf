"""Downloads and archives: resumable, verified, atomic, with safe extraction.

Download (:func:`download_file`)
--------------------------------
* The bytes go to ``<dest>.part``; only a file whose checksums match is renamed to ``<dest>``,
  so a failed or interrupted download never leaves a file that looks complete.
* Resumable: an existing ``.part`` is continued with an HTTP ``Range`` request. A server that
  ignores the range (``200``) restarts the file; a short body (connection dropped) is retried
  from where it stopped.
* Retries with exponential backoff (``backoff * 2**attempt`` seconds) on connection errors,
  timeouts, truncated bodies, HTTP 429 and 5xx; HTTP 4xx other than 429 is final for that URL.
  Several URLs (mirrors) are tried in order.
* Checksums: the known ``md5``/``sha256`` (:mod:`mtl_paradigms.data.sources`) are checked;
  where no sha256 is known, the first successful download records it in a ``checksums.json``
  (key -> sha256, size, url) and later downloads of the same key are checked against it.
* Google Drive: the "cannot scan this file for viruses" page of large files is answered (its
  confirm form, or the older ``download_warning`` cookie) and the real file is fetched.
* Errors (:class:`DownloadError`, :class:`ChecksumError`) name the URL, the expected and actual
  checksum and what to do (another mirror, or a manual download to the exact path).

Archives (:func:`safe_extract`)
-------------------------------
Safe extraction lives in :mod:`mtl_paradigms.data.archives` (re-exported here): every member is
checked first; absolute paths, ``..``, links of any kind (symbolic or hard, tar or zip) and
devices refuse the whole archive; extraction goes to a temporary folder beside the target,
renamed into place on success, so a refused archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html.parser
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse

import requests
from tqdm.auto import tqdm

from mtl_paradigms.data.archives import (  # noqa: F401 - re-exported, the former home
    ExtractionError,
    _extract_tar,
    _extract_zip,
    archive_kind,
    check_member_name,
    extract_into,
    safe_extract,
)
from mtl_paradigms.io import write_json

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
USER_AGENT = "mtl-paradigms (+https://pypi.org/project/requests/)"
PART_SUFFIX = ".part"
FINAL_HTTP = frozenset({400, 401, 403, 404, 405, 410, 451})
_DRIVE_HOSTS = ("drive.google.com", "docs.google.com", "drive.usercontent.google.com")


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names the URL(s) and what to do."""


class ChecksumError(DownloadError):
    """A file's checksum differs from the known or recorded one."""


class _TransientError(Exception):
    """A failure worth retrying (dropped connection, 5xx, 429, truncated body)."""


#: hexadecimal digits of a full digest.
DIGEST_DIGITS: dict[str, int] = {"md5": 32, "sha256": 64}


def check_digest(value: str | None, kind: str, what: str) -> str | None:
    """``value`` as a lower-case ``kind`` digest, ``None`` for ``None`` or ``''`` (no check).

    Raise ``ValueError`` naming ``what`` (an option, a field) unless ``value`` is exactly the
    digest's number of hexadecimal digits (:data:`DIGEST_DIGITS`).
    """
    if value is None or value == "":
        return None
    digits = DIGEST_DIGITS[kind]
    if not isinstance(value, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{digits}}}", value):
        raise ValueError(
            f"{what} {value!r}: expected {digits} hexadecimal digits (the {kind} digest), "
            "or '' for none"
        )
    return value.lower()


@dataclass(frozen=True)
class Checksums:
    """Known checksums of one file (hex digests); ``None`` where unknown.

    ``md5`` must be 32 and ``sha256`` 64 hexadecimal digits, ``sha256_prefix`` 1 to 64 (else
    ``ValueError``); ``''`` counts as unknown.
    """

    md5: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # e.g. torchvision checkpoints name the first 8 digits

    def __post_init__(self) -> None:
        for kind in DIGEST_DIGITS:
            digest = check_digest(getattr(self, kind), kind, f"Checksums.{kind}")
            object.__setattr__(self, kind, digest)
        prefix = self.sha256_prefix
        if prefix is not None and not re.fullmatch(r"[0-9a-fA-F]{1,64}", str(prefix)):
            raise ValueError(
                f"Checksums.sha256_prefix {prefix!r}: expected 1 to 64 hexadecimal digits"
            )


# --------------------------------------------------------------------------------------------
# Hashing and the record of first-download checksums
# --------------------------------------------------------------------------------------------


def file_digests(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"md5": ..., "sha256": ...}`` of a file, read once."""
    md5, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK_BYTES):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_record(record: str | os.PathLike[str] | None) -> dict[str, dict[str, object]]:
    """The recorded checksums (key -> entry); empty when there is no record file."""
    if record is None or not Path(record).is_file():
        return {}
    try:
        data = json.loads(Path(record).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DownloadError(
            f"{record}: the checksum record is not valid JSON ({err}); fix or delete it"
        ) from err
    if not isinstance(data, dict):
        raise DownloadError(f"{record}: the checksum record must be a JSON object")
    return data


def recorded_sha256(record: str | os.PathLike[str] | None, key: str) -> str | None:
    """The sha256 recorded for ``key``; ``None`` if none. A malformed one raises DownloadError."""
    entry = read_record(record).get(key)
    if not isinstance(entry, dict) or "sha256" not in entry:
        return None
    value = entry["sha256"]
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise DownloadError(
            f"{record}: the sha256 recorded for {key!r} is {value!r}, expected 64 hexadecimal "
            f"digits; fix or delete the entry {key!r}"
        )
    return value.lower()


def record_checksum(
    record: str | os.PathLike[str], key: str, sha256: str, size: int, source: str
) -> None:
    """Add ``key`` to the record (atomically, under a lock); an existing entry is kept."""
    path = Path(record)
    with _locked(path):
        data = read_record(path)
        if key in data:
            return
        data[key] = {
            "sha256": sha256,
            "size": size,
            "source": source,
            "recorded": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        write_json(path, data)
    logger.info("recorded sha256 %s of %s in %s", sha256, key, path)


def verify_file(
    path: Path,
    known: Checksums,
    record: str | os.PathLike[str] | None,
    key: str,
    source: str,
) -> dict[str, str]:
    """Check ``path`` against the known and recorded checksums; raise :class:`ChecksumError`.

    ``source`` (a URL or a local path) only appears in the message.
    """
    actual = file_digests(path)
    expected: list[tuple[str, str, str]] = []
    if known.md5:
        expected.append(("md5", known.md5.lower(), "known"))
    if known.sha256:
        expected.append(("sha256", known.sha256.lower(), "known"))
    if not known.sha256 and (sha := recorded_sha256(record, key)) is not None:
        expected.append(("sha256", sha.lower(), f"recorded in {record} on the first download"))
    if known.sha256_prefix and not known.sha256:
        prefix = known.sha256_prefix.lower()
        expected.append(("sha256", prefix + "…", "known prefix"))
    for kind, want, where in expected:
        ok = actual[kind].startswith(want[:-1]) if want.endswith("…") else actual[kind] == want
        if not ok:
            raise ChecksumError(
                f"{source}: {kind} mismatch for {key}: expected {want} ({where}), got "
                f"{actual[kind]} ({path.stat().st_size} bytes). The file is corrupt or not the "
                "one expected. Try a mirror (config data.mirrors), or download it by hand and "
                "give its path (config data.local)"
                + (
                    f"; if the source changed on purpose, delete the entry {key!r} of {record}."
                    if where.startswith("recorded")
                    else "."
                )
            )
    return actual


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def gdrive_url(file_id: str) -> str:
    """The direct-download URL of a Google Drive file id."""
    return f"https://drive.google.com/uc?{urlencode({'export': 'download', 'id': file_id})}"


class _FormParser(html.parser.HTMLParser):
    """Collects the action and the hidden inputs of the first ``<form>`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and not self._done:
            self._in_form = True
            self.action = values.get("action")
        elif tag == "input" and self._in_form and values.get("name"):
            self.inputs[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._in_form:
            self._in_form, self._done = False, True


def drive_confirm_url(url: str, page: str, cookies: dict[str, str]) -> str | None:
    """The URL that confirms a Google Drive download, from its warning page; ``None`` if none.

    Current pages carry a form (action ``drive.usercontent.google.com/download`` with hidden
    ``id``, ``export``, ``confirm``, ``uuid``); older ones set a ``download_warning*`` cookie
    whose value is the confirm token.
    """
    parser = _FormParser()
    parser.feed(page)
    if parser.action and "confirm" in parser.inputs:
        return f"{parser.action}?{urlencode(parser.inputs)}"
    for name, value in cookies.items():
        if name.startswith("download_warning"):
            query = parse_qs(urlparse(url).query)
            file_id = query.get("id", [""])[0]
            params = {"export": "download", "id": file_id, "confirm": value}
            return f"https://drive.google.com/uc?{urlencode(params)}"
    match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
    if match and "id=" in url:
        return f"{url}&confirm={match.group(1)}"
    return None


def _is_drive(url: str) -> bool:
    return urlparse(url).hostname in _DRIVE_HOSTS


def _total_from(response: requests.Response, offset: int) -> int | None:
    content_range = response.headers.get("Content-Range", "")
    match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range)
    if match and match.group(3) != "*":
        return int(match.group(3))
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return offset + int(length)
    return None


def _fetch_once(
    session: requests.Session,
    url: str,
    part: Path,
    timeout: float,
    progress: bool,
    label: str,
) -> None:
    """One attempt to bring ``part`` to the full file at ``url``; raise :class:`_TransientError`."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, headers=headers, stream=True, timeout=timeout)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _TransientError(f"cannot connect ({err.__class__.__name__}: {err})") from err
    with response:
        status = response.status_code
        if status == 416 and offset:
            match = re.match(r"bytes \*/(\d+)", response.headers.get("Content-Range", ""))
            if match and int(match.group(1)) == offset:
                return  # the part file is already complete
            part.unlink()
            raise _TransientError("the server refused to resume; starting over")
        if status in FINAL_HTTP or (400 <= status < 500 and status != 429):
            raise DownloadError(f"{url}: HTTP {status} {response.reason}")
        if status == 429 or status >= 500:
            raise _TransientError(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(f"{url}: unexpected HTTP {status} {response.reason}")
        if _is_drive(url) and "text/html" in response.headers.get("Content-Type", ""):
            page = response.text
            confirm = drive_confirm_url(url, page, session.cookies.get_dict())
            if confirm is None:
                raise DownloadError(
                    f"{url}: Google Drive answered with a web page instead of the file (quota "
                    "exceeded, or the file is no longer shared). Download it in a browser"
                )
            logger.info("%s: answering the Google Drive confirmation", url)
            _fetch_once(session, confirm, part, timeout, progress, label)
            return
        if status == 206:
            start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if start is None or int(start.group(1)) != offset:
                part.unlink()
                raise _TransientError("the server answered the range request with other bytes")
            mode = "ab"
        else:
            if offset:
                logger.info("%s: the server does not resume; restarting from byte 0", url)
            offset, mode = 0, "wb"
        total = _total_from(response, offset)
        written = offset
        with (
            open(part, mode) as handle,
            tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, desc=label,
                disable=not progress, leave=False,
            ) as bar,
        ):  # fmt: skip
            try:
                for block in response.iter_content(CHUNK_BYTES):
                    handle.write(block)
                    written += len(block)
                    bar.update(len(block))
            except (requests.RequestException, OSError) as err:
                raise _TransientError(
                    f"connection broken after {written} of {total or '?'} bytes ({err})"
                ) from err
        if total is not None and written != total:
            raise _TransientError(f"connection closed after {written} of {total} bytes")


def _fetch(
    session: requests.Session,
    url: str,
    part: Path,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
    label: str,
    sleep: Callable[[float], None],
) -> None:
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_once(session, url, part, timeout, progress, label)
            return
        except _TransientError as err:
            last = err
            if attempt < retries:
                delay = backoff * 2**attempt
                logger.warning(
                    "%s: %s; retry %d/%d in %.1f s", url, err, attempt + 1, retries, delay
                )
                sleep(delay)
    kept = f"; the partial file {part} is kept, run again to resume" if part.exists() else ""
    raise DownloadError(f"{url}: gave up after {retries + 1} attempts ({last}){kept}")


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike[str],
    checksums: Checksums | None = None,
    record: str | os.PathLike[str] | None = None,
    key: str | None = None,
    retries: int = 4,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool | None = None,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Fetch the first of ``urls`` that works into ``dest``, verified; return ``dest``.

    An existing ``dest`` is verified and kept. ``record``/``key``: the checksum record and this
    file's key in it (default: the file name). See the module doc for resume, retries and errors.
    """
    target = Path(dest)
    key = key or target.name
    checksums = checksums or Checksums()
    if not urls:
        raise DownloadError(f"{target}: no URL to download from")
    if target.exists():
        verify_file(target, checksums, record, key, str(target))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + PART_SUFFIX)
    show = progress if progress is not None else None
    own_session = session is None
    http = session or requests.Session()
    http.headers.setdefault("User-Agent", USER_AGENT)
    failures: list[str] = []
    all_checksums = True
    try:
        for url in urls:
            for fresh in (False, True):
                resumed = part.exists() and part.stat().st_size > 0
                try:
                    _fetch(
                        http, url, part, retries, backoff, timeout,
                        progress=bool(show) if show is not None else _tty(), label=target.name,
                        sleep=sleep,
                    )  # fmt: skip
                    actual = verify_file(part, checksums, record, key, url)
                except ChecksumError as err:
                    part.unlink(missing_ok=True)
                    if resumed and not fresh:
                        logger.warning("%s: the resumed file fails its checksum; restarting", url)
                        continue
                    failures.append(str(err))
                    break
                except DownloadError as err:
                    failures.append(str(err))
                    all_checksums = False
                    break
                size = part.stat().st_size
                if record is not None and not checksums.sha256:
                    record_checksum(record, key, actual["sha256"], size, url)
                os.replace(part, target)
                logger.info("downloaded %s (%d bytes, sha256 %s)", target, size, actual["sha256"])
                return target
    finally:
        if own_session:
            http.close()
    error = ChecksumError if all_checksums else DownloadError
    raise error(
        f"could not download {target.name}:\n  "
        + "\n  ".join(failures)
        + f"\nDownload it by hand and put it at {target} (or name it in config data.local), "
        "or add a working mirror URL (config data.mirrors)."
    )


def _tty() -> bool:
    import sys

    return sys.stderr.isatty()


def link_local(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    checksums: Checksums | None = None,
    record: str | os.PathLike[str] | None = None,
    key: str | None = None,
) -> Path:
    """Use a file already on disk: verify it, then symlink ``dest`` to it (atomically)."""
    src = Path(source).expanduser().resolve()
    target = Path(dest)
    key = key or target.name
    checksums = checksums or Checksums()
    if not src.is_file():
        raise DownloadError(f"{src}: the local file named for {key} does not exist")
    actual = verify_file(src, checksums, record, key, str(src))
    if record is not None and not checksums.sha256:
        record_checksum(record, key, actual["sha256"], src.stat().st_size, str(src))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(src, tmp)
    os.replace(tmp, target)
    return target
