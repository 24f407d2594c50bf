"""Main-grid analysis: Pareto masks and counts, lr selection, summaries, tables, figures, claims."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from mtl_paradigms.analysis import grid, grid_report, paper_values
from mtl_paradigms.analysis.pareto import dominated_by, pareto_counts, pareto_mask

CS_METRICS = ("segmentation/miou", "segmentation/pixacc", "depth/abs_err", "depth/rel_err")
NYU_METRICS = (
    *CS_METRICS,
    "normal/mean",
    "normal/median",
    "normal/within_11.25",
    "normal/within_22.5",
    "normal/within_30",
)
DIRECTIONS = {
    "segmentation/miou": True,
    "segmentation/pixacc": True,
    "depth/abs_err": False,
    "depth/rel_err": False,
    "normal/mean": False,
    "normal/median": False,
    "normal/within_11.25": True,
    "normal/within_22.5": True,
    "normal/within_30": True,
}
STL_VALUES = {
    "segmentation/miou": 0.70,
    "segmentation/pixacc": 0.92,
    "depth/abs_err": 0.014,
    "depth/rel_err": 30.0,
    "normal/mean": 24.0,
    "normal/median": 18.0,
    "normal/within_11.25": 0.30,
    "normal/within_22.5": 0.58,
    "normal/within_30": 0.70,
}


def _stand_in_delta_m(row: dict[str, float], metrics: tuple[str, ...]) -> float:
    """Test-only stand-in for Δm (Maninis et al., %, lower is better) against STL_VALUES."""
    terms = [
        (-1.0 if DIRECTIONS[m] else 1.0) * (row[m] - STL_VALUES[m]) / STL_VALUES[m] for m in metrics
    ]
    return 100.0 * float(np.mean(terms))


def _metrics_from(quality: float, tradeoff: float, metrics: tuple[str, ...]) -> dict[str, float]:
    """Metric values of a run: ``quality`` (higher = better overall), ``tradeoff`` in [-1, 1]
    moving performance from depth (and normals) to segmentation."""
    seg, geo = quality + 0.15 * tradeoff, quality - 0.15 * tradeoff
    values = {
        "segmentation/miou": 0.70 + 0.10 * seg,
        "segmentation/pixacc": 0.92 + 0.03 * seg,
        "depth/abs_err": 0.014 * (1.0 - 0.2 * geo),
        "depth/rel_err": 30.0 * (1.0 - 0.25 * geo),
        "normal/mean": 24.0 * (1.0 - 0.1 * geo),
        "normal/median": 18.0 * (1.0 - 0.1 * geo),
        "normal/within_11.25": 0.30 * (1.0 + 0.2 * geo),
        "normal/within_22.5": 0.58 * (1.0 + 0.1 * geo),
        "normal/within_30": 0.70 * (1.0 + 0.08 * geo),
    }
    return {m: values[m] for m in metrics}


def make_runs(
    winner: str = "adam",
    panels: tuple[tuple[str, str], ...] = (("cityscapes", "segnet"), ("nyuv2", "deeplabv3")),
    seed: int = 0,
    data_source: str = "synthetic",
) -> pd.DataFrame:
    """A small synthetic grid in which ``winner``'s runs are clearly better on every metric."""
    rng = np.random.default_rng(seed)
    methods = ("ew", "uw", "imtl", "cagrad", "aligned_mtl")
    lrs = (0.01, 0.001, 0.0001)
    rows = []
    for dataset, arch in panels:
        metrics = CS_METRICS if dataset == "cityscapes" else NYU_METRICS
        for optimizer in ("adam", "sgd", "signsgd"):
            opt_methods = methods + (("adatask",) if optimizer == "adam" else ())
            for method in opt_methods:
                for lr in lrs:
                    for s in range(3):
                        base = 0.3 if optimizer == winner else -0.3
                        base += -0.1 * abs(np.log10(lr) + 3)  # lr 0.001 is best
                        quality = base + 0.05 * rng.standard_normal()
                        tradeoff = rng.uniform(-1, 1)
                        test = _metrics_from(quality, tradeoff, metrics)
                        val = _metrics_from(quality + 0.01, tradeoff, metrics)
                        rows.append(
                            {
                                "dataset": dataset,
                                "arch": arch,
                                "data_source": data_source,
                                "method": method,
                                "optimizer": optimizer,
                                "lr": lr,
                                "seed": s,
                                "diverged": False,
                                "selected_epoch": 10,
                                "val_delta_m": _stand_in_delta_m(val, metrics),
                                "test_delta_m": _stand_in_delta_m(test, metrics),
                                **test,
                            }
                        )
        for task in sorted({m.split("/")[0] for m in metrics}):
            for s in range(3):
                row = {
                    "dataset": dataset,
                    "arch": arch,
                    "data_source": data_source,
                    "method": "stl",
                    "optimizer": "adam",
                    "lr": 0.001,
                    "seed": s,
                    "diverged": False,
                    "selected_epoch": 10,
                    "val_delta_m": np.nan,
                    "test_delta_m": np.nan,
                }
                own = [m for m in metrics if m.startswith(task)]
                row.update({m: STL_VALUES[m] * (1 + 0.01 * s) for m in own})
                rows.append(row)
    frame = pd.DataFrame(rows)
    columns = [*frame.columns.drop(list(NYU_METRICS), errors="ignore"), *NYU_METRICS]
    return grid.validate_runs(frame.reindex(columns=columns))


