"""Reliability, third pass: each case of docs/reliability.md's third table, on the real code (no stand-in).

Full disks on a real ext4 loop mount where the machine allows it (root, mkfs.ext4, loop devices), else skipped
with the reason. Every run is tiny (`profile=smoke`, `conftest.SMALL`)."""
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT, SMALL, ext4
from ltsei.core.cache import (ACTIVE_MARK, CacheEntry, RUN_MARK, active_run, claim_run_dir, live_runs)
from ltsei.core.clean import clean_main, leftovers
from ltsei.cli import guide_main, main as ltsei_main
from ltsei.core.storage import FileLock, atomic_write_json, host_name

MODES1 = ROOT / "tests" / "data" / "dump1090-modes1" / "modes1.bin"    # one aircraft


def one_line(capsys) -> str:
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]




# ---- 1: ltsei frames on a full disk --------------------------------------------------------------------------

def test_frames_on_a_full_disk_is_one_line_and_keeps_the_old_output(tmp_path, capsys):
    with ext4(tmp_path / "mnt", 4) as mnt:
        out = mnt / "out"
        assert ltsei_main(["frames", str(MODES1), "--sample-rate", "2e6", "--out", str(out)]) == 0
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        free = shutil.disk_usage(mnt).free
        with open(mnt / "filler", "wb") as f: f.truncate(0); os.posix_fallocate(f.fileno(), 0, free - (64 << 10))
        capsys.readouterr()
        assert ltsei_main(["frames", str(MODES1), "--sample-rate", "2e6", "--out", str(out)]) == 2   # no bus error
        msg = one_line(capsys)
        assert str(out) in msg and "(ENOSPC)" in msg, msg
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before                  # the old output intact
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "lost+found", "out"]   # no temporary folder left
        (mnt / "filler").unlink()
        assert ltsei_main(["frames", str(MODES1), "--sample-rate", "2e6", "--out", str(out)]) == 0   # a rerun recovers


# ---- 2: no NaN data set; every preset value checked by its key and file ------------------------------------------

@pytest.mark.parametrize("flag, words", [("--snr-db-min=-1000", "synth.snr_db_min=-1000.0: expected a ratio in dB"),
                                         ("--snr-db-max=inf", "synth.snr_db_max=inf: expected a finite number")])
