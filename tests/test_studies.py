"""Plots and study runners: synthetic tables, published cells, and tiny real runs (shared dir)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest

from rankscope import plots
from rankscope.genotype import PUBLISHED

HAS_DARTS = importlib.util.find_spec("rankscope.search.darts") is not None


def assert_png(path, min_bytes: int = 8000) -> None:
    """The file is a PNG with real content (not blank, not a stub)."""
    from matplotlib.image import imread

    assert path.is_file(), path
    assert path.stat().st_size > min_bytes, (path, path.stat().st_size)
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.02


# ----------------------------------------------------------------------------- plots, synthetic


def test_search_curves_and_rank_evolution(tmp_path):
    metrics = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [2.0, 1.2, 1.1, 1.3],
                            "train_loss": [2.1, 1.5, 1.0, 0.8]})
    fig = plots.plot_search_curves(metrics)
    assert "chosen epoch 3" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert_png(plots.save_figure(fig, tmp_path / "curves.png"))
    rows = [{"epoch": e, "cell": c, "cell_type": "normal" if c != 1 else "reduce", "edge": k,
             "op": op, "stable_rank": r + e + k + (c == 2)}
            for e in (1, 2) for c in (0, 1, 2) for k in range(3)
            for op, r in (("sep_conv_3x3", 5.0), ("dil_conv_3x3", 2.0))]
    ranks = pd.DataFrame(rows)
    means = plots.average_op_ranks(ranks, "normal")
    assert means.loc[1, "dil_conv_3x3"] == pytest.approx(2.0 + 1 + 1 + 0.5)  # edges 0..2, cells 0, 2
    wins = plots.min_rank_wins(ranks, "normal")
    assert wins.loc[2, "dil_conv_3x3"] == 3 and "sep_conv_3x3" not in wins
    assert_png(plots.save_figure(plots.plot_stable_rank_evolution(ranks, "reduce"), tmp_path / "sr.png"))
    with pytest.raises(ValueError):
        plots.average_op_ranks(ranks, "nope")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_cell_diagrams_of_published_genotypes(tmp_path, name):
    for cell_type in ("normal", "reduce"):
        fig = plots.plot_cell(PUBLISHED[name], cell_type)
        labels = [t.get_text() for t in fig.axes[0].texts]
        cell = PUBLISHED[name].normal if cell_type == "normal" else PUBLISHED[name].reduce
        assert sorted(op for op, _ in cell) == sorted(t for t in labels if "_" in t and "$" not in t)
        assert {"0", "1", "2", "3", "$c_{k}$"} <= set(labels)
        assert_png(plots.save_figure(fig, tmp_path / f"{cell_type}.png"))
    with pytest.raises(ValueError):
        plots.plot_cell(PUBLISHED[name], "other")


def test_test_curves_with_seeds_and_start_epoch(tmp_path):
    def run(offset, seed):
        return pd.DataFrame({"epoch": [1, 2, 3, 4], "test_top1_err": [50 + offset, None, 30 + offset, 20],
                             "test_loss": [1.5, None, 1.0, 0.8 + offset / 100], "seed": seed})
    runs = {"MSR-DARTS": pd.concat([run(0, 0), run(4, 1)]), "DARTS": run(2, 0)}
    fig = plots.plot_test_curves(runs, start_epoch=2)
    ax_err = fig.axes[0]
    msr = ax_err.lines[0]
    assert list(msr.get_xdata()) == [3, 4] and list(msr.get_ydata()) == [32.0, 20.0]  # mean of seeds
    assert ax_err.lines[0].get_color() == "tab:orange" and ax_err.lines[1].get_linestyle() == ":"
    assert_png(plots.save_figure(fig, tmp_path / "test.png"))


def test_rule_disagreement_counts_edges():
    a = PUBLISHED["msr-darts"]
    normal = list(a.normal)
    normal[0] = ("dil_conv_5x5", 1)   # one edge changes its op
    normal[7] = ("dil_conv_5x5", 0)   # one edge changes its input
    b = type(a)(normal=normal, normal_concat=a.normal_concat, reduce=a.reduce,
                reduce_concat=a.reduce_concat)
    assert plots.edges_differ(a, b, "normal") == 2 and plots.edges_differ(a, b, "reduce") == 0
    assert plots.edges_differ(a, PUBLISHED["darts-v2"].to_dict(), "reduce") == 8
    records = [{"epoch": 1, "genotype_min": a.to_dict(), "genotype_max": a.to_dict()},
               {"epoch": 2, "genotype_min": a.to_dict(), "genotype_max": b.to_dict()}]
    table = plots.rule_disagreement(records)
    assert table.to_dict("list") == {"epoch": [1, 2], "normal": [0, 2], "reduce": [0, 0]}
    darts = [{"epoch": 1, "genotype": a.to_dict(), "genotype_rank_min": b.to_dict()}]
    assert plots.default_rules(darts[0]) == ("genotype", "genotype_rank_min")
    assert plots.rule_disagreement(darts)["normal"].tolist() == [2]
    assert "alpha vs rank_min" in plots.plot_rule_disagreement(darts).axes[0].get_title()


# ----------------------------------------------------------------------------- cells study, CLI


def test_cells_study_depth_width_match_the_paper(tmp_path):
    from studies.cells import run_cells

    df = run_cells(tmp_path, genotypes=["msr-darts", "darts-v2"], echo=lambda m: None)
    normal = df[df.cell_type == "normal"].set_index("genotype")
    assert (normal.loc["darts-v2", "depth"], normal.loc["darts-v2", "width"]) == (3, 3.5)  # 4.5
    assert (normal.loc["msr-darts", "depth"], normal.loc["msr-darts", "width"]) == (4, 2.5)
    for name in ("cells-msr-darts.png", "cells-darts-v2.png", "figure4.png"):
        assert_png(tmp_path / name)
    assert list(pd.read_csv(tmp_path / "cells.csv").columns)[:5] == \
        ["genotype", "label", "cell_type", "depth", "width"]


def test_cli_cells_and_parsers(tmp_path):
    from click.testing import CliRunner

    from cli.study import parse_seeds, parse_settings, study

    assert parse_seeds("0,2-4") == [0, 2, 3, 4]
    assert parse_settings(("epochs=3", "data-dir=/d", "flip=false")) == \
        {"epochs": 3, "data_dir": "/d", "flip": False}
    res = CliRunner().invoke(study, ["cells", "--genotype", "darts-v1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "darts-v1" in res.output and (tmp_path / "cells-darts-v1.png").is_file()


# ----------------------------------------------------------------------------- tiny real studies


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    """One directory shared by the tiny studies: later studies reuse (skip) finished sub-runs."""
    return tmp_path_factory.mktemp("study")


def test_search_curves_tiny(study_dir):
    from studies.search_curves import RESULT_COLUMNS, run_search_curves

    df = run_search_curves(study_dir, scale="tiny", seeds=[0], echo=lambda m: None)
    assert list(df.columns) == RESULT_COLUMNS and df["epoch"].tolist() == [1, 2]
    assert df["chosen"].sum() == 1
    chosen = df.loc[df["chosen"], "epoch"].item()
    assert df.loc[df["chosen"], "val_loss"].item() == df["val_loss"].min()
    assert df["min_changed_normal"].iloc[0] == 0 and df["min_max_differ_normal"].between(0, 8).all()
    for name in ("figure2_val_loss", "stable_ranks_normal", "stable_ranks_reduce", "search_cells",
                 "search_disagreement"):
        assert_png(study_dir / f"{name}-s0.png")
    assert chosen in (1, 2)


def test_min_vs_max_tiny_and_resume(study_dir):
    from studies.min_vs_max import RESULT_COLUMNS, run_min_vs_max

    msgs: list[str] = []
    df = run_min_vs_max(study_dir, scale="tiny", seeds=[0], echo=msgs.append)
    assert any("search-msr-s0: finished, skipped" in m for m in msgs)  # shared with the test above
    assert list(df.columns) == RESULT_COLUMNS and df["rule"].tolist() == ["min", "max"]
    assert df["test_top1_err"].between(0, 100).all() and (df["params_m"] > 0).all()
    assert df["label"].tolist() == ["MSR-DARTS", "max stable rank"]
    for name in ("figure5_test_curves.png", "min_vs_max_cells.png", "min_vs_max_disagreement.png"):
        assert_png(study_dir / name)
    pd.testing.assert_frame_equal(pd.read_csv(study_dir / "min_vs_max.csv"), df, check_dtype=False)
    summary = pd.read_csv(study_dir / "min_vs_max_summary.csv")
    assert summary["rule"].tolist() == ["min", "max"] and summary["seeds"].tolist() == [1, 1]
    msgs.clear()
    again = run_min_vs_max(study_dir, scale="tiny", seeds=[0], echo=msgs.append)
    assert sum("skipped" in m for m in msgs) == 3  # one search, two trainings
    pd.testing.assert_frame_equal(again, df)


@pytest.mark.skipif(not HAS_DARTS, reason="rankscope/search/darts.py (the DARTS method) is missing")
def test_msr_vs_darts_tiny(study_dir):
    from studies.msr_vs_darts import RESULT_COLUMNS, run_msr_vs_darts, table1

    df = run_msr_vs_darts(study_dir, scale="tiny", seeds=[0], echo=lambda m: None)
    assert list(df.columns) == RESULT_COLUMNS and df["method"].tolist() == ["msr", "darts"]
    assert (df["search_device_hours"] > 0).all()
    assert df["search_device_days"].tolist() == pytest.approx((df["search_device_hours"] / 24).tolist())
    t1 = table1(df)
    assert t1["label"].tolist() == ["MSR-DARTS", "DARTS"]
    assert list(pd.read_csv(study_dir / "table1.csv").columns) == list(t1.columns)
    for name in ("figure3_test_curves.png", "msr_vs_darts_cells.png", "darts_alpha_vs_rank.png"):
        assert_png(study_dir / name)


def test_unknown_scale_is_one_clear_error(tmp_path):
    from studies.search_curves import run_search_curves

    with pytest.raises(ValueError, match="unknown scale"):
        run_search_curves(tmp_path, scale="huge", echo=lambda m: None)