@pytest.fixture(scope="module")
def adam_wins() -> pd.DataFrame:
    return make_runs("adam")


# --------------------------------------------------------------------------- Pareto mask


def test_pareto_mask_2d_both_directions() -> None:
    pts = np.array([[1.0, 1.0], [2.0, 0.5], [0.5, 2.0], [0.9, 0.9], [2.0, 2.0]])
    np.testing.assert_array_equal(
        pareto_mask(pts, [True, True]), [False, False, False, False, True]
    )
    # both minimised: (0.9, 0.9) is dominated only by... nothing smaller in both; (0.5, 2) and
    # (2, 0.5) are extreme points.
    np.testing.assert_array_equal(
        pareto_mask(pts, [False, False]), [False, True, True, True, False]
    )
    # mixed: maximise x, minimise y -> (2, 0.5) dominates everything else
    np.testing.assert_array_equal(
        pareto_mask(pts, [True, False]), [False, True, False, False, False]
    )


def test_pareto_mask_3d_ties_and_nan() -> None:
    pts = np.array(
        [
            [1.0, 2.0, 3.0],
            [1.0, 2.0, 3.0],  # duplicate of a front point: both optimal
            [3.0, 2.0, 1.0],
            [1.0, 2.0, 2.0],  # weakly dominated (equal in two, worse in one)
            [np.nan, 9.0, 9.0],  # NaN: never optimal, dominates nothing
            [0.0, 0.0, 0.0],
        ]
    )
    mask = pareto_mask(pts, [True, True, True])
    np.testing.assert_array_equal(mask, [True, True, True, False, False, False])
    assert pareto_mask(np.empty((0, 3)), [True] * 3).shape == (0,)


def test_dominated_by_other_set_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    import mtl_paradigms.analysis.pareto as pareto

    rng = np.random.default_rng(1)
    pts = rng.normal(size=(200, 4))
    expected = pareto_mask(pts, [True, False, True, False])
    monkeypatch.setattr(pareto, "_MAX_CHUNK_ELEMENTS", 7)  # forces one-row chunks
    np.testing.assert_array_equal(pareto_mask(pts, [True, False, True, False]), expected)
    a = np.array([[1.0, 1.0], [0.0, 3.0]])
    b = np.array([[2.0, 2.0], [np.nan, np.nan]])
    np.testing.assert_array_equal(dominated_by(a, b, [True, True]), [True, False])
    np.testing.assert_array_equal(dominated_by(a, b[:0], [True, True]), [False, False])
    with pytest.raises(ValueError, match="higher_is_better"):
        pareto_mask(pts, [True])


