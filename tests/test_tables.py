"""Aggregation of runs into tables (mean ± std over seeds, best marked) and figures (ltsei.experiments.tables)."""
import io
import math

import json

import numpy as np
import pandas as pd
import pytest

from ltsei.experiments.demo import fake_metrics, write_fake_runs
from ltsei.rows import ROWS, ROWS_BY_ID
from ltsei.experiments.layout import run_dir
from ltsei.core.storage import atomic_write_json
import ltsei.experiments.paired as paired
import ltsei.experiments.tables as tables
from ltsei.rows import Row
from ltsei.experiments.expectations import expectations
from ltsei.experiments.paired import all_paired, noise_threshold, paired_differences, paired_summary, verdict
from ltsei.experiments.report import build_tables
from ltsei.experiments.tables import (COLUMNS, TABLES, collect_results, fmt_pm, make_table, summarize, table_csv, table_html,
                          table_latex, table_markdown)


def _write(runs, row_id, seed, **test):
    """A complete run of `row_id` whose test metrics are `test` (the rest made up)."""
    r = ROWS_BY_ID[row_id]
    d = run_dir(runs, "quick", r, seed); d.mkdir(parents=True, exist_ok=True)
    m = fake_metrics(r.run_args, seed)
    m["test"].update(test)
    m.pop("demo")
    atomic_write_json(d / "metrics.json", m)
    atomic_write_json(d / "row.json", dict(overrides=r.run_args))
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
    assert "<b>72.0 ± 2.0</b>" in table_html(t)


def test_csv_holds_numbers_only(runs):
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "ablation_4_4", res)
    csv = table_csv(t)
    assert "±" not in csv and "*" not in csv and "**" not in csv
    rows = pd.read_csv(io.StringIO(csv))
    assert list(rows.row_id) == ["s4_4_e2", "s4_4_e3", "s4_4_e4"] and list(rows.method[:1]) == ["2 experts"]
    numeric = [c for c in rows.columns if c not in ("row_id", "method")]
    assert numeric[0] == "n_seeds" and all(pd.api.types.is_numeric_dtype(rows[c]) for c in numeric)
    assert rows.balanced_acc_mean.tolist() == pytest.approx([52.0, 72.0, 72.0])
    assert rows.balanced_acc_std.tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert rows.few_acc_mean.isna().all()                              # not measured: empty, not a dash


def test_text_columns_left_aligned(runs):
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "ablation_4_4", res)
    h = table_html(t)
    assert '<th style="text-align:left">Method</th>' in h and '<td style="text-align:left">2 experts</td>' in h
    assert '<td style="text-align:right">52.0 ± 2.0</td>' in h and '<th style="text-align:right">Bal. acc</th>' in h
    assert "|:--|--:|--:|" in table_markdown(t)
    assert r"\begin{tabular}{lcrrrrrrrr}" in table_latex(t)   # + H-mean


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


def test_nothing_marked_when_all_equal(tmp_path):
    runs = tmp_path / "runs"
    for i in ("s1_1_ce", "s2_2_bs", "s3_1_crt"):                      # e.g. a smoke run where every row is at chance
        _write(runs, i, 0, balanced_acc=1 / 6, acc=1 / 6)
    res, _ = collect_results(runs, "quick")
    t = make_table(summarize(res), "main", res)
    assert list(t.cells["Bal. acc"]) == ["16.7"] * 3 and not t.best["Bal. acc"].any() and not t.best["Acc"].any()
    assert "**16.7**" not in table_markdown(t) and "<b>16.7</b>" not in table_html(t)


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
    assert b["n_runs"] == 2 * len(ROWS) and b["demo"]
    names = {p.name for p in (runs / "quick" / "tables").iterdir()}
    assert set(b["tables"]) == set(TABLES)                             # the guide's tables and the extra rows' table
    assert names == ({"all_runs.csv", "summary.csv", "paired.csv", "paired.md", "expectations.md"}
                     | {f"{n}.{e}" for n in TABLES for e in ("md", "csv", "tex")})
    assert set(b["figures"]) == {"bacc_vs_imbalance_ratio", "bacc_vs_num_experts", "group_accuracy", "per_class_recall", "confusion"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in b["figures"].values())
    assert not stale.exists()
    main = (runs / "quick" / "tables" / "main.md").read_text()
    assert main.count("\n| ") == 1 + 18                              # header + the 18 rows of 1.1, 2.x, 3.x, 5.x
    assert len(b["expectations"]) == 6
    paired = pd.read_csv(runs / "quick" / "tables" / "paired.csv")
    assert set(paired.reference) == {"s1_1_ce", "s3_1_crt", "s5_1_full"} and set(paired.metric) == {"balanced_acc", "few_acc"}
    assert {"x2_ride", "x2_sade", "x2_balpoe"} <= set(paired[paired.reference == "s5_1_full"].row_id)   # the rivals against MoE-LTSEI
    assert all(pd.api.types.is_numeric_dtype(paired[c]) for c in ("n_pairs", "mean", "std", "min", "max", "threshold"))
    for f in (runs / "quick" / "tables").glob("*.csv"):                # no display strings in any CSV
        assert "±" not in f.read_text(encoding="utf-8"), f.name


