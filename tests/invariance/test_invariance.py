"""The loss-scale invariance toy: the Theory statements of Elich et al. (2024) as executable checks.

Invariances are asserted to float tolerance, and every non-invariance is asserted to be real (a
difference far above that tolerance), on a short configuration.
"""

from __future__ import annotations

import copy
import dataclasses
import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch

from mtl_paradigms.analysis.claims import Claim
from mtl_paradigms.analysis.invariance_report import (
    plot_fig_a1,
    plot_fig_a2,
    write_checks_table,
)
from mtl_paradigms.optim import PerTaskAdam
from mtl_paradigms.settings import SettingsError, from_mapping, to_mapping
from mtl_paradigms.toy.invariance import (
    RECORD_COLUMNS,
    InvarianceSettings,
    RunSpec,
    compare,
    invariance_checks,
    invariance_claims,
    limit_eps,
    load_records,
    max_relative_difference,
    minibatch_order,
    run_invariance,
    save_records,
    simulate,
)

EXACT_TOL = 1e-9
MIN_EFFECT = 1e-2
HEADS = ["head1", "head2"]
EVERY = ["head1", "head2", "backbone"]


@pytest.fixture(scope="module")
def short() -> InvarianceSettings:
    return InvarianceSettings(num_samples=64, batch_size=16, epochs=6)


@pytest.fixture(scope="module")
def exact(short: InvarianceSettings) -> InvarianceSettings:
    return dataclasses.replace(short, adam_eps=limit_eps(short))


@pytest.fixture(scope="module")
def checks(short: InvarianceSettings) -> pd.DataFrame:
    return invariance_checks(short, exact_tol=EXACT_TOL, min_effect=MIN_EFFECT)


@pytest.fixture(scope="module")
def records(short: InvarianceSettings) -> pd.DataFrame:
    return run_invariance(short, progress=False)


def _row(checks: pd.DataFrame, sid: str) -> pd.Series:
    rows = checks[checks["id"] == sid]
    assert len(rows) == 1, f"expected one check row {sid}"
    return rows.iloc[0]


# --- settings ---------------------------------------------------------------------------------


def test_settings_round_trip_through_json() -> None:
    settings = InvarianceSettings()
    again = from_mapping(InvarianceSettings, json.loads(json.dumps(to_mapping(settings))))
    assert again == settings
    assert isinstance(again.loss_scales, list)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_samples", 0),
        ("batch_size", 0),
        ("epochs", 0),
        ("hidden", 0),
        ("seed", -1),
        ("input_range", [1.0, 0.0]),
        ("input_range", [0.0]),
        ("target_scales", []),
        ("loss_scales", [1.0]),
        ("loss_scales", [1.0, 0.0]),
        ("loss_scales", [1.0, float("nan")]),
        ("sgd_lr", 0.0),
        ("sgd_uwo_lr", -1.0),
        ("adam_lr", float("inf")),
        ("momentum", 1.0),
        ("adam_betas", [0.9, 1.0]),
        ("adam_betas", [0.9]),
        ("adam_eps", -1e-8),
        ("negative_slope", 0.0),
        ("dtype", "float16"),
    ],
)
def test_settings_reject_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        InvarianceSettings(**{field: value})


def test_settings_reject_batch_larger_than_data() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        InvarianceSettings(num_samples=8, batch_size=16)


def test_settings_from_mapping_rejects_unknown_keys_and_types() -> None:
    with pytest.raises(SettingsError, match="lr"):
        from_mapping(InvarianceSettings, {"lr": 0.1})
    with pytest.raises(SettingsError, match="epochs"):
        from_mapping(InvarianceSettings, {"epochs": "5"})


# --- PerTaskAdam --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("betas", "eps"), [((0.9, 0.999), 1e-8), ((0.5, 0.9), 0.0), ((0.0, 0.0), 1e-3)]
)
def test_per_task_adam_with_one_task_equals_torch_adam_bitwise(
    betas: tuple[float, float], eps: float
) -> None:
    gen = torch.Generator().manual_seed(1)
    init = [torch.randn(5, 3, generator=gen, dtype=torch.float64), torch.randn(4, generator=gen)]
    ours = [p.clone() for p in init]
    theirs = [torch.nn.Parameter(p.clone()) for p in init]
    per_task = PerTaskAdam(ours, num_tasks=1, lr=0.01, betas=betas, eps=eps)
    adam = torch.optim.Adam(theirs, lr=0.01, betas=betas, eps=eps, foreach=False)
    for _ in range(20):
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in init]
        per_task.step([grads])
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        adam.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b.detach())


