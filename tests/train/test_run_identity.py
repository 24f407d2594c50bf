"""A result always matches its settings: run identity, no stale resume, safe checkpoints,
loss explosion counted as divergence, and one-line errors from `mtlp train`."""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from mtl_paradigms import checkpoint as checkpoint_module
from mtl_paradigms.checkpoint import (
    CheckpointError,
    clean_stale_temporaries,
    data_fingerprint,
    run_identity,
)
from mtl_paradigms.cli import main
from mtl_paradigms.data.mtan import MTANSplit
from mtl_paradigms.data.synthetic.scenes import SyntheticSettings, write_synthetic_mtan
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.train import (
    CHECKPOINT,
    HISTORY,
    METRICS,
    TrainSettings,
    divergence_reason,
    train,
)


@pytest.fixture(scope="module")
def data_dir(tiny_nyuv2: Callable[[int], Path]) -> Path:
    return tiny_nyuv2(16)


def stl(data_dir: Path, **overrides: object) -> TrainSettings:
    base = TrainSettings(
        dataset="nyuv2", data_dir=str(data_dir), val_size=8, arch="segnet", width=0.125,
        epochs=2, batch_size=8, eval_batch_size=8, lr=1e-3, device="cpu",
        tasks=["depth"], selection="val_loss",
    )  # fmt: skip
    return replace(base, **overrides)


