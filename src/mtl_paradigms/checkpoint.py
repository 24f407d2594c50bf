"""A run's identity and its checkpoint: what may be resumed, written safely, read with care.

Run identity
------------
Every run has an *identity*: the SHA-256 of a canonical JSON document holding every training
setting (except ``data_dir``, a location), a fingerprint of the data the run read (the loaded
train/validation/test tensors, so a moved copy of the same data keeps the identity and a changed
file does not), the single-task baseline that model selection uses, and the settings of the
run's callbacks (gradient statistics). The identity is saved in every checkpoint and recorded in
``metrics.json`` and ``history.csv``.

A checkpoint is resumed only when its identity equals the run's. Otherwise (other settings,
other data, or a checkpoint from before identities existed) it is moved aside, never deleted:
renamed to ``checkpoint.<its identity's first 12 digits>.stale.pt`` beside it, with a warning in
the log, and the run starts from scratch.

Writing and reading
-------------------
A checkpoint is written to a temporary file beside it and renamed onto it only when complete, so
``checkpoint.pt`` is always the last complete one. Temporaries left by a killed writer are
removed when a run starts. A full disk, or a checkpoint that cannot be read, ends the run with
one line that names the file and what to do; the previous checkpoint is kept either way.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtl_paradigms.io import atomic_path

__all__ = [
    "CHECKPOINT", "IDENTITY_VERSION", "CheckpointError", "RunState", "clean_stale_temporaries",
    "data_fingerprint", "load_checkpoint", "move_aside", "run_identity", "save_checkpoint",
]  # fmt: skip

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
IDENTITY_VERSION = 1
"""Bumped when the identity document changes meaning (old checkpoints then start afresh)."""
_NOT_IN_IDENTITY = ("data_dir",)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message names the file and what to do."""


@dataclass
class RunState:
    """Everything needed to continue a run: saved in the checkpoint after every epoch."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None  # the selected epoch's record
    diverged: bool = False
    divergence: str | None = None  # why the run was marked diverged
    initial_loss: float | None = None  # summed task losses of the first step (at initialisation)
    unselectable: str | None = None  # the last epoch not selectable (exploded validation loss)


def data_fingerprint(splits: Iterable[Any]) -> str:
    """SHA-256 over the splits' tensors (``images`` and every target, names, dtypes, shapes)."""
    digest = hashlib.sha256()
    for index, split in enumerate(splits):
        tensors = {"images": split.images} | {f"target/{k}": v for k, v in split.targets.items()}
        for name in sorted(tensors):
            tensor: Tensor = tensors[name].detach().cpu().contiguous()
            header = f"{index}:{name}:{tensor.dtype}:{tuple(tensor.shape)};"
            digest.update(header.encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def run_identity(
    settings: Mapping[str, Any],
    data: str,
    baseline: Mapping[str, Any] | None = None,
    callbacks: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The identity (hex SHA-256) of a run: ``settings`` (a TrainSettings as a mapping, without
    ``data_dir``), the ``data`` fingerprint, the baseline and the callbacks' settings."""
    document = {
        "version": IDENTITY_VERSION,
        "settings": {k: v for k, v in settings.items() if k not in _NOT_IN_IDENTITY},
        "data": data,
        "baseline": baseline,
        "callbacks": list(callbacks),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def clean_stale_temporaries(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary checkpoint files a killed writer left in ``out_dir``."""
    stem, suffix = Path(CHECKPOINT).stem, Path(CHECKPOINT).suffix
    removed = sorted(Path(out_dir).glob(f".{stem}.*.tmp{suffix}"))
    for path in removed:
        size = path.stat().st_size
        path.unlink(missing_ok=True)
        log.info("removed %s (%d bytes), a checkpoint write that did not finish", path, size)
    return removed


def move_aside(path: Path, identity: str | None) -> Path:
    """Rename a checkpoint of another run identity beside itself; return the new name."""
    tag = identity[:12] if identity else "unknown"
    target = path.with_name(f"{path.stem}.{tag}.stale{path.suffix}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{path.stem}.{tag}.stale{counter}{path.suffix}")
    os.replace(path, target)
    return target


def save_checkpoint(path: Path, state: RunState, identity: str, parts: Mapping[str, Any]) -> None:
    """Write ``state``, the ``identity`` and the state dicts in ``parts`` atomically to ``path``."""
    payload = {"identity": identity, "state": asdict(state), **parts}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            torch.save(payload, file)
    except Exception as err:
        cause = _os_error(err)
        kept = "the previous checkpoint is kept" if path.exists() else "no earlier checkpoint"
        if cause is not None and cause.errno in _NO_SPACE:
            raise CheckpointError(
                f"{path}: no space left on the device while writing the checkpoint of epoch "
                f"{state.epoch} ({kept}); free some space and run the same command again to "
                "resume"
            ) from err
        if cause is not None:
            raise CheckpointError(
                f"{path}: cannot write the checkpoint of epoch {state.epoch} "
                f"({cause.strerror or cause}; {kept}); fix that and run the same command again"
            ) from err
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's payload; a file that cannot be read raises :class:`CheckpointError`."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a corrupt checkpoint cannot be trusted: say so, lose nothing
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {reason[:200]}); it is "
            "left as it is: move it away (or delete it) to restart this run from scratch"
        ) from err
    if not isinstance(payload, dict) or "state" not in payload:
        raise CheckpointError(
            f"{path}: not a checkpoint of `mtlp train` (no run state in it); move it away (or "
            "delete it) to restart this run from scratch"
        )
    return payload


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (torch wraps a failed write of its file object)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