def test_synth_refuses_values_that_give_no_finite_data(tmp_path, capsys, flag, words):
    assert ltsei_main(["synth", "--preset", "smoke", flag, "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert words in one_line(capsys) and not (tmp_path / "d").exists()


@pytest.mark.parametrize("line, words", [("snr_db_min: -1000", "snr_db_min=-1000.0: expected a ratio in dB"),
                                         ("num_emitters: .inf", "num_emitters=inf: expected a finite int"),
                                         ("num_emitters: .nan", "num_emitters=nan: expected a finite int"),
                                         ("snr_db_max: 1e400", "snr_db_max=inf: expected a finite float")])
def test_a_preset_value_is_named_with_its_file_and_key(tmp_path, capsys, line, words):
    p = tmp_path / "mine.yaml"; p.write_text(line + "\n")
    assert ltsei_main(["synth", "--preset", str(p), "--out", str(tmp_path / "d"), "--quiet"]) == 2
    msg = one_line(capsys)
    assert f"synth preset {p}" in msg and words in msg, msg
    assert guide_main(["profile=smoke", f"data.synth.preset={p}"]) == 2 and words in one_line(capsys)


def test_a_generated_data_set_is_checked_finite_before_it_is_published(tmp_path):
    from dataclasses import replace
    from ltsei.signals.synth import SYNTH_PRESETS, check_finite, generate_synth
    cfg = replace(SYNTH_PRESETS["smoke"], num_emitters=2, pool_per_class=3, val_per_class=1, test_per_class=1)
    generate_synth(cfg, tmp_path, workers=1, progress=False)
    check_finite(tmp_path, cfg)
    X = np.load(tmp_path / "X_val.npy", mmap_mode="r+"); X[1, 0, 5] = np.nan; X.flush(); del X
    with pytest.raises(ValueError, match="1 of 2 val frames with samples that are not finite"):
        check_finite(tmp_path, cfg)


# ---- 3: the fit never replaces a user's file ----------------------------------------------------------------

def test_realism_fit_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    mine = tmp_path / "mine.yaml"; mine.write_text("# my own preset\nsnr_db_min: 10\n")
    assert ltsei_main(["realism", "--fit", str(tmp_path / "none.npy"), "--out", str(mine)]) == 2
    assert "was not written by ltsei realism --fit" in one_line(capsys)
    assert mine.read_text() == "# my own preset\nsnr_db_min: 10\n"


# ---- 4: ltsei clean --------------------------------------------------------------------------------------------

def _work(root: Path, key: str, resume: bool) -> Path:
    e = CacheEntry(root, key); w = e.make_work()
    if resume: (w / "resume.pt").write_bytes(b"r" * 1000)
    return w


def test_clean_follows_LTSEI_RUNS_and_keeps_resumable_work(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "results"
    s1 = runs / "cache" / "stage1"
    res, empty = _work(s1, "a" * 16, True), _work(s1, "b" * 16, False)
    monkeypatch.setenv("LTSEI_RUNS", str(runs)); monkeypatch.chdir(tmp_path)            # no runs/ here: the root is LTSEI_RUNS
    assert clean_main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kept:" in out and out.index("work folder") < out.index("kept:") < out.index("resumable")
    assert clean_main([]) == 0 and res.is_dir() and not empty.exists()                  # resumable kept, the empty one gone
    assert clean_main(["--include-resumable"]) == 0 and not res.exists()


def test_clean_never_removes_an_entry_a_live_or_recent_run_may_use(tmp_path, capsys):
    runs = tmp_path / "runs"
    e = CacheEntry(runs / "cache" / "stage1", "c" * 16)
    with e.lock(), e.building() as tmp:
        (tmp / "best.pt").write_bytes(b"x"); e.publish(tmp)
    [it] = leftovers(runs)
    assert it["kind"] == "unreferenced" and "in the last hour" in it["keep"]             # just built: a reproduce may reuse it
    old = time.time() - 7200
    for p in (e.path / "manifest.json", e.root / f"{e.key}.lock"): os.utime(p, (old, old))
    run = claim_run_dir(runs / "smoke" / "adhoc" / "t0")
    with active_run(run):
        assert live_runs(runs) == [run] and "a run is in progress" in leftovers(runs)[0]["keep"]
        assert clean_main(["--runs-dir", str(runs)]) == 0 and e.path.is_dir()
    (run / "metrics.json").write_text("{}")                                            # that run completed
    assert leftovers(runs)[0]["keep"] is None
    assert clean_main(["--runs-dir", str(runs)]) == 0 and not e.path.exists()


def test_clean_lists_and_removes_interrupted_adhoc_runs_only(tmp_path, capsys):
    runs = tmp_path / "runs"
    dead = claim_run_dir(runs / "smoke" / "adhoc" / "killed")
    atomic_write_json(dead / ACTIVE_MARK, {"ltsei": "active", "host": host_name(), "pid": 2 ** 22 + 7})
    live = claim_run_dir(runs / "smoke" / "adhoc" / "live")
    done = claim_run_dir(runs / "smoke" / "adhoc" / "done"); (done / "metrics.json").write_text("{}")
    with active_run(live):
        assert [(it["kind"], it["path"]) for it in leftovers(runs)] == [("interrupted run", dead)]
        assert clean_main(["--runs-dir", str(runs)]) == 0
    assert not dead.exists() and live.is_dir() and done.is_dir()


# ---- 5: no write outside ltsei's folders ---------------------------------------------------------------------

@pytest.mark.parametrize("override, words", [("data.cache_dir=/", "is a system folder"), ("data.cache_dir=/etc", "is a system folder"),
                                             ("stage1.cache_dir=/usr/lib", "is a system folder"),
                                             ("hydra.job.name=../../x", "hydra.job.name='../../x': expected a plain name"),
                                             ("hydra.sweep.subdir=../x", "expected a plain name")])
def test_no_cache_or_log_outside_ltseis_folders(tmp_path, monkeypatch, capsys, override, words):
    monkeypatch.setenv("LTSEI_RUNS", str(tmp_path / "runs"))
    etc = sorted(os.listdir("/etc"))
    assert guide_main(["profile=smoke", override]) == 2
    assert words in one_line(capsys) and not (tmp_path / "runs").exists() and sorted(os.listdir("/etc")) == etc


def test_a_file_or_a_users_folder_as_the_cache_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LTSEI_RUNS", str(tmp_path / "runs"))
    (tmp_path / "afile").write_text("x"); (tmp_path / "thesis").mkdir(); (tmp_path / "thesis" / "ch1.tex").write_text("x")
    assert guide_main(["profile=smoke", f"data.cache_dir={tmp_path / 'afile'}"]) == 2
    assert "exists and is not a folder" in one_line(capsys)
    assert guide_main(["profile=smoke", f"data.cache_dir={tmp_path / 'thesis'}"]) == 2
    assert "holds files ltsei did not write (ch1.tex)" in one_line(capsys)
    assert not (tmp_path / "runs").exists() and os.listdir(tmp_path / "thesis") == ["ch1.tex"]


# ---- 6: the fit on bad frames ------------------------------------------------------------------------------------

NOISE = np.random.default_rng(0).normal(size=(30, 64, 2)).astype(np.float32)

@pytest.mark.parametrize("frames, words", [(np.full((30, 64, 2), np.nan, np.float32), "frames hold samples that are not finite"),
                                           (NOISE.copy(), None),
                                           (NOISE[:1].copy(), "1 frame: a fit needs at least 20")])
def test_the_fit_refuses_frames_it_cannot_fit(tmp_path, capsys, frames, words):
    if words is None:       # one NaN sample among finite frames
        frames[3, 10, 0] = np.nan; words = "1 of 30 frames hold samples that are not finite"
    np.save(tmp_path / "X.npy", frames)
    assert ltsei_main(["realism", "--fit", str(tmp_path / "X.npy"), "--files-sample-rate", "2e6",
                       "--out", str(tmp_path / "p.yaml")]) == 2
    assert words in one_line(capsys) and not (tmp_path / "p.yaml").exists()


# ---- 7: messages ---------------------------------------------------------------------------------------------------

def test_a_stray_label_is_named_with_its_frame(tmp_path, capsys):
    x = np.zeros((40, 64, 2), np.float32); x[:, :, 0] = np.arange(40)[:, None]
    y = np.arange(40) % 10; y[17] = 1000
    for n in ("train", "test"): np.save(tmp_path / f"X_{n}.npy", x); np.save(tmp_path / f"Y_{n}.npy", y if n == "train" else y % 10)
    from ltsei.signals.data import DataConfig, load_data
    with pytest.raises(ValueError) as e:
        load_data(DataConfig(source="files", train_path=str(tmp_path / "X_train.npy"), test_path=str(tmp_path / "X_test.npy"),
                             leakage="allow", cache_dir=str(tmp_path / "c")), 0)
    msg = str(e.value)
    assert "the largest label, 1000 (frame 17), makes 1001 classes" in msg and len(msg) < 400, msg


@pytest.mark.parametrize("path, words", [("DIR", "is a folder: expected a recording file"),
                                         ("/dev/zero", "is a device or other special file")])
def test_frames_names_what_is_not_a_recording(tmp_path, capsys, path, words):
    p = str(tmp_path) if path == "DIR" else path
    assert ltsei_main(["frames", p, "--sample-rate", "2e6", "--out", str(tmp_path / "o")]) == 2
    assert words in one_line(capsys)


# ---- issue 32: a one-aircraft recording, refused commands, resumable runs -------------------------------------

def test_one_aircraft_says_what_it_is_for(tmp_path, capsys):
    assert ltsei_main(["frames", str(MODES1), "--sample-rate", "2e6", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "ONE aircraft" in out and "ltsei realism --fit" in out and "not to train or test a classifier" in out
    from ltsei.signals.realism import cfo_1nn_accuracy
    assert np.isnan(cfo_1nn_accuracy(np.random.default_rng(0).normal(size=50), np.zeros(50)))   # no 1-NN claim on one class


def test_a_refused_command_leaves_no_folder(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"; monkeypatch.setenv("LTSEI_RUNS", str(runs))
    assert guide_main(["profile=smoke", "data.source=files", "data.train_path=/nonexistent/X.npy",
                       "data.test_path=/nonexistent/Y.npy"]) == 2
    assert "data.train_path='/nonexistent/X.npy': no such file or folder" in one_line(capsys) and not runs.exists()
    x = np.random.default_rng(0).normal(size=(30, 128, 2)).astype(np.float32)          # one class: known only once read
    for n in ("train", "test"): np.save(tmp_path / f"X_{n}.npy", x); np.save(tmp_path / f"Y_{n}.npy", np.zeros(30, np.int64))
    runs.mkdir()
    assert guide_main(["profile=smoke", "data.source=files", f"data.train_path={tmp_path / 'X_train.npy'}",
                       f"data.test_path={tmp_path / 'X_test.npy'}", "data.leakage=allow"]) == 2
    capsys.readouterr()
    assert [p.relative_to(runs).as_posix() for p in runs.rglob("*") if "cache" not in p.parts] == []


def test_a_run_leaves_no_stale_lock_and_clean_has_nothing_to_remove(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"; monkeypatch.setenv("LTSEI_RUNS", str(runs))
    assert guide_main(["profile=smoke", *SMALL, "training.epochs=150", "stage2.epochs=1", "stage2.warmup_epochs=0", "seed=33"]) == 0   # one epoch each
    assert [it for it in leftovers(runs) if it["keep"] is None] == []
    assert not [it for it in leftovers(runs) if it["kind"] == "stale lock"]
    assert list(runs.rglob(ACTIVE_MARK)) == []                                       # the run's marker is gone with it


def test_ctrl_c_says_that_the_same_command_resumes(tmp_path, monkeypatch, capsys):
    import ltsei.experiments.run as R
    monkeypatch.setenv("LTSEI_RUNS", str(tmp_path / "runs"))
    def stop(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(R, "get_stage1", stop)
    assert guide_main(["profile=smoke", *SMALL, "seed=34", f"hydra.run.dir={tmp_path / 'r'}"]) == 130
    err = capsys.readouterr().err
    assert "to resume: run the same command again" in err and err.rstrip().endswith("interrupted (Ctrl-C)")
    assert list((tmp_path / "r").glob(ACTIVE_MARK)) == []


# ---- issue 31: papermill by hand, the real path ----------------------------------------------------------------

def papermill(tmp_path, cwd, *params) -> subprocess.CompletedProcess:
    "papermill on the repository's real notebook from the folder `cwd`, under the session's results root (its caches shared)."
    args = [sys.executable, "-m", "papermill", str(ROOT / "nbs" / "experiment.ipynb"), str(tmp_path / "out.ipynb"),
            "--log-level", "ERROR"]
    for k, v in zip(params[::2], params[1::2]): args += ["-p", k, v]
    return subprocess.run(args, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def test_papermill_by_hand_on_the_real_notebook_writes_a_complete_run_twice(tmp_path):
    """`papermill nbs/experiment.ipynb OUT -p row_id ...` by hand, the real composer and runner: from nbs/ and then from
    another folder, into the same run folder under the results root (here $LTSEI_RUNS, the session's; without it the
    notebook's `resolve_runs_dir(None)` is the repository's runs/, test_user_messages.py::test_one_results_root), with
    its row.json, out of the tables; a refused profile before any folder."""
    import nbformat
    from ltsei.rows import ROWS_BY_ID
    from ltsei.core.storage import resolve_runs_dir
    from ltsei.experiments.tables import collect_results
    runs = resolve_runs_dir(None)                           # conftest: the session's scratch runs/
    row = ROWS_BY_ID["s1_1_ce"]
    ov = " ".join([*row.run_args, *SMALL, "training.epochs=150"])   # one smoke epoch
    seed = runs / "smoke" / "by-hand" / "1.1" / "s1_1_ce" / "seed7"
    shutil.rmtree(seed, ignore_errors=True)
    stamps = []
    for cwd in (ROOT / "nbs", tmp_path / "elsewhere"):    # a second call, from elsewhere, into the same folder works too
        cwd.mkdir(exist_ok=True)
        r = papermill(tmp_path, cwd, "row_id", "s1_1_ce", "profile", "smoke", "seed", "7", "overrides", ov)
        assert r.returncode == 0, r.stderr[-2000:]
        m = json.loads((seed / "metrics.json").read_text())
        assert m["test"]["acc"] is not None and json.loads((seed / "row.json").read_text())["by_hand"] is True
        assert (seed / RUN_MARK).is_file() and not (seed / ACTIVE_MARK).exists()
        cfg = yaml.safe_load((seed / "config.yaml").read_text())                   # the caches under the same root
        assert (cfg["data"]["cache_dir"], cfg["stage1"]["cache_dir"]) == (str(runs / "cache"), str(runs / "cache" / "stage1"))
        nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert sum("image/png" in o.get("data", {}) for o in outs) == 2          # recall vs count, confusion; no gate
        assert any("No MoE-LTSEI head in this row" in o.get("text", "") for o in outs)
        assert nb.cells[-1].outputs[-1]["text"].startswith(f"[ltsei] files: {seed}")   # it ends naming its folder
        stamps.append((seed / "metrics.json").stat().st_mtime_ns)
    assert stamps[1] > stamps[0]
    assert str(seed) not in set(collect_results(runs, "smoke", [row])[0].path)    # a run by hand: out of the tables
    assert not (ROOT / "nbs" / "runs" / seed.relative_to(runs)).exists() and not (tmp_path / "elsewhere" / "runs").exists()
    # a refused profile, before any folder: the notebook's parameters and its first code cell, run here (the same source
    # a kernel runs; a third papermill would add only its start-up, about 7 CPU s)
    before = sorted(os.listdir(runs.parent))
    cells = [c for c in nbformat.read(ROOT / "nbs" / "experiment.ipynb", as_version=4).cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    ns = {}
    exec(cells[first].source, ns)
    ns.update(row_id="s1_1_ce", profile="../../x")                                  # as papermill's -p injects them
    with pytest.raises(ValueError, match=r"profile '\.\./\.\./x': expected a profile name"):
        exec(cells[first + 1].source, ns)
    assert sorted(os.listdir(runs.parent)) == before and not (runs / "x").exists() and not (runs.parent / "x").exists()


def test_realism_measures_frames_alignment_in_the_references_convention(tmp_path, capsys):
    from ltsei.signals.frames import synth_recording, write_iq
    sig, _ = synth_recording(8e6, 0.05, num_emitters=3, frames=30, snr_db=(20, 30), overlaps=0, seed=5)
    write_iq(tmp_path / "r.cs16", sig * 0.01, "cs16")
    assert ltsei_main(["frames", str(tmp_path / "r.cs16"), "--format", "cs16", "--sample-rate", "8e6", "--out", str(tmp_path / "f")]) == 0
    capsys.readouterr()
    assert ltsei_main(["realism", str(tmp_path / "f" / "X.npy"), "--emitters", "10", "--frames-per-emitter", "3"]) == 0
    [line] = [l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("alignment:")]
    files_median = float(line.split()[-5])            # the files' median (ns): near the reference's -124 ns, not 3.9 us
    assert -500 < files_median < 500, line


def test_a_huge_synth_says_how_long_first_and_a_kill_leaves_nothing(tmp_path):
    """Issue 33, case 7: 100,000 emitters x 1 frame gave no estimate first (the per-emitter work was not counted), and a
    kill left 446 MiB and no word. The estimate of that request is checked here; the command is run with 20,000
    emitters x 1 frame (an estimate too, and five times less set-up before the first file than 100,000)."""
    import signal
    from dataclasses import replace
    from ltsei.experiments.estimate import synth_estimate_line
    from ltsei.signals.synth import SYNTH_PRESETS
    huge = replace(SYNTH_PRESETS["quick"], num_emitters=100_000, pool_per_class=1, val_per_class=1, test_per_class=1)
    assert "300,000 frames of 768 samples for 100,000 emitters" in (synth_estimate_line(huge) or "")
    out = tmp_path / "big"
    code = "import sys; from ltsei.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen([sys.executable, "-c", code, "synth", "--preset", "quick", "--num-emitters", "20000",
                          "--pool-per-class", "1", "--val-per-class", "1", "--test-per-class", "1", "--workers", "1",
                          "--quiet", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = p.stdout.readline()                 # the estimate comes before any work
        assert line.startswith("[ltsei] estimate:") and "20,000 emitters" in line, line
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".big.tmp*/.generate/*")): time.sleep(0.2)
        assert list(tmp_path.glob(".big.tmp*/.generate/*")), "the generation never started"
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 130 and "stopped by SIGTERM" in err, err
    assert not out.exists() and not list(tmp_path.glob(".big*"))   # its temporary folder went with it
