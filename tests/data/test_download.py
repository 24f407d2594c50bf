"""Downloads over loopback HTTP: resume, retries, checksums, errors; safe extraction."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from mtl_paradigms.cli import main
from mtl_paradigms.data import sources
from mtl_paradigms.data.download import (
    ChecksumError,
    Checksums,
    DownloadError,
    ExtractionError,
    check_digest,
    download_file,
    drive_confirm_url,
    extract_into,
    link_local,
    read_record,
    record_checksum,
    safe_extract,
)

from .loopback import Loopback

BODY = bytes(range(256)) * 4096  # 1 MiB
MD5 = hashlib.md5(BODY).hexdigest()
SHA = hashlib.sha256(BODY).hexdigest()


def fetch(urls: list[str], dest: Path, **kwargs: object) -> Path:
    kwargs.setdefault("retries", 2)
    kwargs.setdefault("sleep", lambda _: None)
    kwargs.setdefault("timeout", 10.0)
    return download_file(urls, dest, **kwargs)  # type: ignore[arg-type]


def test_download_verifies_and_writes_atomically(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY)
    out = fetch([url], tmp_path / "f.bin", checksums=Checksums(md5=MD5, sha256=SHA))
    assert out.read_bytes() == BODY
    assert not (tmp_path / "f.bin.part").exists()
    assert loopback.requests("f.bin") == [None]
    # An existing verified file is kept: no second request.
    fetch([url], out, checksums=Checksums(md5=MD5))
    assert len(loopback.requests("f.bin")) == 1


def test_interrupted_download_resumes_with_range(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY, cut_after=300_000, cuts=1)
    out = fetch([url], tmp_path / "f.bin", checksums=Checksums(md5=MD5))
    assert out.read_bytes() == BODY
    first, second = loopback.requests("f.bin")
    assert first is None
    # What arrived before the connection dropped is kept (up to the last whole read block).
    assert second is not None
    assert 0 < int(second.removeprefix("bytes=").rstrip("-")) <= 300_000


def test_a_part_file_left_by_a_killed_run_is_continued(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY)
    (tmp_path / "f.bin.part").write_bytes(BODY[:123_456])
    out = fetch([url], tmp_path / "f.bin", checksums=Checksums(sha256=SHA))
    assert out.read_bytes() == BODY
    assert loopback.requests("f.bin") == ["bytes=123456-"]


def test_server_without_range_support_restarts_the_file(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY, ranges=False)
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)
    out = fetch([url], tmp_path / "f.bin", checksums=Checksums(md5=MD5))
    assert out.read_bytes() == BODY


def test_truncated_transfers_fail_clearly_and_leave_no_file(
    loopback: Loopback, tmp_path: Path
) -> None:
    url = loopback.add("f.bin", BODY, cut_after=1000, cuts=100)
    with pytest.raises(DownloadError) as err:
        fetch([url], tmp_path / "f.bin", retries=2)
    message = str(err.value)
    assert url in message
    assert f"of {len(BODY)} bytes" in message
    assert "gave up after 3 attempts" in message
    assert "run again to resume" in message
    assert not (tmp_path / "f.bin").exists()  # only the .part, which does not look complete
    assert (tmp_path / "f.bin.part").stat().st_size <= 3000


def test_wrong_checksum_names_url_expected_actual_and_what_to_do(
    loopback: Loopback, tmp_path: Path
) -> None:
    url = loopback.add("f.bin", BODY[:-1] + b"\x00")
    with pytest.raises(ChecksumError) as err:
        fetch([url], tmp_path / "f.bin", checksums=Checksums(md5=MD5))
    message = str(err.value)
    assert url in message
    assert MD5 in message
    assert hashlib.md5(BODY[:-1] + b"\x00").hexdigest() in message
    assert "data.mirrors" in message
    assert "data.local" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("status", [404, 403])
def test_client_errors_are_final(loopback: Loopback, tmp_path: Path, status: int) -> None:
    url = loopback.add("f.bin", BODY, statuses=[status])
    with pytest.raises(DownloadError, match=f"HTTP {status}") as err:
        fetch([url], tmp_path / "f.bin")
    assert url in str(err.value)
    assert len(loopback.requests("f.bin")) == 1  # no retry
    assert not any(tmp_path.iterdir())


def test_server_errors_are_retried_with_backoff(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY, statuses=[500, 503])
    delays: list[float] = []
    out = fetch([url], tmp_path / "f.bin", retries=3, backoff=0.5, sleep=delays.append)
    assert out.read_bytes() == BODY
    assert delays == [0.5, 1.0]


def test_persistent_500_fails_with_the_url(loopback: Loopback, tmp_path: Path) -> None:
    url = loopback.add("f.bin", BODY, statuses=[500] * 10)
    with pytest.raises(DownloadError, match="HTTP 500") as err:
        fetch([url], tmp_path / "f.bin", retries=2)
    assert url in str(err.value)
    assert "Download it by hand and put it at" in str(err.value)
    assert not any(tmp_path.iterdir())


def test_next_mirror_is_tried(loopback: Loopback, tmp_path: Path) -> None:
    good = loopback.add("good.bin", BODY)
    out = fetch([loopback.url("missing.bin"), good], tmp_path / "f.bin", checksums=Checksums(MD5))
    assert out.read_bytes() == BODY


def test_first_download_records_sha256_and_later_ones_are_checked(
    loopback: Loopback, tmp_path: Path
) -> None:
    record = tmp_path / "checksums.json"
    url = loopback.add("f.bin", BODY)
    fetch([url], tmp_path / "f.bin", record=record, key="src/f.bin")
    entry = read_record(record)["src/f.bin"]
    assert entry["sha256"] == SHA
    assert entry["size"] == len(BODY)
    (tmp_path / "f.bin").unlink()
    loopback.add("f.bin", b"changed" + BODY)
    with pytest.raises(ChecksumError, match="recorded in") as err:
        fetch([url], tmp_path / "f.bin", record=record, key="src/f.bin")
    assert SHA in str(err.value)
    assert not (tmp_path / "f.bin").exists()


def test_local_copy_is_verified_and_linked(tmp_path: Path) -> None:
    local = tmp_path / "copy.bin"
    local.write_bytes(BODY)
    out = link_local(local, tmp_path / "out" / "f.bin", Checksums(md5=MD5))
    assert out.is_symlink()
    assert out.read_bytes() == BODY
    with pytest.raises(ChecksumError):
        link_local(local, tmp_path / "out" / "g.bin", Checksums(md5="0" * 32))


def test_known_sha256_prefix_of_torchvision_weights(tmp_path: Path) -> None:
    item = sources.source("weights").file("resnet18-f37072fd.pth")
    local = tmp_path / "fake.pth"
    local.write_bytes(b"not the weights")
    with pytest.raises(ChecksumError, match="f37072fd"):
        link_local(local, tmp_path / item.name, item.checksums)


def test_google_drive_confirmation_page_is_answered() -> None:
    page = (
        '<html><form id="download-form" action="https://drive.usercontent.google.com/download"'
        ' method="get"><input type="hidden" name="id" value="ABC"><input type="hidden"'
        ' name="export" value="download"><input type="hidden" name="confirm" value="t">'
        '<input type="hidden" name="uuid" value="u-1"></form></html>'
    )
    url = drive_confirm_url("https://drive.google.com/uc?export=download&id=ABC", page, {})
    assert url == (
        "https://drive.usercontent.google.com/download?id=ABC&export=download&confirm=t&uuid=u-1"
    )
    old = drive_confirm_url(
        "https://drive.google.com/uc?export=download&id=ABC", "<html></html>",
        {"download_warning_123": "TOKEN"},
    )  # fmt: skip
    assert old == "https://drive.google.com/uc?export=download&id=ABC&confirm=TOKEN"
    assert drive_confirm_url("https://drive.google.com/uc?id=A", "<html>quota</html>", {}) is None


# ---- archives --------------------------------------------------------------------------------


def _zip(
    members: dict[str, bytes], symlink: str | None = None, to: str = "/etc/passwd", system: int = 3
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.create_system = system  # 3: Unix, 0: MS-DOS (the mode bits are set either way)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, to)
    return buffer.getvalue()


def _tar(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        ok = tarfile.TarInfo("ok/file.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        tf.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def test_safe_extract_of_good_archives(tmp_path: Path) -> None:
    (tmp_path / "a.zip").write_bytes(_zip({"d/x.txt": b"x", "d/e/y.txt": b"y"}))
    out = safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert (out / "d/e/y.txt").read_bytes() == b"y"
    (tmp_path / "b.tgz").write_bytes(_tar("ok/other.txt"))
    assert (safe_extract(tmp_path / "b.tgz", tmp_path / "out2") / "ok/file.txt").is_file()


@pytest.mark.parametrize(
    "archive",
    [
        pytest.param(_zip({"ok.txt": b"1", "../evil.txt": b"2"}), id="zip-dotdot"),
        pytest.param(_zip({"/abs/evil.txt": b"2"}), id="zip-absolute"),
        pytest.param(_zip({"ok.txt": b"1"}, symlink="link"), id="zip-symlink"),
        pytest.param(_tar("../evil.txt"), id="tar-dotdot"),
        pytest.param(_tar("/abs/evil.txt"), id="tar-absolute"),
        pytest.param(_tar("ok/link", tarfile.SYMTYPE, "../../../etc/passwd"), id="tar-link-out"),
        pytest.param(_tar("ok/dev", tarfile.CHRTYPE), id="tar-device"),
    ],
)
def test_unsafe_archives_are_rejected_and_leave_nothing(tmp_path: Path, archive: bytes) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "bad.archive").write_bytes(archive)
    with pytest.raises(ExtractionError, match=r"bad\.archive") as err:
        safe_extract(work / "bad.archive", work / "out")
    assert "refusing to extract" in str(err.value)
    assert sorted(os.listdir(work)) == ["bad.archive"]
    assert not (tmp_path / "evil.txt").exists()


# Links of any kind are refused, also when they point inside the target: dataset archives never
# hold one, and checking where a link leads can be fooled (CVE-2025-4517, test_unsafe_inputs).
LINK_ARCHIVES = [
    pytest.param(_tar("ok/link", tarfile.SYMTYPE, "file.txt"), "'ok/link'", id="tar-symlink-in"),
    pytest.param(_tar("ok/hard", tarfile.LNKTYPE, "ok/file.txt"), "'ok/hard'", id="tar-hardlink"),
    pytest.param(
        _tar("ok/hard", tarfile.LNKTYPE, "../../etc/passwd"), "'ok/hard'", id="tar-hardlink-out"
    ),
    pytest.param(_tar("ok/up", tarfile.SYMTYPE, ".."), "'ok/up'", id="tar-symlink-up"),
    pytest.param(_zip({"ok.txt": b"1"}, "ln", to="ok.txt"), "'ln'", id="zip-symlink-in"),
    pytest.param(_zip({"a/b.txt": b"1"}, "a/l", to="../.."), "'a/l'", id="zip-symlink-out"),
    pytest.param(_zip({"ok.txt": b"1"}, "ln", system=0), "'ln'", id="zip-symlink-msdos"),
]


@pytest.mark.parametrize(("archive", "member"), LINK_ARCHIVES)
def test_link_members_are_refused_naming_archive_and_member(
    tmp_path: Path, archive: bytes, member: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "links.archive").write_bytes(archive)
    with pytest.raises(ExtractionError) as err:
        safe_extract(work / "links.archive", work / "out")
    message = str(err.value)
    assert message.startswith(f"{work / 'links.archive'}: member {member} is a ")
    assert "link" in message
    assert "refusing to extract" in message
    assert "dataset archives never contain links" in message
    assert "\n" not in message
    assert sorted(os.listdir(work)) == ["links.archive"]  # nothing written, not even ok/file.txt
    # extract_into (used by prepare-mtan) checks every member before writing anything as well
    (work / "into").mkdir()
    with pytest.raises(ExtractionError, match="dataset archives never contain links"):
        extract_into(work / "links.archive", work / "into")
    assert list((work / "into").iterdir()) == []


def test_tar_hardlink_is_refused_however_it_is_stored(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:  # as tar stores a file linked twice
        data = tmp_path / "data.bin"
        data.write_bytes(b"x" * 10)
        os.link(data, tmp_path / "twin.bin")
        tf.add(data, "d/data.bin")
        tf.add(tmp_path / "twin.bin", "d/twin.bin")  # tarfile stores the second as a hard link
    (tmp_path / "h.tar").write_bytes(buffer.getvalue())
    with pytest.raises(ExtractionError, match=r"'d/twin\.bin' is a hard link \(to 'd/data\.bin'\)"):
        safe_extract(tmp_path / "h.tar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- expected checksums must be well-formed digests -------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sha256", "abc"),
        ("sha256", SHA[:-1]),
        ("sha256", SHA + "0"),
        ("sha256", "g" * 64),
        ("sha256", MD5),
        ("sha256", " " + SHA[1:]),
        ("md5", "abc"),
        ("md5", SHA),
        ("md5", MD5[:-1] + "z"),
    ],
)
def test_malformed_expected_checksums_are_refused(field: str, value: str) -> None:
    digits = {"md5": 32, "sha256": 64}[field]
    with pytest.raises(
        ValueError,
        match=rf"^Checksums\.{field} '.*': expected {digits} hexadecimal digits \(the {field} "
        r"digest\), or '' for none$",
    ):
        Checksums(**{field: value})
    with pytest.raises(ValueError, match=f"^--{field} "):
        check_digest(value, field, f"--{field}")


def test_wellformed_and_empty_checksums_are_accepted() -> None:
    assert Checksums(md5=MD5.upper(), sha256=SHA.upper()) == Checksums(md5=MD5, sha256=SHA)
    assert Checksums(md5="", sha256="") == Checksums()
    assert check_digest("", "sha256", "--sha256") is None
    assert check_digest(None, "md5", "--md5") is None
    with pytest.raises(ValueError, match="sha256_prefix"):
        Checksums(sha256_prefix="xyz")
    for src, names in sources.file_names().items():  # the registry's checksums are well-formed
        for name in names:
            assert isinstance(sources.source(src).file(name).checksums, Checksums)


def test_malformed_recorded_sha256_is_refused(loopback: Loopback, tmp_path: Path) -> None:
    record = tmp_path / "checksums.json"
    record_checksum(record, "src/f.bin", "abc", len(BODY), "by hand")
    url = loopback.add("f.bin", BODY)
    with pytest.raises(DownloadError, match=r"sha256 recorded for 'src/f\.bin' is 'abc', expected"):
        fetch([url], tmp_path / "f.bin", record=record, key="src/f.bin")
    assert not (tmp_path / "f.bin").exists()


@pytest.mark.parametrize(
    ("option", "value", "digits"),
    [("--sha256", "abc", 64), ("--sha256", MD5, 64), ("--md5", "abc", 32), ("--md5", SHA, 32)],
)
def test_download_verb_refuses_a_malformed_digest(
    loopback: Loopback,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    option: str,
    value: str,
    digits: int,
) -> None:
    url = loopback.add("f.bin", BODY)
    out = tmp_path / "f.bin"
    args = ["download", "--source", "mnist", "--file", "train-images-idx3-ubyte.gz"]
    args += ["--out", str(out), "--url", url, "--mirrors-only", "--retries", "0", option, value]
    assert main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"{option} {value!r}: expected {digits} hexadecimal digits (the {option[2:]} digest), "
        "or '' for none"
    ]
    assert loopback.requests("f.bin") == []  # refused before any download
    assert not out.exists()
    # '' still means "no checksum": the download goes through
    assert main([*args[:-1], ""]) == 0
    assert out.read_bytes() == BODY
