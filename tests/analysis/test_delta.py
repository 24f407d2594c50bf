"""Δm, Δp, Δmtm and mean rank on hand-computed examples, their signs and relations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl_paradigms.analysis.delta import (
    CONVENTION_HIGHER_IS_BETTER,
    CONVENTIONS,
    delta,
    mean_rank,
    signed_relative_changes,
)
from mtl_paradigms.tasks import make_tasks, metric_directions

# Two tasks, three metrics.
DIRECTIONS = {"seg/miou": True, "seg/pixacc": True, "depth/abs_err": False}
BASELINE = {"seg/miou": 0.5, "seg/pixacc": 0.8, "depth/abs_err": 0.4}
METHOD = {"seg/miou": 0.55, "seg/pixacc": 0.76, "depth/abs_err": 0.5}
# Relative changes, signed so that positive = better:
#   miou   +(0.55 - 0.5)/0.5 = +10 %
#   pixacc +(0.76 - 0.8)/0.8 =  -5 %
#   abs    -(0.5 - 0.4)/0.4  = -25 %


def test_signed_relative_changes_by_hand() -> None:
    changes = signed_relative_changes(METHOD, BASELINE, DIRECTIONS)
    assert changes == pytest.approx({"seg/miou": 10.0, "seg/pixacc": -5.0, "depth/abs_err": -25.0})


def test_delta_m_by_hand() -> None:
    # Δm = (1/3) [(-1)^1 (+10) + (-1)^1 (-5) + (-1)^0 (+25)] = (-10 + 5 + 25)/3 = 20/3: worse.
    assert delta(METHOD, BASELINE, DIRECTIONS) == pytest.approx(20 / 3)
    assert delta(METHOD, BASELINE, DIRECTIONS, "delta_m") == pytest.approx(20 / 3)


def test_delta_p_and_mtm_by_hand() -> None:
    # per task: seg (10 - 5)/2 = 2.5, depth -25; over tasks (2.5 - 25)/2 = -11.25: worse.
    assert delta(METHOD, BASELINE, DIRECTIONS, "delta_p") == pytest.approx(-11.25)
    assert delta(METHOD, BASELINE, DIRECTIONS, "delta_mtm") == pytest.approx(-11.25)
    # unequal metric counts: Δp is not -Δm here
    assert delta(METHOD, BASELINE, DIRECTIONS, "delta_p") != pytest.approx(-20 / 3)


def test_nyu_keys_example() -> None:
    # NYUv2 keys from the task definitions; every metric 10 % better than the baseline.
    directions = metric_directions(make_tasks("nyuv2", num_classes=13))
    baseline = dict.fromkeys(directions, 2.0)
    better = {k: 2.2 if up else 1.8 for k, up in directions.items()}
    assert delta(better, baseline, directions) == pytest.approx(-10.0)
    assert delta(better, baseline, directions, "delta_p") == pytest.approx(10.0)
    # only the segmentation metrics 10 % better, the rest unchanged:
    # Δm = -(2 x 10)/9; Δp = (10 + 0 + 0)/3
    seg_only = {k: (2.2 if k.startswith("segmentation/") else 2.0) for k in directions}
    assert delta(seg_only, baseline, directions) == pytest.approx(-20 / 9)
    assert delta(seg_only, baseline, directions, "delta_p") == pytest.approx(10 / 3)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sign_conventions(convention: str) -> None:
    better = {"seg/miou": 0.6, "seg/pixacc": 0.9, "depth/abs_err": 0.3}
    worse = {"seg/miou": 0.4, "seg/pixacc": 0.7, "depth/abs_err": 0.5}
    d_better = delta(better, BASELINE, DIRECTIONS, convention)  # type: ignore[arg-type]
    d_worse = delta(worse, BASELINE, DIRECTIONS, convention)  # type: ignore[arg-type]
    assert delta(BASELINE, BASELINE, DIRECTIONS, convention) == 0.0  # type: ignore[arg-type]
    if CONVENTION_HIGHER_IS_BETTER[convention]:
        assert d_better > 0 > d_worse
    else:
        assert d_better < 0 < d_worse


values = st.floats(min_value=0.01, max_value=100.0, allow_nan=False)


@given(
    data=st.lists(st.tuples(values, values, st.booleans()), min_size=1, max_size=6),
    per_task=st.integers(1, 3),
)
@settings(max_examples=60, deadline=None)
def test_relations_between_conventions(
    data: list[tuple[float, float, bool]], per_task: int
) -> None:
    # Equal metric counts per task (one per task in particular): Δp == -Δm; always Δmtm == Δp.
    metrics, baseline, directions = {}, {}, {}
    for i, (m, b, up) in enumerate(data * per_task):
        key = f"task{i % len(data)}/metric{i // len(data)}"
        metrics[key], baseline[key], directions[key] = m, b, up
    d_m = delta(metrics, baseline, directions, "delta_m")
    d_p = delta(metrics, baseline, directions, "delta_p")
    assert d_p == pytest.approx(-d_m, rel=1e-9, abs=1e-9)
    assert delta(metrics, baseline, directions, "delta_mtm") == d_p


def test_errors_name_the_metric() -> None:
    with pytest.raises(ValueError, match="'depth/abs_err' is missing from the baseline"):
        delta(METHOD, {"seg/miou": 0.5, "seg/pixacc": 0.8}, DIRECTIONS)
    with pytest.raises(ValueError, match="baseline value of metric 'seg/pixacc' is zero"):
        delta(METHOD, {**BASELINE, "seg/pixacc": 0.0}, DIRECTIONS)
    with pytest.raises(ValueError, match="'depth/abs_err' has no higher-is-better flag"):
        delta(METHOD, BASELINE, {"seg/miou": True, "seg/pixacc": True})
    with pytest.raises(ValueError, match="not of the form 'task/metric'"):
        delta({"miou": 0.5}, {"miou": 0.4}, {"miou": True})
    with pytest.raises(ValueError, match="not finite"):
        delta({**METHOD, "seg/miou": float("nan")}, BASELINE, DIRECTIONS)
    with pytest.raises(ValueError, match="unknown convention"):
        delta(METHOD, BASELINE, DIRECTIONS, "delta_x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no metrics"):
        delta({}, BASELINE, DIRECTIONS)


def test_mean_rank_by_hand() -> None:
    table = {
        "A": {"seg/miou": 0.5, "depth/abs_err": 0.3},
        "B": {"seg/miou": 0.6, "depth/abs_err": 0.4},
        "C": {"seg/miou": 0.6, "depth/abs_err": 0.2},
    }
    directions = {"seg/miou": True, "depth/abs_err": False}
    # miou: B and C tie for ranks 1-2 (1.5 each), A is 3; abs_err: C 1, A 2, B 3.
    assert mean_rank(table, directions) == pytest.approx({"A": 2.5, "B": 2.25, "C": 1.25})
    with pytest.raises(ValueError, match="method 'A' lacks metric"):
        mean_rank({**table, "A": {"seg/miou": 0.5}}, directions)
