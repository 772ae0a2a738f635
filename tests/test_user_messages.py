"""What a user is told (a newcomer's first hour, issue 20): the time estimate before a paper-scale run on a CPU, one
results root, the short header of main.py and its sweep table, --help, the one line every command ends with naming its
files, the figures' footers and labels, and an empty `--rows` refused."""
import json
import os
from pathlib import Path

import pytest

import ltsei
import ltsei.experiments.run
from ltsei.cli import guide_main, main, row_of, sweep_summary
from ltsei.experiments.config import compose_config
from ltsei.experiments.estimate import fmt_duration, guide_estimate_line, load_costs, per_frame, plan_seconds, run_seconds
from ltsei.rows import ROWS_BY_ID
from ltsei.core.storage import resolve_runs_dir

CE = ROWS_BY_ID["s1_1_ce"].guide_args        # the README's first command, verbatim


def test_costs_are_data_with_their_cpu():
    c = load_costs()
    assert c["cpu"] and c["threads"] == 1 and c["gemm_gflops"] > 0 and c["measured"]
    for table in ("train_s_per_frame", "eval_s_per_frame"):
        for model in ("ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert", "MixtureOfExpertsConvNet"):
            assert set(c[table][model]) == {"384", "768", "4800"}, (table, model)
    assert per_frame({"M": {"100": 1.0, "200": 3.0}}, "M", 150) == 2.0


def test_paper_estimate_is_far_above_quick():
    c = load_costs()
    paper, quick = run_seconds(compose_config(CE), c, 1.0), run_seconds(compose_config([*CE, "profile=quick"]), c, 1.0)
    assert paper["total"] > 3600 and quick["total"] < 1800 and paper["total"] > 50 * quick["total"]
    assert plan_seconds([compose_config([*CE, "profile=smoke"])] * 2, jobs=2, costs=c) > 0