def _hand_grid() -> pd.DataFrame:
    """One panel, 2 metrics (both higher is better); counts known by hand."""
    points = [
        ("adam", "ew", 3.0, 1.0),  # front
        ("adam", "ew", 1.0, 3.0),  # front
        ("adam", "uw", 1.5, 1.5),  # dominated by sgd (2, 2) only
        ("sgd", "ew", 2.0, 2.0),  # front
        ("sgd", "uw", 0.5, 0.5),  # dominated by everything
        ("signsgd", "ew", 2.5, 2.5),  # front; dominates sgd (2, 2)
        ("adam", "uw", 9.0, 9.0),  # diverged: ignored
    ]
    rows = []
    for i, (opt, method, x, y) in enumerate(points):
        rows.append(
            {
                "dataset": "cityscapes",
                "arch": "segnet",
                "method": method,
                "optimizer": opt,
                "lr": 0.001,
                "seed": i,
                "diverged": i == 6,
                "selected_epoch": 1,
                "val_delta_m": 0.0,
                "test_delta_m": 0.0,
                "segmentation/miou": x,
                "segmentation/pixacc": y,
            }
        )
    rows.append({**rows[0], "method": "stl", "seed": 99, "segmentation/miou": 99.0})
    return grid.validate_runs(pd.DataFrame(rows))


def test_pareto_counts_hand_made() -> None:
    runs = _hand_grid()
    metrics = ["segmentation/miou", "segmentation/pixacc"]
    counts = pareto_counts(runs, metrics, DIRECTIONS)
    assert len(counts) == 1
    row = counts.iloc[0]
    assert (row["n_a"], row["n_b"], row["n_pool"]) == (3, 2, 6)
    # all runs (signSGD included): adam (3,1), (1,3) optimal; sgd (2,2) dominated by (2.5,2.5)
    assert (row["a_po_all"], row["b_po_all"]) == (2, 0)
    # adam vs sgd only: (1.5,1.5) dominated by (2,2); sgd (2,2) not dominated by any adam run
    assert (row["a_po_vs_b"], row["b_po_vs_a"]) == (2, 1)


def test_pareto_counts_by_method_within_and_global() -> None:
    runs = _hand_grid()
    within = pareto_counts(runs, None, DIRECTIONS, by="method", scope="within")
    assert list(within["method"]) == ["ew", "uw"]
    ew = within.set_index("method").loc["ew"]
    # EW pool: adam (3,1), (1,3); sgd (2,2) dominated by signsgd (2.5,2.5) but by no adam run
    assert (ew["a_po_all"], ew["a_po_vs_b"], ew["b_po_all"], ew["b_po_vs_a"]) == (2, 2, 0, 1)
    uw = within.set_index("method").loc["uw"]
    assert (uw["a_po_all"], uw["b_po_all"], uw["a_po_vs_b"], uw["b_po_vs_a"]) == (1, 0, 1, 0)
    overall = pareto_counts(runs, None, DIRECTIONS)
    glob = pareto_counts(runs, None, DIRECTIONS, by="method", scope="global")
    for col in ("a_po_all", "a_po_vs_b", "b_po_all", "b_po_vs_a", "n_a", "n_b", "n_pool"):
        assert glob[col].sum() == overall[col].iloc[0]


def test_pareto_counts_na_without_other_optimizer() -> None:
    runs = _hand_grid()
    only_adam = runs[runs["optimizer"] == "adam"]
    counts = pareto_counts(only_adam, None, DIRECTIONS)
    assert pd.isna(counts["a_po_vs_b"].iloc[0])
    assert counts["b_po_all"].iloc[0] == 0


def test_missing_direction_is_named() -> None:
    with pytest.raises(KeyError, match="segmentation/pixacc"):
        pareto_counts(_hand_grid(), None, {"segmentation/miou": True})


# --------------------------------------------------------------------------- loading


