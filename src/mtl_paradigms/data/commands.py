"""The data verbs of ``mtlp`` (download, prepare, synthetic data, the CelebA table).

Kept beside the data code; :func:`add_data_commands` registers them on the ``mtlp`` parser.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("mtlp")


def _exit_on_download_error(func: Callable[[argparse.Namespace], None]) -> Callable:
    def run(args: argparse.Namespace) -> None:
        from mtl_paradigms.data.download import DownloadError

        try:
            func(args)
        except DownloadError as err:
            log.error("%s", err)
            raise SystemExit(2) from err

    return run


def _cmd_download(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.download import (
        Checksums,
        DownloadError,
        check_digest,
        download_file,
        link_local,
    )
    from mtl_paradigms.data.sources import source

    # before anything else: a malformed digest is a ValueError, one line naming the option
    md5 = check_digest(args.md5, "md5", "--md5")
    sha256 = check_digest(args.sha256, "sha256", "--sha256")
    src = source(args.source)
    item = src.file(args.file)
    key = f"{args.source}/{args.file}"
    checksums = item.checksums
    if args.md5 is not None or args.sha256 is not None:  # config data.checksums replaces them
        checksums = Checksums(md5=md5, sha256=sha256)
    if args.local:
        link_local(args.local, args.out, checksums, args.record, key)
        log.info("%s: using the local file %s", args.out, args.local)
        return
    urls = [*args.url, *(() if args.mirrors_only else item.urls)]
    if not urls:
        raise DownloadError(f"{key}: no URL (data.builtin_urls is off and no mirror is given)")
    try:
        download_file(
            urls, args.out, checksums, args.record, key,
            retries=args.retries, backoff=args.backoff, timeout=args.timeout,
        )  # fmt: skip
    except DownloadError as err:
        raise DownloadError(f"{err}\nExpected content: {src.manual}.") from err


def _cmd_prepare_mtan(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.prepare import prepare_mtan

    counts = prepare_mtan(args.archive, args.dataset, args.out, expect_sizes=args.expect_sizes)
    log.info("wrote %s (%s)", args.out, counts)


def _cmd_make_synthetic_celeba(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.synthetic.celeba import (
        SyntheticCelebASettings,
        write_synthetic_celeba,
    )
    from mtl_paradigms.settings import from_json

    settings = from_json(SyntheticCelebASettings, args.settings, "celeba.synthetic")
    write_synthetic_celeba(settings, args.out)


def _cmd_prepare_celeba(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.celeba import prepare_celeba

    prepare_celeba(args.raw, args.out, size=args.size, threads=args.threads)


def _cmd_make_synthetic_mnist(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.synthetic.multimnist import write_synthetic_mnist

    write_synthetic_mnist(args.out, seed=args.seed)


def _cmd_build_multimnist(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.mnist import MultiMNISTSettings, build_multimnist
    from mtl_paradigms.settings import from_json

    settings = from_json(MultiMNISTSettings, args.settings, "multimnist")
    build_multimnist(args.mnist, args.out, settings)


def _cmd_attribute_table(args: argparse.Namespace) -> None:
    from mtl_paradigms.analysis.attributes import attribute_table
    from mtl_paradigms.analysis.outputs import write_table

    method, _, optimizer = args.reference.partition("/")
    records = [json.loads(Path(p).read_text(encoding="utf-8")) for p in args.inputs]
    table = attribute_table(records, (method, optimizer or "adam"))
    write_table(table, args.out, caption=args.caption)
    log.info("wrote %s.{csv,md,tex} (%d runs)", args.out, len(records))


def add_data_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the data verbs on the ``mtlp`` sub-command parser ``sub``."""
    p = sub.add_parser("download", help="download one file of a dataset, resumably and verified")
    p.add_argument("--source", required=True, help="nyuv2, cityscapes, celeba, mnist, weights")
    p.add_argument("--file", required=True, help="the file's name (mtl_paradigms.data.sources)")
    p.add_argument("--out", required=True, type=Path, help="where the file goes")
    p.add_argument("--url", action="append", default=[], help="mirror URL tried first; repeatable")
    p.add_argument("--mirrors-only", action="store_true", help="skip the built-in URLs")
    p.add_argument("--local", type=Path, help="use this file on disk instead (verified, linked)")
    p.add_argument("--record", type=Path, help="checksum record (first-download sha256s)")
    p.add_argument("--md5", help="expected md5 (32 hex digits), replacing the known ('' = none)")
    p.add_argument(
        "--sha256", help="expected sha256 (64 hex digits), replacing the known ('' = none)"
    )
    p.add_argument("--retries", type=int, default=4, help="retries per URL")
    p.add_argument("--backoff", type=float, default=2.0, help="first retry delay, doubling (s)")
    p.add_argument("--timeout", type=float, default=60.0, help="connect/read timeout (s)")
    p.set_defaults(func=_exit_on_download_error(_cmd_download))

    p = sub.add_parser("prepare-mtan", help="extract an MTAN release (NYUv2/Cityscapes) safely")
    p.add_argument("--dataset", required=True, choices=["nyuv2", "cityscapes"])
    p.add_argument("--archive", required=True, action="append", type=Path, help="repeatable")
    p.add_argument("--out", required=True, type=Path, help="the dataset folder to create")
    p.add_argument("--expect-sizes", action="store_true", help="require the release's counts")
    p.set_defaults(func=_cmd_prepare_mtan)

    p = sub.add_parser("make-synthetic-celeba", help="write a synthetic CelebA (official files)")
    p.add_argument("--settings", default="{}", help="JSON of SyntheticCelebASettings")
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.set_defaults(func=_cmd_make_synthetic_celeba)

    p = sub.add_parser("prepare-celeba", help="decode CelebA once into memory-mappable arrays")
    p.add_argument("--raw", required=True, type=Path, help="folder with the official files")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (paper: 64)")
    p.add_argument("--threads", type=int, default=4, help="decoding threads")
    p.add_argument("--out", required=True, type=Path, help="prepared folder to create")
    p.set_defaults(func=_cmd_prepare_celeba)

    p = sub.add_parser("make-synthetic-mnist", help="MNIST idx files from scikit-learn's digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.set_defaults(func=_cmd_make_synthetic_mnist)

    p = sub.add_parser("build-multimnist", help="Multi-MNIST from MNIST idx files")
    p.add_argument("--mnist", required=True, type=Path, help="folder with the MNIST files")
    p.add_argument("--settings", default="{}", help="JSON of MultiMNISTSettings")
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.set_defaults(func=_cmd_build_multimnist)

    p = sub.add_parser("attribute-table", help="per-attribute table of CelebA-style runs")
    p.add_argument("inputs", nargs="+", type=Path, help="metrics.json of the runs")
    p.add_argument("--out", required=True, type=Path, help="output stem (.csv, .md, .tex)")
    p.add_argument("--reference", default="ew/adam", help="method/optimizer Δm refers to")
    p.add_argument("--caption", default="Per-attribute test accuracy (mean ± std over seeds)")
    p.set_defaults(func=_cmd_attribute_table)