def test_guide_command_without_profile_prints_the_estimate_first(monkeypatch, tmp_path, capsys):
    "The README's first command on a CPU: one estimate line before any work, then the short header, the run, the files."
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    def fake_run(cfg, out, progress=True):        # no paper-scale training in a test: the run itself is replaced
        Path(out, "metrics.json").write_text("{}")
    monkeypatch.setattr(ltsei.experiments.run, "run_experiment", fake_run)
    out = tmp_path / "run"
    assert guide_main([*CE, f"hydra.run.dir={out}"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("[ltsei] estimate: about ") and "an estimate" in lines[0] and "add profile=quick" in lines[0]
    assert lines[1].startswith("[ltsei] row s1_1_ce (1.1 CE) | profile paper") and lines[2].startswith(f"[ltsei] files: {out}")
    assert lines[-1] == f"[ltsei] files: {out}"
    assert not any(l.startswith(("seed:", "training:")) for l in lines)        # not the whole config
    capsys.readouterr()
    assert guide_estimate_line([*CE, "profile=paper"], compose_config(CE)) is None    # a profile given: no line


def test_one_results_root(monkeypatch, tmp_path):
    monkeypatch.setenv("LTSEI_RUNS", str(tmp_path / "elsewhere"))
    assert resolve_runs_dir(None) == tmp_path / "elsewhere"
    from ltsei.cli import root_overrides
    assert root_overrides(CE) == [f"data.cache_dir={tmp_path}/elsewhere/cache", f"stage1.cache_dir={tmp_path}/elsewhere/cache/stage1"]
    assert root_overrides([*CE, "data.cache_dir=/x"]) == [f"stage1.cache_dir={tmp_path}/elsewhere/cache/stage1"]
    seen = []
    monkeypatch.setattr(ltsei.experiments.run, "run_experiment", lambda cfg, out, progress=True: seen.append((Path(out), cfg)))
    monkeypatch.chdir(tmp_path)                       # any working directory: the same root
    assert guide_main([*CE, "profile=smoke"]) == 0
    out, cfg = seen[0]
    assert out.parent == tmp_path / "elsewhere" / "smoke" / "adhoc" and cfg.data.cache_dir == f"{tmp_path}/elsewhere/cache"
    monkeypatch.delenv("LTSEI_RUNS")
    assert resolve_runs_dir(None) == Path(ltsei.__file__).resolve().parents[1] / "runs"


def test_help_explains_the_app_and_profiles(capsys):
    assert guide_main(["--help"]) == 0
    text = capsys.readouterr().out
    for s in ("profile=quick", "profile=smoke", "profile=paper", "LTSEI_RUNS", "--cfg job", "-m ", "experiment guide"):
        assert s in text, s


def test_row_of_and_sweep_summary(tmp_path):
    assert row_of(list(reversed(CE)) + ["profile=quick", "seed=2"]) == "s1_1_ce (1.1 CE)"
    assert row_of(["stage2.enabled=False", "sampling.name=none", "loss.name=CrossEntropy", "data.cache_dir=/x"]) == "s1_1_ce (1.1 CE)"
    assert row_of(["loss.name=FocalLoss"]).startswith("ad hoc")
    (tmp_path / "0").mkdir(); (tmp_path / "1").mkdir()
    t = {"acc": 0.5, "balanced_acc": 0.25, "macro_f1": 0.2, "few_acc": 0.0, "per_class_recall": [0.5]}
    (tmp_path / "0" / "metrics.json").write_text(json.dumps({"test": t, "class_counts": [1], "groups": {}}))
    s = sweep_summary([["seed=0", "profile=smoke"], ["seed=1", "profile=smoke"]], [str(tmp_path / "0"), str(tmp_path / "1")])
    lines = s.splitlines()
    assert lines[1].split() == ["job", "seed", "acc", "bal.acc", "macro-F1", "few", "folder"]
    assert lines[2].split() == ["0", "0", "50.0", "25.0", "20.0", "0.0", "0"] and "failed" in lines[3]
    assert lines[-1] == f"[ltsei] files: {tmp_path}"


def test_reproduce_dry_run_estimates_every_profile(tmp_path, capsys):
    assert main(["reproduce", "--profile", "smoke", "--rows", "1.1", "--dry-run", "--runs-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("[reproduce] estimate"))
    assert "smoke about" in line and "quick about" in line and "paper about" in line and "an estimate" in line
    assert out.strip().splitlines()[-1] == f"[reproduce] dry run: nothing written; the files would go to {tmp_path / 'r' / 'smoke'}"
    assert not (tmp_path / "r").exists()


def test_fmt_duration():
    assert [fmt_duration(s) for s in (7, 40, 600, 5 * 3600, 30 * 3600, 5 * 86400)] == ["7 s", "40 s", "10 min", "5.0 h", "30 h", "5 days"]


def test_figures_name_their_profile():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ltsei.experiments.tables import stamp_profile
    for profile, words in (("smoke", "these numbers mean nothing"), ("quick", "CPU scale"), ("paper", "profile paper")):
        fig = stamp_profile(plt.figure(), profile)
        assert words in fig.texts[-1].get_text() and profile in fig.texts[-1].get_text()
        plt.close(fig)


def test_estimate_leaves_out_what_is_cached(tmp_path):
    from ltsei.experiments.config import stage1_key
    from ltsei.experiments.estimate import cached
    from ltsei.signals.synth import synth_key
    cfg = compose_config([*CE, "profile=quick", f"data.cache_dir={tmp_path}", f"stage1.cache_dir={tmp_path}/s1"])
    assert cached(cfg) == (False, False)
    (tmp_path / "s1" / stage1_key(cfg)).mkdir(parents=True); (tmp_path / "s1" / stage1_key(cfg) / "manifest.json").write_text("{}")
    (tmp_path / f"synth-{synth_key(cfg.data.synth)}").mkdir(); (tmp_path / f"synth-{synth_key(cfg.data.synth)}" / "meta.json").write_text("{}")
    assert cached(cfg) == (True, True)
    c = load_costs()
    assert run_seconds(cfg, c, 1.0, stage1=False, data=False)["total"] < run_seconds(cfg, c, 1.0)["total"] / 5


def test_paper_scale_on_a_cpu_asks_first_where_someone_can_answer(monkeypatch, tmp_path, capsys):
    "Issue 32, item 3: with a terminal, a guide command without profile= asks before paper scale; no answer: nothing done."
    import ltsei.experiments.estimate
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    ran = []
    monkeypatch.setattr(ltsei.experiments.run, "run_experiment", lambda cfg, out, progress=True: ran.append(out) or Path(out, "metrics.json").write_text("{}"))
    monkeypatch.setattr(ltsei.experiments.estimate, "can_ask", lambda *a, **k: True)
    answers = iter(["", "y"])
    monkeypatch.setattr("builtins.input", lambda q: next(answers))
    out = tmp_path / "run"
    assert guide_main([*CE, f"hydra.run.dir={out}"]) == 1 and not ran and not out.exists()       # Enter: not started
    said = capsys.readouterr().out
    assert "[ltsei] estimate: about " in said and "profile=quick" in said and "not started, nothing written" in said
    assert guide_main([*CE, f"hydra.run.dir={out}"]) == 0 and ran                                 # y: it runs
    ran.clear(); monkeypatch.setattr("builtins.input", lambda q: pytest.fail("asked under --yes"))
    assert guide_main(["--yes", *CE, f"hydra.run.dir={tmp_path / 'run2'}"]) == 0 and ran        # --yes: no question
    monkeypatch.setattr(ltsei.experiments.estimate, "can_ask", lambda *a, **k: False)
    assert guide_main([*CE, f"hydra.run.dir={tmp_path / 'run3'}"]) == 0                          # a batch job / no TTY: goes on
    assert ltsei.experiments.estimate.can_ask(env={"SLURM_JOB_ID": "1"}) is False


def test_every_smoke_figure_carries_the_footer_and_no_legend_covers_data(monkeypatch, tmp_path):
    "Issue 32, item 4: the open-set and SNR figures are stamped like the others; legends sit beside the axes."
    import matplotlib
    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.figure import Figure
    import ltsei.experiments.report as T
    from ltsei.experiments.tables import SCORE_LABELS
    from ltsei.experiments.demo import write_fake_runs
    snr = pd.DataFrame([dict(row_id=i, method=ROWS_BY_ID[i].method, seed=s, snr_db=d, acc=.5 + .01 * d)
                        for i in ("s1_1_ce", "s3_1_crt") for s in (0, 1) for d in (13, 15, 17, 19, 21, 23)])
    os_runs = pd.DataFrame([dict(method=m, score=k, seed=s, auroc=.6, fpr_at_tpr=.5, oscr=.4)
                            for m in ("CE", "cRT") for k in SCORE_LABELS for s in (0, 1)])
    monkeypatch.setattr(T, "collect_snr", lambda *a: snr)
    monkeypatch.setattr(T, "collect_openset", lambda *a: os_runs)
    monkeypatch.setattr(T, "openset_tables", lambda *a: {})
    saved = {}
    real = Figure.savefig
    def spy(fig, path, **kw):
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        legends = [lg for ax in fig.axes for lg in [ax.get_legend()] if lg is not None]
        overlap = any(lg.get_window_extent(r).overlaps(ax.get_window_extent(r)) for ax in fig.axes for lg in legends)
        saved[Path(path).stem] = ([t.get_text() for t in fig.texts], overlap)
        return real(fig, path, **kw)
    monkeypatch.setattr(Figure, "savefig", spy)
    write_fake_runs(tmp_path / "runs", "smoke", rows=[ROWS_BY_ID[i] for i in ("s1_1_ce", "s3_1_crt", "s2_2_bs", "s4_4_e2", "s4_4_e3")])
    T.build_tables(tmp_path / "runs", "smoke")
    assert {"accuracy_vs_snr", "openset_auroc"} <= set(saved)
    for name, (texts, overlap) in saved.items():
        assert any("these numbers mean nothing" in t for t in texts), name
        assert not overlap, f"{name}: the legend covers the axes"


def test_labels_say_what_they_count():
    "Issue 32, item 8: shot groups are class counts; 'Best of the main table' names a row of the main table."
    import numpy as np
    import pandas as pd
    from ltsei.signals.data import shot_groups
    from ltsei.experiments.discussion import best_sentence
    from ltsei.experiments.tables import GROUP_RULES, table_rows
    assert shot_groups(np.array([300, 50, 5]))["rule"] in GROUP_RULES and "classes" in GROUP_RULES["thresholds"]
    ids = table_rows("main") + table_rows("extra")
    s = pd.DataFrame({"balanced_acc_mean": [.9 if i == "x5_routed_gate" else .5 for i in ids],
                      "few_acc_mean": [.9 if i == "x2_balpoe" else .2 for i in ids]}, index=ids)
    main = best_sentence(s, table_rows("main"))
    assert main.startswith("**Best of the main table**")
    assert ROWS_BY_ID["x5_routed_gate"].method not in main and ROWS_BY_ID["x2_balpoe"].method not in main
    assert ROWS_BY_ID["x5_routed_gate"].method in best_sentence(s, table_rows("extra"), "the rows beyond the guide")


@pytest.mark.parametrize("spec", ["", " , "])
def test_empty_rows_is_refused(spec, tmp_path, capsys):
    "Issue 32, item 8: `--rows ''` once selected all 47 rows silently; now one message, before any work."
    from ltsei.orchestration.reproduce import reproduce_main
    with pytest.raises(SystemExit) as e:
        reproduce_main(["--rows", spec, "--dry-run", "--runs-dir", str(tmp_path / "r")])
    assert e.value.code == 2 and "names no row" in capsys.readouterr().err and not (tmp_path / "r").exists()