def test_expectations_on_measured_means(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, "s1_1_ce", 0, balanced_acc=.6, many_acc=.9, few_acc=.3)
    _write(runs, "s2_2_bs", 0, balanced_acc=.7)
    _write(runs, "s3_1_crt", 0, balanced_acc=.5)
    ex = expectations(summarize(collect_results(runs, "quick")[0]))
    assert ex.holds.tolist() == [True, True, None, None, False, None]


def test_paired_differences_on_fake_seeds(tmp_path):
    """Against a computation from the metrics files and scipy's paired t-test: differences paired by seed, their
    mean, std, range, and 'beyond noise' exactly when the two-sided paired t-test gives p < 0.05."""
    from scipy.stats import ttest_rel
    runs = tmp_path / "runs"
    write_fake_runs(runs, "quick", rows=[ROWS_BY_ID[i] for i in ("s1_1_ce", "s2_1_focal", "s2_2_bs", "s3_1_crt", "s5_1_full")],
                    seeds=(0, 1, 2, 3))
    res, _ = collect_results(runs, "quick")
    pairs = all_paired(res)
    assert set(pairs.reference) == {"s1_1_ce", "s3_1_crt", "s5_1_full"}
    read = lambda i, k, m: json.loads((run_dir(runs, "quick", ROWS_BY_ID[i], k) / "metrics.json").read_text())["test"][m]
    for ref in ("s1_1_ce", "s3_1_crt"):
        for i in ("s1_1_ce", "s2_1_focal", "s2_2_bs", "s3_1_crt", "s5_1_full"):
            if i == ref: assert not ((pairs.row_id == i) & (pairs.reference == ref)).any(); continue
            for m in ("balanced_acc", "few_acc"):
                d = np.array([100 * (read(i, k, m) - read(ref, k, m)) for k in range(4)])
                q = pairs[(pairs.row_id == i) & (pairs.reference == ref) & (pairs.metric == m)].iloc[0]
                assert q.n_pairs == 4
                assert (q["mean"], q["std"], q["min"], q["max"]) == pytest.approx((d.mean(), d.std(ddof=1), d.min(), d.max()))
                p = ttest_rel([read(i, k, m) for k in range(4)], [read(ref, k, m) for k in range(4)]).pvalue
                assert bool(q.beyond_noise) == bool(p < 0.05)
    assert verdict(pairs, "s2_2_bs", "s1_1_ce") == "above"           # the made-up re-balancing is far above CE


def test_pairs_only_over_common_seeds_and_one_seed_has_no_spread(tmp_path):
    runs = tmp_path / "runs"
    for k, (a, b) in enumerate([(.40, .50), (.42, .51), (.44, .55)]):
        _write(runs, "s1_1_ce", k, balanced_acc=a)
        _write(runs, "s2_2_bs", k, balanced_acc=b)
    _write(runs, "s2_2_bs", 3, balanced_acc=.9)                      # no CE at seed 3: not paired
    res, _ = collect_results(runs, "quick")
    d = paired_differences(res, "s1_1_ce", metrics=("balanced_acc",))
    assert d.seed.tolist() == [0, 1, 2] and d["diff"].tolist() == pytest.approx([10, 9, 11])
    q = paired_summary(d).iloc[0]
    assert q["threshold"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5) and q.beyond_noise
    assert noise_threshold(1.0, 1) != noise_threshold(1.0, 1)          # NaN: one seed has no spread
    one = paired_summary(paired_differences(res[res.seed == 0], "s1_1_ce", metrics=("balanced_acc",))).iloc[0]
    assert one.n_pairs == 1 and math.isnan(one["std"]) and pd.isna(one.beyond_noise)
    assert verdict(all_paired(res[res.seed == 0]), "s2_2_bs", "s1_1_ce") == "higher (one seed)"


def test_rows_outside_the_guide_get_their_own_table(tmp_path, monkeypatch):
    extra = Row("x5_moe_plus", "5.1", "MoE-LTSEI + test option", "",
                run="stage2.enabled=true stage2.mode=moe_ltsei stage2.moe_loss.lambda_gate=2.0", note="Not in the guide: a test.")
    rows = [*tables.ROWS, extra]
    monkeypatch.setattr(tables, "ROWS", rows)
    monkeypatch.setattr(tables, "ROWS_BY_ID", {r.id: r for r in rows})
    monkeypatch.setattr(paired, "ROWS_BY_ID", {r.id: r for r in rows})
    runs = tmp_path / "runs"
    write_fake_runs(runs, "quick", rows=[ROWS_BY_ID["s1_1_ce"], ROWS_BY_ID["s5_1_full"], extra])
    res, _ = collect_results(runs, "quick", rows)
    s = summarize(res)
    main, ext = make_table(s, "main", res), make_table(s, "extra", res)
    assert "MoE-LTSEI + test option" not in list(main.cells.Method)
    assert list(ext.cells.Method) == ["MoE-LTSEI + test option"] and "Not in the guide: a test." in " ".join(ext.notes)
    assert "x5_moe_plus" in set(all_paired(res).row_id)                 # compared with CE like the main rows
