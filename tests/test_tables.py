"""Aggregation of runs into tables (mean ± std over seeds, best marked) and figures (ltsei.tables)."""
import math

import numpy as np
import pandas as pd
import pytest

from ltsei.reproduce import ROWS, ROWS_BY_ID, fake_metrics, run_dir, write_json_atomic
from ltsei.tables import (COLUMNS, TABLES, build_tables, collect_results, expectations, fmt_pm, make_table, summarize,
                          table_csv, table_html, table_latex, table_markdown, write_fake_runs)


def _write(runs, row_id, seed, **test):
    """A complete run of `row_id` whose test metrics are `test` (the rest made up)."""
    r = ROWS_BY_ID[row_id]
    d = run_dir(runs, "quick", r, seed); d.mkdir(parents=True, exist_ok=True)
    m = fake_metrics(r.run_args, seed)
    m["test"].update(test)
    m.pop("demo")
    write_json_atomic(d / "metrics.json", m)
    write_json_atomic(d / "row.json", dict(overrides=r.run_args))
    return d


@pytest.fixture
def runs(tmp_path):
    runs = tmp_path / "runs"
    for k, (a, b, c) in enumerate([(.50, .70, .71), (.54, .72, .73), (.52, .74, .72)]):
        _write(runs, "s4_4_e2", k, balanced_acc=a, acc=a, few_acc=None)
        _write(runs, "s4_4_e3", k, balanced_acc=b, acc=b, few_acc=None)
        _write(runs, "s4_4_e4", k, balanced_acc=c, acc=c, few_acc=None)
    return runs


def test_mean_std_over_seeds(runs):
    res, per_class = collect_results(runs, "quick")
    assert len(res) == 9 and set(res.seed) == {0, 1, 2}
    s = summarize(res)
    assert list(s.index) == ["s4_4_e2", "s4_4_e3", "s4_4_e4"]
    assert s.at["s4_4_e2", "balanced_acc_mean"] == pytest.approx(.52)
    assert s.at["s4_4_e2", "balanced_acc_std"] == pytest.approx(np.std([.50, .54, .52], ddof=1))
    assert math.isnan(s.at["s4_4_e2", "few_acc_mean"])
    assert len(per_class) == 9 * len(fake_metrics([], 0)["class_counts"])


def test_best_marked_per_column(runs):
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "ablation_4_4", res)
    assert list(t.cells["Bal. acc"]) == ["52.0 ± 2.0", "72.0 ± 2.0", "72.0 ± 1.0"]
    assert list(t.best["Bal. acc"]) == [False, True, True]           # equal at the shown precision: both best
    assert list(t.cells["Few"]) == ["–", "–", "–"] and not t.best["Few"].any()
    assert "Routing acc" in t.cells.columns                           # MoE-LTSEI rows report their gate
    md, tex, csv = table_markdown(t), table_latex(t), table_csv(t)
    assert "| 2 experts | 3 | 52.0 ± 2.0 |" in md and "**72.0 ± 2.0**" in md and "**52.0" not in md
    assert r"\textbf{72.0 $\pm$ 2.0}" in tex and r"\begin{tabular}" in tex and r"\toprule" in tex
    rows = pd.read_csv(pd.io.common.StringIO(csv))
    assert list(rows["Bal. acc"]) == ["52.0 ± 2.0", "72.0 ± 2.0 *", "72.0 ± 1.0 *"]
    assert "<b>72.0 ± 2.0</b>" in table_html(t)


def test_single_seed_shows_the_mean_only(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, "s1_1_ce", 0, balanced_acc=.4, acc=.4)
    _write(runs, "s2_2_bs", 0, balanced_acc=.6, acc=.6)
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "main", res)
    assert list(t.cells["Bal. acc"]) == ["40.0", "60.0"] and list(t.best["Bal. acc"]) == [False, True]
    assert list(t.cells["Type"]) == ["Baseline", "Single-stage"]
    assert any(n.startswith("Not run yet: s2_1_focal") for n in t.notes)
    assert make_table(summarize(res), "ablation_4_1", res) is None


def test_incomplete_runs_are_not_counted(runs):
    d = run_dir(runs, "quick", ROWS_BY_ID["s4_4_e2"], 7); d.mkdir()
    (d / "metrics.json").write_text('{"test": {"acc": 0.9')       # torn
    d = run_dir(runs, "quick", ROWS_BY_ID["s4_4_e2"], 8); d.mkdir()
    (d / "log.csv").write_text("epoch\n0\n")                      # interrupted
    res, _ = collect_results(runs, "quick")
    assert len(res) == 9


def test_lws_deviation_is_noted(tmp_path):
    runs = tmp_path / "runs"
    write_fake_runs(runs, "quick", rows=[ROWS_BY_ID["s3_1_crt"], ROWS_BY_ID["s3_1_lws"]])
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "main", res)
    assert list(t.cells.Method) == ["cRT", "LWS†"]
    assert any(n.startswith("† LWS:") and "stage2.mode=lws" in n for n in t.notes)
    assert any(n.startswith("DEMO") for n in t.notes)
    assert r"LWS\textsuperscript{\dag}" in table_latex(t)


def test_fmt_pm():
    assert fmt_pm(51.04, 1.26) == "51.0 ± 1.3"
    assert fmt_pm(51.04, float("nan")) == "51.0"
    assert fmt_pm(float("nan"), 1.0) == "–"


def test_unknown_table():
    with pytest.raises(ValueError, match="unknown table 'x'"):
        make_table(pd.DataFrame(), "x")


def test_build_tables_writes_everything(tmp_path):
    runs = tmp_path / "runs"
    write_fake_runs(runs, "quick", seeds=(0, 1))
    stale = runs / "quick" / "figures" / "old.png"; stale.parent.mkdir(parents=True); stale.write_text("x")
    b = build_tables(runs, "quick")
    assert b["n_runs"] == 74 and b["demo"]
    names = {p.name for p in (runs / "quick" / "tables").iterdir()}
    assert names == {"all_runs.csv", "summary.csv", "expectations.md"} | {f"{n}.{e}" for n in TABLES for e in ("md", "csv", "tex")}
    assert set(b["figures"]) == {"bacc_vs_imbalance_ratio", "bacc_vs_num_experts", "group_accuracy", "per_class_recall"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in b["figures"].values())
    assert not stale.exists()
    main = (runs / "quick" / "tables" / "main.md").read_text()
    assert main.count("\n| ") == 1 + 18                              # header + the 18 rows of 1.1, 2.x, 3.x, 5.x
    assert len(b["expectations"]) == 5


def test_expectations_on_measured_means(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, "s1_1_ce", 0, balanced_acc=.6, many_acc=.9, few_acc=.3)
    _write(runs, "s2_2_bs", 0, balanced_acc=.7)
    _write(runs, "s3_1_crt", 0, balanced_acc=.5)
    ex = expectations(summarize(collect_results(runs, "quick")[0]))
    assert ex.holds.tolist() == [True, True, None, None, False]