def test_load_runs_names_missing_column(tmp_path: Path, adam_wins: pd.DataFrame) -> None:
    path = tmp_path / "runs.csv"
    adam_wins.drop(columns=["val_delta_m"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="val_delta_m"):
        grid.load_runs(path)
    adam_wins.to_csv(path, index=False)
    loaded = grid.load_runs(path)
    assert loaded["diverged"].dtype == bool
    assert grid.metric_columns(loaded) == list(NYU_METRICS)
    assert grid.panels(loaded) == [("cityscapes", "segnet"), ("nyuv2", "deeplabv3")]
    assert grid.panel_metrics(loaded, "cityscapes", "segnet") == list(CS_METRICS)


def test_panels_refuse_mixed_data_sources(adam_wins: pd.DataFrame) -> None:
    mixed = adam_wins.copy()
    mixed.loc[mixed.index[0], "data_source"] = "real"
    with pytest.raises(ValueError, match="data_source"):
        grid.panels(mixed)


# --------------------------------------------------------------------------- lr selection


def _lr_runs(spec: dict[float, list[tuple[float, bool]]]) -> pd.DataFrame:
    """One combo; ``spec[lr]`` = list of (val Δm, diverged) per seed."""
    rows = []
    for lr, seeds in spec.items():
        for s, (val, div) in enumerate(seeds):
            rows.append(
                {
                    "dataset": "nyuv2",
                    "arch": "segnet",
                    "method": "ew",
                    "optimizer": "adam",
                    "lr": lr,
                    "seed": s,
                    "diverged": div,
                    "selected_epoch": 3,
                    "val_delta_m": np.nan if div else val,
                    "test_delta_m": np.nan if div else val + 1.0,
                    "segmentation/miou": np.nan if div else 0.5 + lr,
                }
            )
    return grid.validate_runs(pd.DataFrame(rows))


def test_select_lowest_mean_validation_delta() -> None:
    # lr 0.1 has the single best seed (-1) but the higher mean (2.0 vs 1.25)
    runs = _lr_runs({0.1: [(5.0, False), (-1.0, False)], 0.01: [(1.0, False), (1.5, False)]})
    sel = grid.select_learning_rates(runs)
    assert len(sel) == 1
    assert sel["lr"].iloc[0] == 0.01
    assert sel["val_delta_m_mean"].iloc[0] == pytest.approx(1.25)
    assert sel["n_lrs"].iloc[0] == 2


def test_select_prefers_lower_mean_and_ties_to_smaller_lr() -> None:
    runs = _lr_runs({0.1: [(0.0, False), (1.0, False)], 0.01: [(2.0, False), (2.0, False)]})
    assert grid.select_learning_rates(runs)["lr"].iloc[0] == 0.1
    tie = _lr_runs({0.1: [(1.0, False)], 0.01: [(1.0, False)]})
    assert grid.select_learning_rates(tie)["lr"].iloc[0] == 0.01


def test_select_skips_lr_with_diverged_seed(caplog: pytest.LogCaptureFixture) -> None:
    runs = _lr_runs({0.1: [(-10.0, False), (0.0, True)], 0.01: [(3.0, False), (3.0, False)]})
    sel = grid.select_learning_rates(runs).iloc[0]
    assert sel["lr"] == 0.01
    assert not sel["fallback"]
    # every lr has a failure -> fewest failures first, flagged
    runs = _lr_runs(
        {
            0.1: [(-10.0, False), (0.0, True), (0.0, True)],
            0.01: [(3.0, False), (0.0, True), (4.0, False)],
        }
    )
    with caplog.at_level(logging.WARNING):
        sel = grid.select_learning_rates(runs).iloc[0]
    assert sel["lr"] == 0.01
    assert sel["fallback"]
    assert sel["val_delta_m_mean"] == pytest.approx(3.5)
    assert "failed" in caplog.text
    all_failed = _lr_runs({0.1: [(0.0, True)], 0.01: [(0.0, True)]})
    sel = grid.select_learning_rates(all_failed).iloc[0]
    assert np.isnan(sel["lr"])
    assert grid.runs_at_selected_lr(all_failed).empty


def test_selection_and_summary_on_grid(adam_wins: pd.DataFrame) -> None:
    sel = grid.select_learning_rates(adam_wins)
    # 2 panels × (5 methods × 3 optimizers + AdaTask)
    assert len(sel) == 2 * 16
    assert "stl" not in set(sel["method"])
    assert (sel["lr"] == 0.001).mean() > 0.9
    chosen = grid.runs_at_selected_lr(adam_wins, sel)
    summary = grid.summarise(chosen)
    assert len(summary) == len(sel)
    assert (summary["n_seeds"] == 3).all()
    assert {"segmentation/miou_mean", "segmentation/miou_std", "test_delta_m_mean"} <= set(
        summary.columns
    )
    with pytest.raises(ValueError, match="one lr per combo"):
        grid.summarise(adam_wins[adam_wins["method"] != "stl"])


def test_summarise_mean_std() -> None:
    runs = _lr_runs({0.01: [(1.0, False), (3.0, False), (0.0, True)]})
    summary = grid.summarise(runs).iloc[0]
    assert summary["n_seeds"] == 2
    assert summary["test_delta_m_mean"] == pytest.approx(3.0)
    assert summary["test_delta_m_std"] == pytest.approx(np.std([2.0, 4.0], ddof=1))


def test_format_mean_std() -> None:
    assert grid.format_mean_std(79.4321, 1.2) == "79.43 ± 1.20"
    assert grid.format_mean_std(0.71219, 0.00312) == "0.7122 ± 0.0031"
    assert grid.format_mean_std(-0.8, np.nan, 2) == "-0.80"
    assert grid.format_mean_std(np.nan, 1.0) == "–"
    assert grid.format_mean_std(5.0, 0.5, 1) == "5.0 ± 0.5"


def test_stl_selection_needs_val_loss_for_several_lrs(adam_wins: pd.DataFrame) -> None:
    stl = grid.stl_summary(adam_wins)
    assert len(stl) == 2
    assert stl["segmentation/miou_mean"].iloc[0] == pytest.approx(0.70 * 1.01)
    extra = adam_wins[adam_wins["method"] == "stl"].assign(lr=0.01)
    two_lrs = pd.concat([adam_wins, extra], ignore_index=True)
    with pytest.raises(ValueError, match="val_loss"):
        grid.stl_summary(two_lrs)
    two_lrs["val_loss"] = np.where(two_lrs["lr"] == 0.01, 0.1, 0.2)
    chosen = grid.stl_runs_selected(two_lrs)
    assert set(chosen["lr"]) == {0.01}


# --------------------------------------------------------------------------- paper values


def test_paper_values_lookup() -> None:
    assert paper_values.paper_delta_m("cityscapes", "segnet", "ew", "adam") == 79.43
    assert paper_values.paper_delta_m("nyuv2", "deeplabv3", "Aligned-MTL", "adam") == -0.33
    assert paper_values.paper_delta_m("nyuv2", "segnet", "pcgrad", "adam") is None
    assert paper_values.paper_table2("nyuv2", "deeplabv3") == {
        "adam_po_all": 16,
        "adam_po_vs_sgd": 21,
        "sgd_po_all": 6,
        "sgd_po_vs_adam": 6,
    }
    assert paper_values.paper_stl("cityscapes", "deeplabv3")["depth/rel_err"] == 47.37
    assert len(paper_values.paper_stl("nyuv2", "segnet")) == 9


# --------------------------------------------------------------------------- tables


def test_table2_and_a2(tmp_path: Path, adam_wins: pd.DataFrame) -> None:
    t2 = grid_report.table2(adam_wins, DIRECTIONS, stem=tmp_path / "table2")
    assert list(t2["dataset"]) == ["Cityscapes", "NYUv2"]
    assert "Adam PO (all runs)" in t2.columns
    assert "SGD+mom PO w.r.t. Adam only" in t2.columns
    assert "Adam PO (all runs), paper (real data)" in t2.columns
    assert list(t2["Adam PO w.r.t. SGD+mom only, paper (real data)"]) == [24, 21]
    assert (t2["Adam PO w.r.t. SGD+mom only"] > t2["SGD+mom PO w.r.t. Adam only"]).all()
    assert all((tmp_path / f"table2{s}").stat().st_size > 0 for s in (".csv", ".md", ".tex"))
    real = grid_report.table2(adam_wins.assign(data_source="real"), DIRECTIONS)
    assert "Adam PO (all runs), paper" in real.columns
    a2 = grid_report.table_a2(adam_wins, DIRECTIONS, stem=tmp_path / "table_a2")
    assert len(a2) == 2 * 6  # panels × methods
    assert list(a2["method"][:6]) == ["EW", "UW", "IMTL", "CAGrad", "Aligned-MTL", "AdaTask"]
    assert not any("paper" in c for c in a2.columns)
    md = (tmp_path / "table_a2.md").read_text()
    assert "–" in md  # AdaTask has no SGD runs: "w.r.t. Adam only" is undefined


def test_tables_a4_a7(tmp_path: Path, adam_wins: pd.DataFrame) -> None:
    tables = grid_report.tables_a4_a7(adam_wins, DIRECTIONS, out_dir=tmp_path)
    assert list(tables) == ["cityscapes-segnet", "nyuv2-deeplabv3"]
    cs = tables["cityscapes-segnet"]
    assert list(cs["method"][:2]) == ["STL", "STL, paper (real data)"]
    assert len(cs) == 2 + 16
    assert {"mIoU", "pixAcc", "abs err", "rel err", "Δm (%)", "lr", "seeds"} <= set(cs.columns)
    assert "normal mean" not in cs.columns
    assert "normal mean" in tables["nyuv2-deeplabv3"].columns
    ew_adam = cs[(cs["method"] == "EW") & (cs["optimizer"] == "Adam")].iloc[0]
    assert ew_adam["Δm (%), paper (real data)"] == "79.43"
    assert " ± " in ew_adam["Δm (%)"]
    assert ew_adam["lr"] == "0.001"
    stl_paper = cs[cs["method"] == "STL, paper (real data)"].iloc[0]
    assert stl_paper["mIoU"] == "0.7122"
    assert (tmp_path / "table_a4_a7_cityscapes-segnet.tex").exists()


def test_tables_a4_a7_mark_all_failed(adam_wins: pd.DataFrame) -> None:
    runs = adam_wins.copy()
    sel = (runs["method"] == "uw") & (runs["optimizer"] == "sgd")
    runs.loc[sel, "diverged"] = True
    runs.loc[sel, ["val_delta_m", "test_delta_m"]] = np.nan
    cs = grid_report.tables_a4_a7(runs, DIRECTIONS)["cityscapes-segnet"]
    row = cs[(cs["method"] == "UW") & (cs["optimizer"] == "SGD+mom")].iloc[0]
    assert row["Δm (%)"] == "all runs failed"
    assert row["lr"] == "–"


# --------------------------------------------------------------------------- figures


def test_figures_write_files(tmp_path: Path, adam_wins: pd.DataFrame) -> None:
    fig = grid_report.plot_parallel_coordinates(
        adam_wins, "cityscapes", "segnet", None, DIRECTIONS, stem=tmp_path / "pc"
    )
    plt.close(fig)
    fig = grid_report.plot_fig_a4(adam_wins, DIRECTIONS, stem=tmp_path / "figA4")
    plt.close(fig)
    fig = grid_report.plot_fig_a3(adam_wins, stem=tmp_path / "figA3")
    plt.close(fig)
    for stem in ("pc", "figA4", "figA3"):
        for suffix in (".pdf", ".png"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 1000
    with pytest.raises(ValueError, match="no runs"):
        grid_report.plot_fig2(adam_wins[adam_wins["dataset"] == "nyuv2"], DIRECTIONS)


# --------------------------------------------------------------------------- claims


def test_claims_adam_wins(adam_wins: pd.DataFrame) -> None:
    claims = grid_report.grid_claims(adam_wins, DIRECTIONS)
    assert [c.stage for c in claims] == ["main", "main"]
    assert all(c.reproduced for c in claims)
    assert "cityscapes-segnet" in claims[0].measured
    assert "paper 5/24/0/0" in claims[0].measured
    assert claims[0].measured.startswith("synthetic data: ")
    assert "overall 10/10" in claims[1].measured


def test_claims_sgd_wins() -> None:
    claims = grid_report.grid_claims(make_runs("sgd"), DIRECTIONS)
    assert not any(c.reproduced for c in claims)
    assert "overall 0/10" in claims[1].measured


def test_claims_without_sgd() -> None:
    runs = make_runs("adam")
    claims = grid_report.grid_claims(runs[runs["optimizer"] != "sgd"], DIRECTIONS)
    assert not any(c.reproduced for c in claims)
    assert "no panel" in claims[0].measured


def test_tables_say_how_many_learning_rates_and_epochs_each_row_had() -> None:
    from mtl_paradigms.analysis.grid_report import _budget

    runs = pd.DataFrame(
        {
            "dataset": ["cityscapes"] * 4, "arch": ["segnet"] * 4,
            "method": ["ew", "ew", "ew", "famo"], "optimizer": ["adam"] * 4,
            "lr": [0.1, 0.01, 0.01, 0.001], "epochs": [6, 6, 6, 3],
        }
    )  # fmt: skip
    budget = _budget(runs)
    assert budget[("cityscapes", "segnet", "ew", "adam")] == ("2", "6")
    assert budget[("cityscapes", "segnet", "famo", "adam")] == ("1", "3")


# --------------------------------------------------------------------------- diverged panels

PANELS = [  # as the workflow declares them (workflow/rules/common.smk, panel_names)
    {"dataset": "cityscapes", "arch": "segnet", "figure": "fig2_segnet", "table": "tableA4"},
    {"dataset": "nyuv2", "arch": "deeplabv3", "figure": "figA4_deeplabv3", "table": "tableA7"},
]
ALL_DIVERGED = "every MTL run of this panel diverged (144 runs)"


def _diverge(runs: pd.DataFrame, sel: pd.Series) -> pd.DataFrame:
    """``runs`` with the selected rows diverged: no test metrics, no Δm."""
    out = runs.copy()
    out.loc[sel, "diverged"] = True
    out.loc[sel, ["val_delta_m", "test_delta_m", *NYU_METRICS]] = np.nan
    return out


def _nyu_diverged(runs: pd.DataFrame) -> pd.DataFrame:
    return _diverge(runs, (runs["dataset"] == "nyuv2") & (runs["method"] != "stl"))


def _declared_files(panels: list[dict[str, str]]) -> list[str]:
    figures = ["figA3", *(p["figure"] for p in panels)]
    tables = ["table2", "tableA2", *(p["table"] for p in panels)]
    return [f"{f}{s}" for f in figures for s in (".pdf", ".png")] + [
        f"{t}{s}" for t in tables for s in (".csv", ".md", ".tex")
    ]


def _texts(fig: plt.Figure) -> str:
    return " ".join(t.get_text().replace("\n", " ") for ax in fig.axes for t in ax.texts)


def test_a_panel_whose_runs_all_diverged_gets_artefacts_that_say_so(
    tmp_path: Path, adam_wins: pd.DataFrame
) -> None:
    runs = _nyu_diverged(adam_wins)
    artefacts = grid_report.write_main_artefacts(runs, DIRECTIONS, PANELS, tmp_path / "all")
    for name in _declared_files(PANELS):
        assert (tmp_path / "all" / name).stat().st_size > 0, name
    assert artefacts.notes == {"nyuv2-deeplabv3": ALL_DIVERGED}
    # Table A7: one row saying so, in every format
    a7 = artefacts.tables["tableA7"]
    assert a7.to_dict("records") == [
        {"panel": "NYUv2, DeepLabV3", "note": f"{ALL_DIVERGED}; no table"}
    ]
    for suffix in (".csv", ".md", ".tex"):
        assert f"{ALL_DIVERGED}; no table" in (tmp_path / "all" / f"tableA7{suffix}").read_text()
    # the figures say it in words
    assert f"{ALL_DIVERGED}; no figure" in _texts(artefacts.figures["figA4_deeplabv3"])
    assert ALL_DIVERGED in _texts(artefacts.figures["figA3"])
    # Table 2: the panel with no runs; Table A2: named in the caption
    t2 = artefacts.tables["table2"].set_index("dataset")
    assert t2.loc["NYUv2", "all MTL runs"] == 0
    assert pd.isna(t2.loc["NYUv2", "Adam PO w.r.t. SGD+mom only"])
    for name in ("table2", "tableA2"):
        md = (tmp_path / "all" / f"{name}.md").read_text()
        assert f"Nothing to compare in NYUv2, DeepLabV3: {ALL_DIVERGED}." in md
    assert set(artefacts.tables["tableA2"]["dataset"]) == {"Cityscapes"}
    # the healthy panel's table and figure are those of a run table without the other panel
    alone = adam_wins[adam_wins["dataset"] == "cityscapes"]
    grid_report.write_main_artefacts(alone, DIRECTIONS, PANELS[:1], tmp_path / "alone")
    for name in ("tableA4.csv", "tableA4.md", "tableA4.tex", "fig2_segnet.png"):
        assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()


def test_claims_cannot_judge_a_panel_whose_runs_all_diverged(adam_wins: pd.DataFrame) -> None:
    runs = _nyu_diverged(adam_wins)
    claims = grid_report.grid_claims(runs, DIRECTIONS)
    unjudged = f"nyuv2-deeplabv3: cannot be judged, {ALL_DIVERGED}"
    assert not any(c.reproduced for c in claims)  # Adam wins on Cityscapes, but not judged
    assert all(c.measured.endswith(unjudged) for c in claims)
    assert "cityscapes-segnet: Adam PO all/w.r.t. SGD" in claims[0].measured
    assert "overall 5/5 methods" in claims[1].measured
    assert set(grid_report.adam_vs_sgd_delta_m(runs)["dataset"]) == {"cityscapes"}
    every = _diverge(adam_wins, adam_wins["method"] != "stl")
    claims = grid_report.grid_claims(every, DIRECTIONS)
    assert not any(c.reproduced for c in claims)
    assert claims[0].measured.startswith("synthetic data: no panel with both Adam and SGD runs; ")
    assert all(c.measured.count("cannot be judged") == 2 for c in claims)


def test_every_panel_diverged_still_writes_every_artefact(
    tmp_path: Path, adam_wins: pd.DataFrame
) -> None:
    runs = _diverge(adam_wins, adam_wins["method"] != "stl")
    artefacts = grid_report.write_main_artefacts(runs, DIRECTIONS, PANELS, tmp_path)
    for name in _declared_files(PANELS):
        assert (tmp_path / name).stat().st_size > 0, name
    assert set(artefacts.notes) == {"cityscapes-segnet", "nyuv2-deeplabv3"}
    assert grid_report.adam_vs_sgd_delta_m(runs).empty
    # a declared panel with no row in the run table at all says that
    missing = {"dataset": "nyuv2", "arch": "segnet", "figure": "figA4_segnet", "table": "tableA6"}
    artefacts = grid_report.write_main_artefacts(adam_wins, DIRECTIONS, [missing], tmp_path)
    note = "no MTL run of this panel in the runs table"
    assert artefacts.notes == {"nyuv2-segnet": note}
    assert f"{note}; no table" in (tmp_path / "tableA6.csv").read_text()
    assert f"{note}; no figure" in _texts(artefacts.figures["figA4_segnet"])


def test_a_panel_where_some_optimizers_and_methods_diverged_keeps_its_tables(
    tmp_path: Path, adam_wins: pd.DataFrame
) -> None:
    nyu = adam_wins["dataset"] == "nyuv2"
    sel = nyu & (adam_wins["optimizer"] == "adam") & (adam_wins["method"] != "stl")
    sel |= (adam_wins["method"] == "uw") & (adam_wins["optimizer"] == "sgd")
    runs = _diverge(adam_wins, sel)
    artefacts = grid_report.write_main_artefacts(runs, DIRECTIONS, PANELS, tmp_path)
    for name in _declared_files(PANELS):
        assert (tmp_path / name).stat().st_size > 0, name
    assert artefacts.notes == {}
    a7 = artefacts.tables["tableA7"]
    assert "normal mean" in a7.columns
    adam = a7[(a7["optimizer"] == "Adam") & ~a7["method"].str.startswith("STL")]
    assert len(adam) == 6
    assert (adam["Δm (%)"] == "all runs failed").all()
    assert "Nothing to compare" not in (tmp_path / "table2.md").read_text()
    claims = grid_report.grid_claims(runs, DIRECTIONS)
    assert not any("cannot be judged" in c.measured for c in claims)
    assert claims[0].reproduced  # judged on Cityscapes; NYUv2 has no Adam run to compare


def test_main_notebook_finishes_when_a_panel_all_diverged(
    tmp_path: Path, adam_wins: pd.DataFrame
) -> None:
    import json

    import nbformat

    from mtl_paradigms.notebooks import execute_notebook

    root = Path(__file__).resolve().parents[2]
    _nyu_diverged(adam_wins).to_csv(tmp_path / "runs.csv", index=False)
    (tmp_path / "directions.json").write_text(json.dumps(DIRECTIONS))
    params = {
        "runs_path": str(tmp_path / "runs.csv"),
        "directions_path": str(tmp_path / "directions.json"),
        "figures_dir": str(tmp_path / "figures"),
        "panels": PANELS,
    }
    out, html = tmp_path / "main.ipynb", tmp_path / "main.html"
    execute_notebook(root / "notebooks" / "main.ipynb", out, html, params, cwd=tmp_path)
    assert html.stat().st_size > 0
    for name in _declared_files(PANELS):
        assert (tmp_path / "figures" / name).stat().st_size > 0, name
    executed = nbformat.read(out, as_version=4)
    printed = "".join(
        o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs
    )
    assert f"nyuv2-deeplabv3: {ALL_DIVERGED}" in printed
