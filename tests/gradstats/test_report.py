"""Claims decided from constructed summary tables, and the figures written from them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mtl_paradigms.analysis.gradstats_claims import (
    conflict_claim,
    gradstats_claims,
    magnitude_claim,
    spread_claims,
)
from mtl_paradigms.analysis.gradstats_report import FAMILIES, write_gradstats_artefacts
from mtl_paradigms.cli import main
from mtl_paradigms.gradstats import STATISTICS, SUBSETS, SUMMARY_COLUMNS

EPOCHS = 4


def table(values: dict[tuple[str, str], tuple[float, float, float]]) -> pd.DataFrame:
    """A summary table whose (comparison, statistic) rows have (mean, p2_5, p97_5) as given
    (every other statistic 0.5 with a +-0.1 spread), for every epoch, variant and subset."""
    rows = []
    for epoch in range(1, EPOCHS + 1):
        for comparison in ("inter_sample", "inter_task"):
            for variant in ("pairwise", "averaged"):
                for statistic in STATISTICS:
                    mean, lo, hi = values.get((comparison, statistic), (0.5, 0.4, 0.6))
                    for subset in SUBSETS:
                        rows.append(
                            {"epoch": epoch, "comparison": comparison, "variant": variant,
                             "statistic": statistic, "subset": subset, "n": 10, "mean": mean,
                             "std": 0.1, "p2_5": lo, "p97_5": hi}
                        )  # fmt: skip
        rows.append(
            {"epoch": epoch, "comparison": "task_vs_mean", "variant": "averaged",
             "statistic": "interference", "subset": "all", "n": 2, "mean": 0.6, "std": 0.1,
             "p2_5": 0.5, "p97_5": 0.7}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


PAPER_LIKE = table(
    {
        ("inter_sample", "magnitude"): (0.8, 0.5, 0.95),
        ("inter_task", "magnitude"): (0.6, 0.3, 0.9),
        ("inter_sample", "cosine"): (0.1, -0.6, 0.8),
        ("inter_task", "cosine"): (0.05, -0.3, 0.4),
        ("inter_sample", "conflict"): (0.45, 0.4, 0.5),
        ("inter_task", "conflict"): (0.47, 0.4, 0.5),
    }
)
REVERSED = table(
    {
        ("inter_sample", "magnitude"): (0.6, 0.5, 0.95),
        ("inter_task", "magnitude"): (0.8, 0.3, 0.9),
        ("inter_sample", "cosine"): (0.1, -0.3, 0.4),
        ("inter_task", "cosine"): (0.05, -0.6, 0.8),
        ("inter_sample", "conflict"): (0.3, 0.2, 0.4),
        ("inter_task", "conflict"): (0.45, 0.4, 0.5),
    }
)


def test_claims_follow_the_numbers() -> None:
    good = {"cityscapes/segnet": PAPER_LIKE}
    assert magnitude_claim(good, {}).reproduced
    assert spread_claims(good, {})[0].reproduced
    assert conflict_claim(good, {}).reproduced
    bad = {"cityscapes/segnet": REVERSED}
    assert not magnitude_claim(bad, {}).reproduced
    assert not spread_claims(bad, {})[0].reproduced
    assert not conflict_claim(bad, {}).reproduced
    claim = magnitude_claim(good, {"cityscapes": "synthetic"})
    assert "cityscapes/segnet (synthetic): inter-task 0.600 vs inter-sample 0.800" in claim.measured
    assert "4/4 epochs" in claim.measured


def test_the_spread_claim_judges_cityscapes_and_checks_celeba_the_other_way() -> None:
    panels = {
        "cityscapes/segnet": PAPER_LIKE,
        "nyuv2/segnet": REVERSED,
        "celeba/resnet18": REVERSED,
    }
    claims = spread_claims(panels, {})
    assert claims[0].reproduced  # NYUv2 is reported, not judged
    assert "[context, not judged]" in claims[0].measured
    assert claims[1].claim.startswith("On CelebA")
    assert claims[1].reproduced
    only_nyu = spread_claims({"nyuv2/segnet": REVERSED}, {})
    assert only_nyu[0].claim.startswith("On every panel")
    assert not only_nyu[0].reproduced


def test_artefacts_and_claims_verb(tmp_path: Path) -> None:
    stats = tmp_path / "gradstats.csv"
    PAPER_LIKE.to_csv(stats, index=False)
    panel = {"dataset": "cityscapes", "arch": "segnet", "stats": str(stats)}
    panel |= {family: f"{family}_cityscapes_segnet" for family in FAMILIES}
    artefacts = write_gradstats_artefacts([panel], tmp_path / "figures")
    assert set(artefacts.figures) == {*(panel[f] for f in FAMILIES), "gradstats_interference"}
    for name in artefacts.figures:
        for suffix in (".pdf", ".png"):
            assert (tmp_path / "figures" / f"{name}{suffix}").stat().st_size > 1000
    out = tmp_path / "claims.csv"
    code = main(["gradstats", "claims", "--panel", f"cityscapes/segnet={stats}",
                 "--source", "cityscapes=synthetic", "--out", str(out)])  # fmt: skip
    assert code == 0
    claims = pd.read_csv(out)
    assert len(claims) == 3
    assert claims["reproduced"].all()
    assert (claims["stage"] == "gradstats").all()


def test_an_empty_or_malformed_table_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    PAPER_LIKE.drop(columns="p97_5").to_csv(bad, index=False)
    with pytest.raises(ValueError, match="p97_5"):
        gradstats_claims({"x/y": pd.read_csv(bad)})
    from mtl_paradigms.analysis.gradstats_report import load_stats

    with pytest.raises(ValueError, match=r"bad\.csv"):
        load_stats(bad)
