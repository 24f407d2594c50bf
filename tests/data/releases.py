"""Small archives and files in the exact layouts of the real releases, for loopback tests.

* NYUv2 / Cityscapes: MTAN's ``<name>/{train,val}/<modality>/<i>.npy`` in a zip (no
  ``synthetic.json``: the real releases have none); Cityscapes also as a zip inside a zip, the
  way Dropbox sends a shared folder that holds the dataset's zip.
* CelebA: ``img_align_celeba.zip`` (178x218 JPEGs), ``list_attr_celeba.txt``,
  ``list_eval_partition.txt``.
* MNIST: the four gzipped idx files.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from mtl_paradigms.data.synthetic import SyntheticSettings, write_synthetic_mtan
from mtl_paradigms.data.synthetic.celeba import SyntheticCelebASettings, write_synthetic_celeba
from mtl_paradigms.data.synthetic.multimnist import write_synthetic_mnist

H, W = 16, 24


def zip_tree(root: Path, prefix: str) -> bytes:
    """A zip of the files under ``root`` as ``<prefix>/<relative path>``, sorted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.name != "synthetic.json":
                zf.write(path, f"{prefix}/{path.relative_to(root).as_posix()}")
    return buffer.getvalue()


def mtan_release(work: Path, dataset: str, num_train: int = 4, num_val: int = 2) -> Path:
    settings = SyntheticSettings(
        dataset=dataset,
        num_train=num_train,
        num_val=num_val,
        height=H,
        width=W,  # type: ignore[arg-type]
    )
    return write_synthetic_mtan(settings, work / f"{dataset}-tree")


def mtan_zip(work: Path, dataset: str, nested: bool = False) -> bytes:
    inner = zip_tree(mtan_release(work, dataset), dataset)
    if not nested:
        return inner
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{dataset}.zip", inner)
    return buffer.getvalue()


def celeba_files(work: Path, num_images: int = 24) -> dict[str, bytes]:
    root = write_synthetic_celeba(SyntheticCelebASettings(num_images=num_images), work / "celeba")
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


def mnist_files(work: Path) -> dict[str, bytes]:
    root = write_synthetic_mnist(work / "mnist")
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}