def stale_files(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint.*.stale*.pt"))


# ---- identity ---------------------------------------------------------------------------------


def test_identity_covers_every_setting_but_the_data_location() -> None:
    settings = asdict(TrainSettings())
    base = run_identity(settings, "data")
    assert run_identity(dict(settings), "data") == base  # canonical: a copy hashes the same
    assert run_identity(settings | {"data_dir": "/elsewhere"}, "data") == base
    assert run_identity(settings, "other data") != base
    assert run_identity(settings, "data", baseline={"val": {"a": 1.0}}) != base
    assert run_identity(settings, "data", callbacks=[{"every": 2}]) != base
    for key, value in settings.items():
        if key == "data_dir":
            continue
        changed = {"x": 1} if isinstance(value, dict) else ([9] if isinstance(value, list) else 7)
        assert run_identity(settings | {key: changed}, "data") != base, key
    # the exact float, not a rounding of it
    assert run_identity(settings | {"lr": 0.00123456789}, "data") != run_identity(
        settings | {"lr": 0.00123457}, "data"
    )


def test_data_fingerprint_sees_every_value_and_the_layout() -> None:
    images = torch.rand(4, 3, 8, 8)
    depth = torch.rand(4, 1, 8, 8)
    split = MTANSplit(images, {"depth": depth})
    base = data_fingerprint([split, split])
    assert data_fingerprint([MTANSplit(images.clone(), {"depth": depth.clone()})] * 2) == base
    changed = images.clone()
    changed[3, 2, 7, 7] += 1e-6
    assert data_fingerprint([MTANSplit(changed, {"depth": depth}), split]) != base
    assert data_fingerprint([split, MTANSplit(changed, {"depth": depth})]) != base
    assert data_fingerprint([MTANSplit(images, {"normal": depth}), split]) != base
    assert data_fingerprint([split]) != base


# ---- resume only the same run ------------------------------------------------------------------


def test_a_changed_setting_trains_anew_instead_of_resuming(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The weight-decay case of the issue: the old checkpoint held every epoch, so a resume
    trained nothing and wrote the old metrics under the new settings."""
    run = tmp_path / "run"
    old = train(stl(data_dir, weight_decay=1e-5), run)
    (run / METRICS).unlink()  # as Snakemake does before re-running a job
    with caplog.at_level(logging.WARNING):
        new = train(stl(data_dir, weight_decay=0.5), run)
    assert new["settings"]["weight_decay"] == 0.5
    assert new["test"] != old["test"]
    assert new["run_identity"] != old["run_identity"]
    reference = train(stl(data_dir, weight_decay=0.5), tmp_path / "fresh")
    assert new["test"] == reference["test"]  # exactly a run that never saw the old checkpoint
    aside = stale_files(run)
    assert [p.name for p in aside] == [f"checkpoint.{old['run_identity'][:12]}.stale.pt"]
    assert "Moved it to" in caplog.text
    assert aside[0].name in caplog.text
    saved = torch.load(aside[0], weights_only=False)
    assert saved["identity"] == old["run_identity"]  # moved, not deleted or overwritten


def test_a_changed_width_starts_fresh_instead_of_crashing(data_dir: Path, tmp_path: Path) -> None:
    train(stl(data_dir, width=0.125), tmp_path)
    metrics = train(stl(data_dir, width=0.25), tmp_path)
    assert metrics["epochs_run"] == 2
    assert metrics["settings"]["width"] == 0.25
    assert len(stale_files(tmp_path)) == 1


def test_other_data_under_the_same_path_trains_anew(data_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synthetic_mtan(
        SyntheticSettings(dataset="nyuv2", num_train=16, num_val=8, height=32, width=32), data
    )
    run = tmp_path / "run"
    first = train(stl(data, epochs=1), run, stop_after_epochs=1)
    assert first == {}
    assert (run / CHECKPOINT).exists()
    depth = data / "train" / "depth" / "0.npy"
    np.save(depth, np.load(depth) * 2.0)
    train(stl(data, epochs=1), run)
    assert len(stale_files(run)) == 1


def test_the_data_location_is_not_part_of_the_identity(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    run = tmp_path / "run"
    assert train(stl(data_dir), run, stop_after_epochs=1) == {}
    resumed = train(stl(copy), run)
    assert stale_files(run) == []
    assert resumed["test"] == train(stl(data_dir), tmp_path / "reference")["test"]


def test_an_unchanged_rerun_resumes(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert train(stl(data_dir), tmp_path, stop_after_epochs=1) == {}
    with caplog.at_level(logging.INFO):
        metrics = train(stl(data_dir), tmp_path)
    assert "resuming" in caplog.text
    assert stale_files(tmp_path) == []
    assert metrics["epochs_run"] == 2


def test_a_checkpoint_without_identity_is_not_resumed(data_dir: Path, tmp_path: Path) -> None:
    """Checkpoints written before identities existed cannot be trusted either."""
    assert train(stl(data_dir), tmp_path, stop_after_epochs=1) == {}
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    del payload["identity"]
    torch.save(payload, tmp_path / CHECKPOINT)
    train(stl(data_dir), tmp_path)
    assert [p.name for p in stale_files(tmp_path)] == ["checkpoint.unknown.stale.pt"]


def test_metrics_and_history_record_the_identity(data_dir: Path, tmp_path: Path) -> None:
    metrics = train(stl(data_dir), tmp_path)
    identity = metrics["run_identity"]
    assert len(identity) == 64
    assert int(identity, 16) >= 0
    assert json.loads((tmp_path / METRICS).read_text())["run_identity"] == identity
    history = pd.read_csv(tmp_path / HISTORY)
    assert set(history["run_identity"]) == {identity}
    payload = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert payload["identity"] == identity


# ---- writing and reading checkpoints ------------------------------------------------------------


def test_stale_temporaries_are_removed_at_start(data_dir: Path, tmp_path: Path) -> None:
    leftovers = [tmp_path / ".checkpoint.abc123.tmp.pt", tmp_path / ".checkpoint.x_9.tmp.pt"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    keep = tmp_path / ".history.abc.tmp.csv"  # not a checkpoint's temporary
    keep.write_text("x")
    assert clean_stale_temporaries(tmp_path) == sorted(leftovers)
    leftovers[0].write_bytes(b"\0")
    train(stl(data_dir, epochs=1), tmp_path)
    assert not any(p.exists() for p in leftovers)
    assert keep.exists()


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on, checkpoint writes go to /dev/full: the kernel answers ENOSPC."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    real_open = builtins.open

    def open_full(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if "w" in mode and Path(file).name.startswith(".checkpoint."):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "open", open_full, raising=False)


def test_a_full_disk_is_named_and_keeps_the_previous_checkpoint(
    data_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    assert train(stl(data_dir, epochs=2), tmp_path, stop_after_epochs=1) == {}
    before = (tmp_path / CHECKPOINT).read_bytes()
    request.getfixturevalue("disk_full")
    with pytest.raises(CheckpointError, match="no space left on the device") as err:
        train(stl(data_dir, epochs=2), tmp_path)
    assert str(tmp_path / CHECKPOINT) in str(err.value)
    assert "previous checkpoint is kept" in str(err.value)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    assert list(tmp_path.glob(".checkpoint.*")) == []  # no half-written temporary left


@pytest.mark.usefixtures("disk_full")
def test_mtlp_train_reports_a_full_disk_in_one_line(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cli_train(stl(data_dir, epochs=1), tmp_path) == 2
    line = one_error_line(caplog)
    assert "no space left" in line
    assert str(tmp_path / CHECKPOINT) in line


def cli_train(settings: TrainSettings, out: Path, *extra: str) -> int:
    return main(["train", "--settings", json.dumps(asdict(settings)), "--out", str(out), *extra])


def one_error_line(caplog: pytest.LogCaptureFixture) -> str:
    """`mtlp` logged exactly one error, on one line; return it. (An exception that escaped
    ``main`` with a traceback would have failed the test before.)"""
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "\n" not in errors[0]
    return errors[0]


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint", b"PK\x03\x04truncated zip"], ids=["empty", "junk", "zip"]
)
def test_a_corrupt_checkpoint_is_one_line_and_kept(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    (tmp_path / CHECKPOINT).write_bytes(content)
    assert cli_train(stl(data_dir), tmp_path) == 2
    line = one_error_line(caplog)
    assert str(tmp_path / CHECKPOINT) in line
    assert "move it away" in line
    assert (tmp_path / CHECKPOINT).read_bytes() == content


def test_a_truncated_checkpoint_is_one_line_and_kept(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert train(stl(data_dir), tmp_path, stop_after_epochs=1) == {}
    whole = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(whole[: len(whole) // 2])
    assert cli_train(stl(data_dir), tmp_path) == 2
    assert str(tmp_path / CHECKPOINT) in one_error_line(caplog)
    assert (tmp_path / CHECKPOINT).read_bytes() == whole[: len(whole) // 2]


def test_a_truncated_baseline_is_named_in_one_line(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text('{"val": {"depth/abs_err": 0.')
    settings = stl(data_dir, selection="delta_m")
    assert cli_train(settings, tmp_path / "run", "--baseline", str(baseline)) == 2
    assert str(baseline) in one_error_line(caplog)


# ---- divergence -------------------------------------------------------------------------------


def test_a_finite_loss_explosion_is_divergence(data_dir: Path, tmp_path: Path) -> None:
    """UW-O + SGD at lr 30 stays finite on this data, yet its validation loss is 1e10 times the
    first step's in every epoch: no epoch is selectable, so the run diverged (before, it was
    reported as a result with absurd metrics)."""
    settings = stl(data_dir, tasks=None, method="uwo", optimizer="sgd", lr=30.0, epochs=3)
    unjudged = train(replace(settings, divergence_factor=float("inf")), tmp_path / "inf")
    history = pd.read_csv(tmp_path / "inf" / HISTORY)
    assert unjudged["diverged"] is False  # finite throughout: the old criterion passed it
    assert np.isfinite(history["val_loss"]).all()
    assert history["val_loss"].min() > 1e6 * history.filter(like="train_loss/").iloc[0].sum()
    metrics = train(settings, tmp_path / "run")
    assert metrics["diverged"] is True
    assert metrics["divergence"].startswith("no selectable epoch")
    assert "exceeds divergence_factor 100" in metrics["divergence"]
    assert metrics["test"] is None
    saved = json.loads((tmp_path / "run" / METRICS).read_text())
    assert saved["divergence"] == metrics["divergence"]


def test_an_exploded_validation_epoch_is_skipped_not_fatal(data_dir: Path, tmp_path: Path) -> None:
    """EW + SGD at lr 3: epoch 1 is sane, then the validation loss explodes (finite). Training
    goes on to the end, the exploded epochs are never selected, and the run is a result."""
    settings = stl(data_dir, tasks=None, method="ew", optimizer="sgd", lr=3.0, epochs=3)
    metrics = train(settings, tmp_path)
    history = pd.read_csv(tmp_path / HISTORY)
    first = history.filter(like="train_loss/").iloc[0].sum()
    assert (history["val_loss"].iloc[1:] > 100 * first).all()  # exploded after epoch 1
    assert metrics["diverged"] is False
    assert metrics["epochs_run"] == 3
    assert metrics["selected_epoch"] == 1


def test_a_training_loss_explosion_stops_the_run(data_dir: Path, tmp_path: Path) -> None:
    settings = stl(data_dir, tasks=None, method="ew", optimizer="sgd", lr=10.0, epochs=4)
    metrics = train(settings, tmp_path)
    assert metrics["diverged"] is True
    assert "training loss" in metrics["divergence"]
    assert metrics["epochs_run"] < 4


def test_a_healthy_run_is_not_marked_diverged(data_dir: Path, tmp_path: Path) -> None:
    metrics = train(stl(data_dir, tasks=None, method="uwo", lr=1e-3), tmp_path)
    assert metrics["diverged"] is False
    assert metrics["divergence"] is None


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    losses=st.lists(st.floats(min_value=0, max_value=1e30), min_size=1, max_size=5),
    initial=st.floats(min_value=1e-6, max_value=1e6),
    factor=st.floats(min_value=1.001, max_value=1e6),
)
def test_divergence_is_a_sum_above_factor_times_the_first_loss(
    losses: list[float], initial: float, factor: float
) -> None:
    reason = divergence_reason(losses, initial, factor)
    assert (reason is not None) == (sum(losses) > factor * initial)
    if reason is not None:
        assert "exceeds divergence_factor" in reason


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_loss_is_divergence_whatever_the_factor(bad: float) -> None:
    assert "non-finite" in str(divergence_reason([1.0, bad], 1.0, float("inf")))
    assert divergence_reason([1e300, 1e300], 1.0, float("inf")) is None  # factor .inf: off
    assert divergence_reason([5.0], None, 2.0) is None  # no first step yet


@pytest.mark.parametrize("factor", [1.0, 0.5, float("nan"), -3.0])
def test_divergence_factor_must_exceed_one(factor: float) -> None:
    with pytest.raises(SettingsError, match="divergence_factor"):
        TrainSettings(divergence_factor=factor)
