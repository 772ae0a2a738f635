"""The table registry and row selection (ltsei.rows), resume and scheduling of `ltsei reproduce` (ltsei.orchestration)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ltsei.orchestration.reproduce as rp
from ltsei.experiments.demo import demo_compose_config, demo_run_experiment, fake_metrics
from ltsei.rows import (OPENSET_ROWS, RIVAL_PREFIXES, ROWS, ROWS_BY_ID, Row, guide_commands, parse_guide, select_rows,
                        split_command)
from ltsei.experiments.layout import read_metrics, run_dir, run_status
from ltsei.core.storage import atomic_write_json
from ltsei.orchestration.local_launcher import run_local_pool
from ltsei.orchestration.reproduce import reproduce_main
from ltsei.orchestration.row_runs import RowRun, RowRunFailed, plan_row_runs, prepare_row_run_dir, row_run_overrides

def use_executor(monkeypatch, execute):
    "Run each row with `execute(rr, profile)` instead of its notebook (the command's `row_executor`: no kernel starts)."
    monkeypatch.setattr(rp, "row_executor", lambda profile, funcs, runs_dir, jobs, runs=0: (lambda rr, env=None: execute(rr, profile)))


GUIDE = Path(__file__).resolve().parents[1] / "nbs" / "experiment-guide.md"   # the repository's copy of the guide


# ---------------------------------------------------------------- registry
GUIDE_ROWS = [r for r in ROWS if r.guide]          # the registry less the rows beyond the guide ("extra")


def test_registry_has_every_guide_row_once():
    assert len(GUIDE_ROWS) == 37
    assert len({r.id for r in ROWS}) == len(ROWS)
    assert [r.section for r in GUIDE_ROWS] == sorted(r.section for r in GUIDE_ROWS)
    sections = {r.section for r in GUIDE_ROWS}
    assert sections == {"1.1", "2.1", "2.2", "2.3", "3.1", "3.2", "3.3", "4.1", "4.2", "4.3", "4.4", "4.5", "5.1", "5.2"}
    for r in GUIDE_ROWS:
        assert r.id.startswith("s" + r.section.replace(".", "_") + "_"), r.id
        assert r.guide.startswith("python main.py "), r.id
        assert r.method and r.kind in ("Baseline", "Single-stage", "Two-stage", "Ablation", "Ours")
        assert all("=" in a for a in r.guide_args), r.id


def test_lws_row_runs_lws_and_says_why():
    lws = ROWS_BY_ID["s3_1_lws"]
    assert "stage2.mode=crt" in lws.guide_args and "stage2.mode=lws" not in lws.guide_args
    assert lws.run_args == [("stage2.mode=lws" if a == "stage2.mode=crt" else a) for a in lws.guide_args]
    assert lws.deviates and "crt" in lws.note and "lws" in lws.note
    assert [r.id for r in GUIDE_ROWS if r.deviates] == ["s3_1_lws"]
    assert all(r.run_args == r.guide_args for r in GUIDE_ROWS if r.id != "s3_1_lws")


def test_extra_rows_run_their_own_overrides_and_say_why():
    extra = [r for r in ROWS if not r.guide and r.section != "os"]   # the open-set twins: test_openset_rows
    assert [r.id for r in extra] == ["x2_ride", "x2_sade", "x2_balpoe", "x5_routed_gate", "x5_earlier", "x5_earlier_margins",
                                     "x5_earlier_groups", "x5_earlier_gate", "x5_earlier_difficulty"]
    for r in extra:
        assert r.run and r.note and all("=" in a for a in r.run_args)
    gate = ROWS_BY_ID["x5_routed_gate"].run_args
    assert "stage2.moe.detach_gate=true" in gate and "stage2.moe_loss.gate_weighting=balanced" in gate


def test_openset_rows():
    assert [r.id for r in select_rows("os")] == [r.id for r in OPENSET_ROWS]
    rivals = [r for r in ROWS if not r.guide and r.section != "os" and r.method.startswith(RIVAL_PREFIXES)]
    assert [r.id for r in OPENSET_ROWS] == ["os_s1_1_ce", "os_s3_1_crt", "os_s5_1_full"] + [f"os_{r.id}" for r in rivals]
    for r in OPENSET_ROWS:
        assert r.kind == "Open set" and r.run_args[-2:] == ["openset.enabled=true", "openset.unknown_fraction=0.2"]


def test_guide_commands_are_the_guides_arguments():
    cmds = guide_commands()
    assert [i for i, _ in cmds] == [r.id for r in GUIDE_ROWS]
    assert dict(cmds)["s3_1_lws"] == ROWS_BY_ID["s3_1_lws"].guide_args  # the guide's crt, as written
    full = dict(cmds)["s5_1_full"]
    assert len(full) == 33 and full[0] == "model.name=ConvNetADSB" and full[-1] == "data.imbalance_ratio=100"
    assert not any("\\" in a or "\n" in a or a.startswith("python") for _, args in cmds for a in args)


def test_registry_is_the_guide_verbatim():
    cmds = parse_guide(GUIDE)
    assert len(cmds) == 37
    assert [c["command"] for c in cmds] == [r.guide for r in GUIDE_ROWS]
    assert [c["section"] for c in cmds] == [r.section for r in GUIDE_ROWS]


def test_parse_guide_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment guide not found"):
        parse_guide(tmp_path / "nope.md")


def test_split_command_continuations():
    assert split_command("python main.py \\\n  a.b=1 \\\n  c=x") == ["a.b=1", "c=x"]
    assert split_command("a=1 b=2") == ["a=1", "b=2"]


# ---------------------------------------------------------------- --rows
@pytest.mark.parametrize("spec,ids", [
    ("s2_1_focal", ["s2_1_focal"]),
    ("4.4", ["s4_4_e2", "s4_4_e3", "s4_4_e4"]),
    ("5.2,1.1", ["s1_1_ce", "s5_2_short"]),                      # registry order, not the order asked
    ("s4_5_*", ["s4_5_ir10", "s4_5_ir50", "s4_5_ir100", "s4_5_ir200"]),
    ("3.1, s3_1_crt", ["s3_1_crt", "s3_1_tau_norm", "s3_1_lws"]),  # no duplicates
])
def test_select_rows(spec, ids):
    assert [r.id for r in select_rows(spec)] == ids


def test_select_rows_groups():
    assert len(select_rows(None)) == len(select_rows("all")) == len(ROWS) == 46 + len(OPENSET_ROWS)   # 37 guide rows + 9 extra
    assert {r.section[0] for r in select_rows("2")} == {"2"} and len(select_rows("2")) == 12   # 9 guide rows + 3 rivals
    assert {r.section for r in select_rows("main")} == {"1.1", "2.1", "2.2", "2.3", "2.4", "3.1", "3.2", "3.3", "5.1", "5.2"}
    with pytest.raises(ValueError, match="'7.7' matches no row"):
        select_rows("1.1,7.7")


def test_rows_argument_reaches_the_plan(tmp_path, capsys):
    assert reproduce_main(["--rows", "4.4,s1_1_ce", "--seeds", "2", "--runs-dir", str(tmp_path), "--dry-run", "--demo"]) == 0
    out = capsys.readouterr().out
    assert "4 rows x 2 seed(s) = 8 runs" in out
    assert "s1_1_ce/seed1" in out and "s4_4_e4/seed0" in out and "s2_1_focal" not in out
    assert "python main.py profile=quick seed=1 loss.name=CrossEntropy sampling.name=none stage2.enabled=false" in out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    with pytest.raises(ValueError, match="matches no row"):
        reproduce_main(["--rows", "nope", "--dry-run"])


# ---------------------------------------------------------------- resume
def _complete(d: Path, row: Row, seed: int, marker: str):
    d.mkdir(parents=True, exist_ok=True)
    m = fake_metrics(row.run_args, seed)
    m["marker"] = marker
    atomic_write_json(d / "metrics.json", m)
    atomic_write_json(d / "row.json", dict(overrides=row.run_args))


def test_run_status(tmp_path):
    row = ROWS_BY_ID["s2_2_bs"]
    d = tmp_path / "r"
    assert run_status(d, row) == "missing"
    d.mkdir()
    assert run_status(d, row) == "missing"                    # an empty directory holds nothing to lose
    (d / "log.csv").write_text("epoch\n0\n")
    assert run_status(d, row) == "partial"
    (d / "metrics.json").write_text('{"test": {"acc": 0.')    # torn
    assert run_status(d, row) == "partial"
    _complete(d, row, 0, "x")
    assert run_status(d, row) == "complete"
    atomic_write_json(d / "row.json", dict(overrides=["loss.name=FocalLoss"]))
    assert run_status(d, row) == "stale"


def test_atomic_write_json_leaves_no_temporary(tmp_path):
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}


def test_resume_skips_complete_and_redoes_partial_and_stale(tmp_path, monkeypatch):
    """A complete run is not touched; a half-written one and one made for other overrides are cleared and redone."""
    runs = tmp_path / "runs"
    ce, bs, la = ROWS_BY_ID["s1_1_ce"], ROWS_BY_ID["s2_2_bs"], ROWS_BY_ID["s2_2_la"]
    d_ce, d_bs, d_la = (run_dir(runs, "smoke", r, 0) for r in (ce, bs, la))
    _complete(d_ce, ce, 0, "old-complete")
    before = (d_ce / "metrics.json").read_bytes()
    d_bs.mkdir(parents=True)                                   # interrupted half-way: a log and a checkpoint, no metrics
    (d_bs / "log.csv").write_text("epoch\n0\n"); (d_bs / "checkpoints").mkdir(); (d_bs / "checkpoints" / "stage1_best.pt").write_text("x")
    _complete(d_la, la, 0, "stale")
    atomic_write_json(d_la / "row.json", dict(overrides=["loss.name=LogitAdjustmentLoss", "loss.logit_tau=2.0"]))

    ran = []
    def fake_execute(task, profile):
        ran.append(task.name)
        prepare_row_run_dir(task, profile)
        assert sorted(p.name for p in task.out_dir.iterdir()) == [".ltsei-run.json", "row.json"]   # stale partial outputs are gone
        demo_run_experiment(demo_compose_config(row_run_overrides(task, profile)), task.out_dir)
    use_executor(monkeypatch, fake_execute)
    assert reproduce_main(["--profile", "smoke", "--rows", "s1_1_ce,2.2", "--runs-dir", str(runs), "--no-report", "--demo"]) == 0
    assert sorted(ran) == ["s2_2_bs/seed0", "s2_2_la/seed0"]
    assert (d_ce / "metrics.json").read_bytes() == before
    assert not (d_bs / "log.csv").exists() or "val_balanced_acc" in (d_bs / "log.csv").read_text()
    assert not (d_bs / "checkpoints").exists()
    assert run_status(d_bs, bs) == run_status(d_la, la) == "complete"
    assert read_metrics(d_la).get("marker") is None
    # the tables count the complete run that was skipped too
    assert (runs / "smoke" / "tables" / "main.md").read_text().count("| Baseline | CE |") == 1

    ran.clear()                                                # all complete now: nothing runs
    assert reproduce_main(["--profile", "smoke", "--rows", "s1_1_ce,2.2", "--runs-dir", str(runs), "--no-report", "--demo"]) == 0
    assert ran == []


def test_failed_row_is_reported_others_go_on(tmp_path, monkeypatch, capsys):
    def fake_execute(task, profile):
        prepare_row_run_dir(task, profile)
        if task.row.id == "s2_1_cb": raise RowRunFailed("ValueError: boom (traceback in somewhere)")
        demo_run_experiment(demo_compose_config(row_run_overrides(task, profile)), task.out_dir)
    use_executor(monkeypatch, fake_execute)
    rc = reproduce_main(["--profile", "smoke", "--rows", "2.1", "--runs-dir", str(tmp_path), "--no-report", "--demo", "--jobs", "2"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "1 failure(s)" in err and "s2_1_cb/seed0: ValueError: boom" in err
    done = [r.id for r in select_rows("2.1") if run_status(run_dir(tmp_path, "smoke", r, 0), r) == "complete"]
    assert done == ["s2_1_focal", "s2_1_ldam", "s2_1_ldam_drw"]


def test_bad_config_fails_its_row_only(tmp_path, monkeypatch, capsys):
    def composer(overrides):
        if "loss.name=FocalLoss" in overrides: raise ValueError("loss.focal_gamma: expected a number")
        return demo_compose_config(overrides)
    monkeypatch.setattr(rp, "load_callable", lambda spec: composer)
    assert reproduce_main(["--rows", "2.1", "--runs-dir", str(tmp_path), "--dry-run", "--demo"]) == 1
    assert "config: ValueError: loss.focal_gamma: expected a number" in capsys.readouterr().out


# ---------------------------------------------------------------- scheduling
def test_stage1_leader_runs_before_its_followers():
    log, t0 = [], time.time()
    def execute(t):
        log.append((t.row.id, "start", time.time() - t0)); time.sleep(0.2); log.append((t.row.id, "end", time.time() - t0))
    mk = lambda i, g: RowRun(Row(i, "9.9", i, "python main.py"), 0, Path("/nonexistent") / i, "missing", g)
    tasks = run_local_pool([mk("a1", "A"), mk("a2", "A"), mk("a3", "A"), mk("b1", "B"), mk("c1", None)], execute, jobs=3, progress=False)
    assert all(t.status == "done" for t in tasks)
    start = {i: s for i, e, s in log if e == "start"}
    end = {i: s for i, e, s in log if e == "end"}
    assert start["a2"] >= end["a1"] and start["a3"] >= end["a1"]      # followers wait for the stage-1 leader
    assert start["b1"] < end["a1"] and start["c1"] < end["a1"]         # other groups do not
    assert abs(start["a2"] - start["a3"]) < 0.15                      # followers then run side by side


def test_plan_is_seed_major_and_complete_runs_are_skipped(tmp_path):
    rows = select_rows("4.4")
    _complete(run_dir(tmp_path, "quick", rows[1], 1), rows[1], 1, "x")
    tasks = plan_row_runs(rows, [0, 1], "quick", tmp_path)
    assert [t.name for t in tasks] == [f"{r.id}/seed{k}" for k in (0, 1) for r in rows]
    assert [t.status for t in tasks] == ["missing"] * 4 + ["complete", "missing"]
    ran = []
    run_local_pool(tasks, lambda t: ran.append(t.name), jobs=1, progress=False)
    assert len(ran) == 5 and "s4_4_e3/seed1" not in ran
    assert tasks[4].status == "skipped"


def test_bad_arguments():
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        reproduce_main(["--seeds", "0", "--dry-run"])
    with pytest.raises(ValueError, match="--jobs must be at least 1"):
        reproduce_main(["--jobs", "0", "--dry-run"])
    with pytest.raises(SystemExit):
        reproduce_main(["--profile", "huge", "--dry-run"])


# ---------------------------------------------------------------- the experiment notebook
def test_experiment_notebook_parameters():
    import papermill as pm
    nb = rp.load_notebook("experiment.ipynb")
    params = set(pm.inspect_notebook(nb))
    assert params == {"row_id", "overrides", "seed", "profile", "runs_dir", "out_dir", "composer", "runner"}
    assert nb.cells[0].cell_type == "raw" and "skip_exec: true" in nb.cells[0].source


def test_ctrl_c_stops_running_runs_at_once():
    """On Ctrl-C, run_local_pool calls `interrupt` (ltsei reproduce: kill the running kernels), marks the running runs
    'interrupted', starts nothing more and re-raises."""
    import os, signal, threading
    stop, started = threading.Event(), []
    def execute(t):
        started.append(t.row.id)
        if not stop.wait(20): raise AssertionError("not interrupted")
        raise RuntimeError("kernel died")
    def ctrl_c():
        time.sleep(0.5); os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=ctrl_c, daemon=True).start()
    mk = lambda i: RowRun(Row(i, "9.9", i, "python main.py"), 0, Path("/nonexistent") / i, "missing")
    tasks, t0 = [mk("a"), mk("b"), mk("c")], time.time()
    with pytest.raises(KeyboardInterrupt):
        run_local_pool(tasks, execute, jobs=2, progress=False, interrupt=stop.set)
    assert time.time() - t0 < 5
    assert started == ["a", "b"] and [t.status for t in tasks] == ["interrupted", "interrupted", "missing"]


def test_real_run_through_the_experiment_notebook(in_scratch, capfd):
    """`ltsei reproduce` end to end on the real code: one guide row (two-stage, MoE-LTSEI) at the smoke profile through
    papermill and the real compose_config / run_experiment, the tables and the report (rendered by a kernel of its own);
    no kernel complains on the console (the kernels are shut down without a SIGINT)."""
    import nbformat
    runs = in_scratch / "runs_reproduce"
    assert reproduce_main(["--profile", "smoke", "--rows", "s5_2_short", "--runs-dir", str(runs), "--jobs", "1"]) == 0
    err = capfd.readouterr().err
    assert "KeyboardInterrupt" not in err and "ERROR" not in err, err[-2000:]
    row = ROWS_BY_ID["s5_2_short"]
    d = run_dir(runs, "smoke", row, 0)
    m = read_metrics(d)
    assert run_status(d, row) == "complete" and m is not None and "demo" not in m and m.get("routing")
    assert (d / "config.yaml").exists() and json.loads((d / "row.json").read_text())["overrides"] == row.run_args
    nb = nbformat.read(d / "experiment.ipynb", as_version=4)
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outs) == 3    # recall vs count, confusion, gate usage
    assert (runs / "smoke" / "tables" / "main.md").exists() and (runs / "smoke" / "report.html").exists()


# ---------------------------------------------------------------- integrity: one writer per run, atomic tables, Ctrl-C
ROOT = Path(__file__).resolve().parents[1]

DRIVER = r'''
import os, sys, threading, time
import ltsei.orchestration.local_launcher as ll
import ltsei.orchestration.reproduce as rp
from ltsei.orchestration.row_runs import RowRunFailed, prepare_row_run_dir, row_run_overrides
from ltsei.experiments.demo import demo_compose_config, demo_run_experiment
log, delay, mode, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
stop = threading.Event()
def row_executor(profile, funcs, runs_dir, jobs, runs=0):
    def execute(task, env=None):
        "A demo run without papermill: prepare the folder (under the run's lock), log who runs it, wait, write metrics."
        prepare_row_run_dir(task, profile)
        with open(log, "a") as f: f.write(f"{os.getpid()} run {task.name}\n")
        if stop.wait(delay): raise RowRunFailed("killed")
        demo_run_experiment(demo_compose_config(row_run_overrides(task, profile)), task.out_dir)
    return execute
rp.row_executor, ll.kill_kernels = row_executor, stop.set
if mode == "slow-tables":
    import ltsei.experiments.report
    def slow_build(runs_dir, profile):
        with open(log, "a") as f: f.write(f"{os.getpid()} tables\n")
        time.sleep(60)
    ltsei.experiments.report.build_tables = slow_build
from ltsei.cli import main
sys.exit(main(["reproduce", *argv]))
'''


def _driver(tmp_path, log, delay, mode, *argv):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(script), str(log), str(delay), mode, *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_share_the_rows(tmp_path):
    """Two `ltsei reproduce` on one results directory: every row runs exactly once, neither fails, both end with the
    same complete runs and tables."""
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    args = ["--profile", "smoke", "--rows", "2.1,2.2", "--runs-dir", str(runs), "--demo", "--no-report", "--jobs", "1"]
    procs = [_driver(tmp_path, log, 1.0, "-", *args) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out + err
        assert "FAILED" not in out + err
    ran = [line.split()[2] for line in log.read_text().splitlines()]
    rows = select_rows("2.1,2.2")
    assert sorted(ran) == sorted(f"{r.id}/seed0" for r in rows)          # each row once
    assert all(run_status(run_dir(runs, "smoke", r, 0), r) == "complete" for r in rows)
    assert (runs / "smoke" / "tables" / "main.md").read_text().count("| Single-stage |") == 6
    assert not [p for p in (runs / "smoke").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_a_killed_lock_holder_releases_the_run(tmp_path):
    "A run's lock is held by one process; a holder killed with SIGKILL holds nothing."
    from ltsei.core.storage import lock_beside
    d = tmp_path / "seed0"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ltsei.core.storage import lock_beside\n"
                               f"held = lock_beside({str(d)!r}); held.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    mine = lock_beside(d)
    assert not mine.acquire(blocking=False)
    holder.kill(); holder.wait()
    assert mine.acquire(blocking=False)
    mine.release()


def test_tables_swap_in_whole_and_dead_builds_are_removed(tmp_path, monkeypatch):
    import ltsei.experiments.report as tb
    from ltsei.experiments.demo import write_fake_runs
    runs = tmp_path / "runs"
    write_fake_runs(runs, "smoke", rows=select_rows("2.2"))
    tb.build_tables(runs, "smoke")
    before = {p.name: p.read_bytes() for p in (runs / "smoke" / "tables").iterdir()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    left = runs / "smoke" / f".tables.tmp{dead.pid}-0bad"                # a build killed half-way (ltsei's marker in it)
    left.mkdir(); (left / "main.md").write_text("half")
    from ltsei.core.storage import TEMP_MARK, host_name
    (left / TEMP_MARK).write_text(json.dumps({"ltsei": "tmp", "host": host_name(), "pid": dead.pid}))
    write_fake_runs(runs, "smoke", rows=select_rows("2.1"))
    def interrupted(r, pc): raise KeyboardInterrupt
    monkeypatch.setitem(tb.FIGURES, "zzz", interrupted)                   # Ctrl-C in the middle of the build
    with pytest.raises(KeyboardInterrupt):
        tb.build_tables(runs, "smoke")
    assert {p.name: p.read_bytes() for p in (runs / "smoke" / "tables").iterdir()} == before
    assert sorted(p.name for p in (runs / "smoke").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")) == []
    monkeypatch.delitem(tb.FIGURES, "zzz")
    tb.build_tables(runs, "smoke")
    assert (runs / "smoke" / "tables" / "main.md").read_text().count("| Single-stage |") == 6


def test_read_only_runs_dir_is_one_message_before_any_row(tmp_path, monkeypatch, capsys):
    import errno
    from ltsei.cli import main
    ran = []
    use_executor(monkeypatch, lambda *a: ran.append(a))
    def read_only(*a, **k): raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(rp.tempfile, "mkstemp", read_only)                # we run as root: inject what EROFS does
    rc = main(["reproduce", "--profile", "smoke", "--rows", "2.2", "--runs-dir", str(tmp_path / "runs"), "--demo"])
    assert rc == 2 and ran == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write results to" in err[0] and "Read-only file system" in err[0], err


def test_uncreatable_runs_dir_fails_once(tmp_path, monkeypatch, capsys):
    from ltsei.cli import main
    ran = []
    use_executor(monkeypatch, lambda *a: ran.append(a))
    (tmp_path / "file").write_text("")
    rc = main(["reproduce", "--profile", "smoke", "--rows", "2", "--runs-dir", str(tmp_path / "file" / "runs"), "--demo"])
    assert rc == 2 and ran == []
    out, err = capsys.readouterr()
    assert err.count("cannot write results to") == 1 and "Not a directory" in err and "[reproduce]" not in out


def test_runs_dir_moves_the_caches(tmp_path, capsys):
    runs = tmp_path / "elsewhere"
    assert reproduce_main(["--rows", "s3_1_crt", "--runs-dir", str(runs), "--dry-run", "--demo"]) == 0
    out = capsys.readouterr().out
    assert f"data.cache_dir={runs.resolve() / 'cache'} stage1.cache_dir={runs.resolve() / 'cache' / 'stage1'}" in out


@pytest.mark.parametrize("mode", ["runs", "slow-tables"])
def test_ctrl_c_exits_130_with_one_line(tmp_path, mode):
    """SIGINT while rows run, or while the tables are built: exit status 130, one line, no traceback; the tables of
    an earlier build are kept."""
    import signal
    runs, log = tmp_path / "runs", tmp_path / "log.txt"
    (runs / "smoke" / "tables").mkdir(parents=True); (runs / "smoke" / "tables" / "main.md").write_text("earlier")
    rows = "s1_1_ce" if mode == "runs" else "s2_2_bs"
    if mode == "slow-tables": _complete(run_dir(runs, "smoke", ROWS_BY_ID[rows], 0), ROWS_BY_ID[rows], 0, "x")
    p = _driver(tmp_path, log, 60, mode, "--profile", "smoke", "--rows", rows, "--runs-dir", str(runs), "--demo",
                "--no-report", "--jobs", "1")
    t0 = time.time()
    while not (log.exists() and log.read_text()) and time.time() - t0 < 120 and p.poll() is None: time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, out + err
    assert "Traceback" not in err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.strip() and not l.startswith("runs:")]
    assert len(lines) == 1 and "interrupted" in lines[0], lines
    assert (runs / "smoke" / "tables" / "main.md").read_text() == "earlier"