def test_per_task_adam_sums_per_task_updates_and_skips_missing_gradients() -> None:
    shared = torch.zeros(3, dtype=torch.float64)
    head = torch.zeros(2, dtype=torch.float64)
    opt = PerTaskAdam([shared, head], num_tasks=2, lr=0.1, betas=(0.9, 0.999), eps=0.0)
    g1 = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    g2 = torch.tensor([-4.0, -5.0, 6.0], dtype=torch.float64)
    opt.step([[g1, torch.ones(2, dtype=torch.float64)], [g2, None]])
    # First Adam step: the update is lr * g / |g| per task; the shared tensor gets their sum.
    # (exact up to the rounding of Adam's bias corrections)
    torch.testing.assert_close(shared, -0.1 * (g1.sign() + g2.sign()), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(
        head, torch.full((2,), -0.1, dtype=torch.float64), rtol=1e-12, atol=0
    )
    assert opt.state[head]["tasks"][1] is None  # task 2 never reached the head
    assert opt.state[head]["tasks"][0]["step"] == 1


def test_per_task_adam_checkpoints_and_schedules_like_a_torch_optimizer() -> None:
    gen = torch.Generator().manual_seed(3)
    a, b = torch.zeros(4), torch.zeros(4)
    opt_a = PerTaskAdam([a], num_tasks=2, lr=0.1, weight_decay=0.01)
    opt_b = PerTaskAdam([b], num_tasks=2, lr=0.1, weight_decay=0.01)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    grads = [[[torch.randn(4, generator=gen)] for _ in range(2)] for _ in range(4)]
    for step in grads[:2]:
        opt_a.step(step)
        sched_a.step()
    b.copy_(a)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as through torch.save
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    sched_b.load_state_dict(sched_a.state_dict())
    assert opt_b.param_groups[0]["lr"] == pytest.approx(0.025)
    for step in grads[2:]:
        opt_a.step(step)
        opt_b.step(step)
    assert torch.equal(a, b)


def test_per_task_adam_validates_its_input() -> None:
    opt = PerTaskAdam([torch.zeros(2)], num_tasks=2)
    with pytest.raises(ValueError, match="tasks"):
        opt.step([[torch.ones(2)]])
    with pytest.raises(ValueError, match="eps"):
        PerTaskAdam([torch.zeros(2)], num_tasks=1, eps=-1.0)


# --- the Theory statements --------------------------------------------------------------------


def test_every_check_holds_on_the_short_configuration(checks: pd.DataFrame) -> None:
    assert list(checks["id"]) == ["1", "2a", "2b", "3", "4a", "4b", "5", "6", "7a", "7b"]
    failing = checks.loc[~checks["holds"], ["id", "measured", "tolerance"]]
    assert failing.empty, failing.to_string()


@pytest.mark.parametrize("sid", ["1", "2a", "2b", "3", "6"])
def test_invariances_hold_to_float_rounding(checks: pd.DataFrame, sid: str) -> None:
    row = _row(checks, sid)
    assert row["measured"] <= EXACT_TOL
    # On a short run no chaos has amplified the rounding yet: free-running runs agree too.
    assert row["free_running"] <= EXACT_TOL


def test_adam_head_invariance_direct(exact: InvarianceSettings) -> None:
    """Statement 1 without the checks machinery: identical head trajectories, scaled losses."""
    scaled = simulate(exact, "adam_ew", "frozen", "scaled")
    equal = simulate(exact, "adam_ew", "frozen", "equal")
    for head in HEADS:
        assert max_relative_difference(scaled.params[head], equal.params[head]) <= EXACT_TOL
    losses = [
        r.records.query("quantity == 'loss' and module == 'head1'")["value"].to_numpy()
        for r in (scaled, equal)
    ]
    assert losses[0] == pytest.approx(10.0 * losses[1], rel=1e-12)


def test_sgd_momentum_scales_head_updates_by_alpha(
    checks: pd.DataFrame, exact: InvarianceSettings
) -> None:
    """Statement 4: alpha_t acts as a learning rate for head t (first step, then in lockstep)."""
    assert _row(checks, "4a")["measured"] <= EXACT_TOL
    scaled = simulate(exact, "sgd_ew", "frozen", "scaled")
    equal = simulate(exact, "sgd_ew", "frozen", "equal")
    for head, alpha in zip(HEADS, exact.loss_scales, strict=True):
        ratio = scaled.updates[head][0].norm() / equal.updates[head][0].norm()
        assert float(ratio) == pytest.approx(alpha, rel=1e-12)
    # ... and that is a real non-invariance, not a rounding effect.
    assert _row(checks, "4b")["measured"] >= 100 * MIN_EFFECT


def test_plain_adam_is_not_invariant_on_a_learnable_backbone(checks: pd.DataFrame) -> None:
    row = _row(checks, "5")
    assert row["modules"] == "backbone"
    assert row["measured"] >= 10 * MIN_EFFECT
    assert row["free_running"] >= MIN_EFFECT


def test_per_task_adam_invariant_where_plain_adam_is_not(exact: InvarianceSettings) -> None:
    per_task = compare(exact, "adam_per_task", "learnable")
    plain = compare(exact, "adam_ew", "learnable")
    assert per_task.lockstep_difference(["backbone"]) <= EXACT_TOL
    assert plain.lockstep_difference(["backbone"]) >= 1e7 * EXACT_TOL


def test_uwo_invariant_where_sgd_with_ew_is_not(exact: InvarianceSettings) -> None:
    """Statement 2 against its contrast: SGD with EW's constant weights 1/T is not invariant."""
    ew = compare(exact, "sgd_ew", "learnable")
    uwo = compare(exact, "sgd_uwo", "learnable")
    assert uwo.lockstep_difference(EVERY) <= EXACT_TOL
    assert ew.lockstep_difference(EVERY) >= 10 * MIN_EFFECT


def test_constant_weightings_differ_from_ew_when_betas_are_not_zero(
    exact: InvarianceSettings,
) -> None:
    """Contrast for statement 6: with a learnable backbone constant weights change Adam's steps."""
    spec = RunSpec("adam_fixed", "adam", "fixed", {"weights": [0.9, 0.1]})
    learnable = compare(exact, spec, "learnable", reference_run="adam_ew", setting="equal")
    assert learnable.lockstep_difference(["backbone"]) >= MIN_EFFECT


def test_power_of_two_scales_make_invariant_runs_bitwise_identical(
    exact: InvarianceSettings,
) -> None:
    """Scaling by 2^k commutes with float rounding: invariant update rules then give bit-identical
    free-running trajectories (however chaotic), non-invariant ones do not."""
    settings = dataclasses.replace(exact, loss_scales=[8.0, 0.125])
    for run, backbone in [
        ("sgd_uwo", "learnable"),
        ("adam_per_task", "learnable"),
        ("adam_ew", "frozen"),
    ]:
        scaled = simulate(settings, run, backbone, "scaled")
        equal = simulate(settings, run, backbone, "equal")
        assert all(torch.equal(scaled.params[m], equal.params[m]) for m in equal.params), run
    scaled = simulate(settings, "adam_ew", "learnable", "scaled")
    equal = simulate(settings, "adam_ew", "learnable", "equal")
    assert not torch.equal(scaled.params["backbone"], equal.params["backbone"])


def test_positive_eps_breaks_exactness(checks: pd.DataFrame) -> None:
    for sid in ("7a", "7b"):
        row = _row(checks, sid)
        assert row["adam_eps"] == pytest.approx(1e-8)
        assert row["measured"] > 1e3 * EXACT_TOL


def test_limit_eps_equals_eps_zero_where_eps_zero_is_defined(short: InvarianceSettings) -> None:
    zero = simulate(
        dataclasses.replace(short, adam_eps=0.0), "adam_per_task", "learnable", "scaled"
    )
    tiny = simulate(
        dataclasses.replace(short, adam_eps=limit_eps(short)),
        "adam_per_task",
        "learnable",
        "scaled",
    )
    assert all(torch.equal(zero.params[m], tiny.params[m]) for m in EVERY)


def test_eps_zero_with_zero_gradients_fails_loudly() -> None:
    """Even minibatches of the L1 loss give exactly-zero gradient coordinates; with
    beta1 = beta2 = 0 and eps = 0 Adam then divides 0/0, which must raise, not go unnoticed."""
    settings = InvarianceSettings(epochs=15, adam_eps=0.0, adam_betas=[0.0, 0.0])
    with pytest.raises(FloatingPointError, match="eps"):
        simulate(settings, "adam_ew", "frozen", "equal")


def test_lockstep_against_itself_reproduces_the_updates(short: InvarianceSettings) -> None:
    reference = simulate(short, "adam_per_task", "learnable", "equal")
    again = simulate(short, "adam_per_task", "learnable", "equal", follow=reference)
    assert all(torch.equal(again.updates[m], reference.updates[m]) for m in EVERY)


# --- determinism, records, outputs ------------------------------------------------------------


def test_runs_share_initial_weights_and_minibatches(short: InvarianceSettings) -> None:
    a = simulate(short, "sgd_ew", "learnable", "scaled")
    b = simulate(short, "adam_per_task", "learnable", "equal")
    assert all(torch.equal(a.params[m][0], b.params[m][0]) for m in EVERY)
    first, second = minibatch_order(short), minibatch_order(short)
    assert all(
        torch.equal(x, y)
        for xs, ys in zip(first, second, strict=True)
        for x, y in zip(xs, ys, strict=True)
    )


def test_same_settings_give_identical_records(
    short: InvarianceSettings, records: pd.DataFrame
) -> None:
    pd.testing.assert_frame_equal(run_invariance(short, progress=False), records, check_exact=True)


def test_other_seed_gives_other_records(short: InvarianceSettings) -> None:
    a = simulate(short, "adam_ew", "frozen", "equal")
    b = simulate(dataclasses.replace(short, seed=1), "adam_ew", "frozen", "equal")
    assert not torch.equal(a.params["head1"], b.params["head1"])


def test_records_are_tidy_and_complete(short: InvarianceSettings, records: pd.DataFrame) -> None:
    assert list(records.columns) == list(RECORD_COLUMNS)
    steps = short.epochs * short.steps_per_epoch
    assert records["step"].max() == steps
    assert records["epoch"].max() == short.epochs
    a1 = records[records["figure"] == "A1"]
    a2 = records[records["figure"] == "A2"]
    assert set(a1["module"]) == set(HEADS)
    assert set(a2["module"]) == set(EVERY)
    assert set(a1["run"]) == {"sgd_ew", "adam_ew", "sgd_uwo"}
    assert set(a2["run"]) == {"sgd_ew", "adam_ew", "sgd_uwo", "adam_per_task"}
    # A1: 3 runs x 2 settings x (2 heads x 3 quantities)
    # A2: 4 runs x 2 settings x (3 modules x 3 quantities)
    assert len(records) == steps * (3 * 2 * 6 + 4 * 2 * 9)
    assert records["value"].notna().all()
    assert (records["value"] >= 0).all()


def test_records_round_trip_through_gzip_csv(tmp_path, records: pd.DataFrame) -> None:
    path = tmp_path / "invariance" / "records.csv.gz"
    save_records(records, path)
    again = load_records(path)
    pd.testing.assert_frame_equal(again, records, check_exact=True)
    first = path.read_bytes()
    save_records(records, path)
    assert path.read_bytes() == first  # stable bytes: gzip mtime is fixed


def test_float32_runs(short: InvarianceSettings) -> None:
    settings = dataclasses.replace(short, dtype="float32", epochs=2)
    result = simulate(settings, "adam_per_task", "learnable", "scaled")
    assert result.params["backbone"].dtype == torch.float32
    assert limit_eps(settings) == pytest.approx(torch.finfo(torch.float32).tiny)


def test_figures_and_table_are_written(
    tmp_path, records: pd.DataFrame, checks: pd.DataFrame
) -> None:
    fig1 = plot_fig_a1(records, tmp_path / "fig_a1", loss_scales=[10.0, 0.1])
    fig2 = plot_fig_a2(records, tmp_path / "fig_a2")
    assert len(fig1.axes) == 3 * 2
    assert len(fig2.axes) == 3 * 3
    for stem in ("fig_a1", "fig_a2"):
        for suffix in (".pdf", ".png"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 1000
    write_checks_table(checks, tmp_path / "invariance_checks")
    for suffix in (".csv", ".md", ".tex"):
        assert (tmp_path / f"invariance_checks{suffix}").stat().st_size > 0
    plt.close(fig1)
    plt.close(fig2)
    table = pd.read_csv(tmp_path / "invariance_checks.csv")
    assert list(table["id"].astype(str)) == list(checks["id"])


def test_plot_rejects_records_without_the_figure(records: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="A1"):
        plot_fig_a1(records[records["figure"] == "A2"])


def test_claims_follow_the_checks(checks: pd.DataFrame) -> None:
    claims = invariance_claims(checks)
    assert len(claims) == len(checks)
    assert all(isinstance(c, Claim) and c.stage == "invariance" for c in claims)
    assert [c.reproduced for c in claims] == list(checks["holds"])
    flipped = checks.assign(holds=~checks["holds"])
    assert [c.reproduced for c in invariance_claims(flipped)] == list(flipped["holds"])
