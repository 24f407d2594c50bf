"""Where the real datasets come from: file names, URLs and known checksums.

Facts only (public URLs and the checksums torchvision publishes for the same files); the
workflow reads :data:`SOURCES` through ``mtlp download``, and config ``data.mirrors`` /
``data.local`` put other URLs in front or use a file already on disk.

* ``nyuv2``, ``cityscapes``: MTAN's preprocessed releases, shared Dropbox folders (``dl=1``
  makes Dropbox send the folder as one zip). No checksum is published: the first successful
  download records its sha256 (``<data dir>/checksums.json``). Dropbox builds folder zips on
  the fly, so a *re*-download may legitimately differ; the error says how to accept it.
* ``celeba``: the official aligned images and annotation files on Google Drive (ids and md5 as
  in ``torchvision.datasets.CelebA``).
* ``mnist``: the raw idx files (mirrors and md5 as in ``torchvision.datasets.MNIST``).
* ``weights``: torchvision's ImageNet ResNet checkpoints (their names carry the first 8 hex
  digits of the sha256, which torchvision checks, and which we check too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mtl_paradigms.data.download import Checksums, gdrive_url


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset: its name on disk, the URLs to try, the checksums we know."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # torchvision checkpoints: first hex digits of the sha256
    note: str = ""

    @property
    def checksums(self) -> Checksums:
        return Checksums(md5=self.md5, sha256=self.sha256, sha256_prefix=self.sha256_prefix)


@dataclass(frozen=True)
class Source:
    """A dataset's files and how to lay them out by hand (for error messages and README)."""

    name: str
    files: tuple[SourceFile, ...]
    manual: str
    homepage: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> SourceFile:
        for item in self.files:
            if item.name == name:
                return item
        raise KeyError(f"{self.name} has no file {name!r}; its files: {self.file_names}")

    @property
    def file_names(self) -> list[str]:
        return [f.name for f in self.files]


MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_FILES: tuple[tuple[str, str], ...] = (
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
)

SOURCES: dict[str, Source] = {
    "nyuv2": Source(
        name="nyuv2",
        files=(
            SourceFile(
                "nyuv2.zip",
                ("https://www.dropbox.com/sh/86nssgwm6hm3vkb/AACrnUQ4GxpdrBbLjb6n-mWNa?dl=1",),
            ),
        ),
        manual=(
            "the MTAN-preprocessed NYUv2 (lorenmt/mtan README, 'NYUv2'), as a zip or tar "
            "holding {train,val}/{image,label,depth,normal}/<i>.npy (795 train, 654 val, "
            "288x384) at any depth"
        ),
        homepage="https://github.com/lorenmt/mtan",
    ),
    "cityscapes": Source(
        name="cityscapes",
        files=(
            SourceFile(
                "cityscapes.zip",
                ("https://www.dropbox.com/sh/gaw6vh6qusoyms6/AADwWi0Tp3E3M4B2xzeGlsEna?dl=1",),
                note="128x256 (about 651 MB); 256x512: config data.mirrors",
            ),
        ),
        manual=(
            "the MTAN-preprocessed Cityscapes (lorenmt/mtan README, 'CityScapes', 128x256), as "
            "a zip or tar holding {train,val}/{image,label_7,label_19,depth}/<i>.npy (2975 "
            "train, 500 val) at any depth"
        ),
        homepage="https://github.com/lorenmt/mtan",
        extra={
            "cityscapes_256x512": (
                "https://www.dropbox.com/sh/vj349qgg57nthi9/AACdZmIuK-Qb_gP6w1HrA43ta?dl=1"
            )
        },
    ),
    "celeba": Source(
        name="celeba",
        files=(
            SourceFile(
                "img_align_celeba.zip",
                (gdrive_url("0B7EVK8r0v71pZjFTYXZWM3FlRnM"),),
                md5="00d2c5bc6d35e252742224ab0c1e8fcb",
            ),
            SourceFile(
                "list_attr_celeba.txt",
                (gdrive_url("0B7EVK8r0v71pblRyaVFSWGxPY0U"),),
                md5="75e246fa4810816ffd6ee81facbd244c",
            ),
            SourceFile(
                "list_eval_partition.txt",
                (gdrive_url("0B7EVK8r0v71pY0NSMzRuSXJEVkk"),),
                md5="d32c9cbf5e040fd4025c592c306e6668",
            ),
        ),
        manual=(
            "the official CelebA files (mmlab.ie.cuhk.edu.hk/projects/CelebA.html, 'Align&"
            "Cropped Images' and 'Anno'/'Eval'): img_align_celeba.zip (or its extracted "
            "img_align_celeba/ folder), list_attr_celeba.txt, list_eval_partition.txt"
        ),
        homepage="https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    ),
    "mnist": Source(
        name="mnist",
        files=tuple(
            SourceFile(name, tuple(mirror + name for mirror in MNIST_MIRRORS), md5=md5)
            for name, md5 in MNIST_FILES
        ),
        manual="the four MNIST idx files (train/t10k images/labels, .gz) as torchvision uses",
        homepage="https://yann.lecun.com/exdb/mnist/",
    ),
    "weights": Source(
        name="weights",
        files=(
            SourceFile(
                "resnet18-f37072fd.pth",
                ("https://download.pytorch.org/models/resnet18-f37072fd.pth",),
                sha256_prefix="f37072fd",
            ),
            SourceFile(
                "resnet50-0676ba61.pth",
                ("https://download.pytorch.org/models/resnet50-0676ba61.pth",),
                sha256_prefix="0676ba61",
            ),
        ),
        manual="torchvision's ImageNet checkpoints (IMAGENET1K_V1), as named",
        homepage="https://pytorch.org/vision/stable/models.html",
    ),
}

#: the torchvision checkpoint file of an architecture's ImageNet weights.
WEIGHT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
}


def source(name: str) -> Source:
    if name not in SOURCES:
        raise KeyError(f"unknown data source {name!r}; known: {sorted(SOURCES)}")
    return SOURCES[name]


def file_names() -> dict[str, list[str]]:
    """Dataset -> its file names (what the workflow downloads)."""
    return {name: src.file_names for name, src in SOURCES.items()}
