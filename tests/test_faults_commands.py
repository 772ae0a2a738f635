"""Faults met by the commands around the runs (main.py, `ltsei reproduce`, `ltsei synth`, `ltsei clean`, the Slurm
launcher), one test per case (the cases of issue 19, in its order):

never delete or overwrite what ltsei did not write; a real full disk (ext4 loop image where root may mount it);
checks before any folder exists; frames whose scale makes normalisation meaningless; seeds remembered;
`ltsei clean`; `--launcher slurm` without SLURM; Ctrl-C starting one more row, SLURM UNKNOWN, the job ledger's lock,
a failed publish of a finished stage 1, stale-temp cleaning on another host's marker.
Only `test_failed_publish_keeps_the_finished_stage1` trains (one smoke stage 1 of one epoch); the rest run in seconds."""
import contextlib, errno, json, os, shutil, signal, subprocess, threading, time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsei.core.cache import CacheEntry
from ltsei.core.clean import leftovers
from ltsei.core.storage import (TEMP_MARK, FileLock, StorageError, clean_stale, host_name,
                         storage_error)
from ltsei.cli import guide_main, main
from ltsei.experiments.config import compose_config
from ltsei.rows import ROWS_BY_ID
from ltsei.experiments.layout import run_dir
from conftest import SMALL, ext4

DEAD = 2**22 + 4321                          # above the default pid_max: no such process


def errors(capsys) -> list:
    "The error lines the command line printed (progress bars aside)."
    return [l for l in capsys.readouterr().err.replace("\r", "\n").splitlines() if l.startswith("error")]


def marked(folder: Path, pid: int = DEAD, host=None, kind="tmp") -> Path:
    "A temporary folder as ltsei makes them: its marker names the host and the process."
    folder.mkdir(parents=True)
    (folder / "half.bin").write_bytes(b"half")
    (folder / TEMP_MARK).write_text(json.dumps({"ltsei": kind, "host": host or host_name(), "pid": pid}))
    return folder


def listing(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ---- 1: never delete or overwrite what ltsei did not write ---------------------------------------------

def test_user_files_are_never_deleted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for d in ("D/thesis.old2019", "D/tensorboard", "C2/photos.old1999"):
        (tmp_path / d).mkdir(parents=True); (tmp_path / d / "f.txt").write_text("mine")
    (tmp_path / "C2" / "digests.json").write_text("{}")          # C2 is a cache folder of ltsei's (a user's folder is refused)
    before = listing(tmp_path)
    rc = guide_main(["profile=smoke", "hydra.run.dir=D", "stage1.cache_dir=C2"])   # the command
    err = errors(capsys)
    assert rc == 2 and len(err) == 1 and f"{tmp_path / 'D'} holds files ltsei did not write" in err[0], err
    assert "tensorboard/f.txt" in err[0] and listing(tmp_path) == before            # nothing deleted, nothing written
    with CacheEntry("C2", "k", "demo").lock(): pass                                  # a cache root's clean-up
    assert (tmp_path / "C2" / "photos.old1999" / "f.txt").read_text() == "mine"
    assert CacheEntry("C2", "k").path == tmp_path / "C2" / "k"                       # relative: resolved, shown absolute
    assert guide_main(["profile=smoke", "stage1.cache_dir="]) == 2                   # empty: refused
    assert "stage1.cache_dir='' is empty" in errors(capsys)[0]
    # ltsei reproduce's run folder holding a user's file: refused with one line, never emptied
    from ltsei.orchestration.row_runs import RowRun as Task, prepare_row_run_dir as prepare_run_dir
    row = ROWS_BY_ID["s1_1_ce"]
    out = run_dir(tmp_path / "runs", "smoke", row, 0); out.mkdir(parents=True); (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files ltsei did not write \(notes.txt\)"):
        prepare_run_dir(Task(row, 0, out), "smoke")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # ltsei synth --out: a folder of data files with the same names, not written by ltsei synth, is not replaced
    from ltsei.signals.synth import synth_main
    data = tmp_path / "data"; data.mkdir(); np.save(data / "X_train.npy", np.arange(3))
    with pytest.raises(ValueError, match="ltsei synth did not write"):
        synth_main(["--out", str(data), "--preset", "smoke", "--quiet"])
    assert np.load(data / "X_train.npy").tolist() == [0, 1, 2]


# ---- 2: a real full disk -------------------------------------------------------------------------------



def test_fallocate_failure_gives_the_space_back(tmp_path, monkeypatch, capsys):
    import ltsei.signals.synth as S
    from ltsei.signals.synth import SYNTH_PRESETS, load_synth
    with ext4(tmp_path / "mnt", 12) as mnt:
        cache = mnt / "cache"; cache.mkdir()
        free = shutil.disk_usage(mnt).free
        monkeypatch.setattr(S, "check_free_space", lambda *a, **k: None)      # past the up-front check: the real ENOSPC
        big = replace(SYNTH_PRESETS["smoke"], num_emitters=12)                  # ~13 MB on a 12 MB disk
        with pytest.raises(StorageError) as e:
            load_synth(big, cache, workers=1, progress=False)
        msg = str(e.value)                                                       # the exception (and its traceback) alive
        assert "\n" not in msg and str(cache) in msg and "(ENOSPC)" in msg and e.value.errno == errno.ENOSPC
        assert shutil.disk_usage(mnt).free >= free - (256 << 10)                # the space is back already
        assert sorted(p.name for p in cache.iterdir()) == [f"synth-{S.synth_key(big)}.lock"]   # the cache as it was
        monkeypatch.undo()                                                        # the up-front check: refused at once
        with pytest.raises(StorageError, match=r"MiB needed, .* MiB free\) to"):
            load_synth(big, cache, workers=1, progress=False)
        # a short write inside np.save (numpy: "N requested and M written", no errno) names the file
        with open(mnt / "ballast", "wb") as f: os.posix_fallocate(f.fileno(), 0, shutil.disk_usage(mnt).free - (16 << 10))
        with pytest.raises(StorageError) as e:
            with S._storage(mnt / "Y.npy"): np.save(mnt / "Y.npy", np.zeros(100_000))
        assert e.value.errno == errno.ENOSPC and f"could not write {mnt / 'Y.npy'}: no space left" in str(e.value)
        rc = guide_main(["profile=smoke", f"hydra.run.dir={mnt / 'run'}"])       # a run folder on the full disk: one line
        err = errors(capsys)
        assert rc == 2 and len(err) == 1 and f"could not write {mnt / 'run'}: no space left" in err[0], err
        assert not (mnt / "run").exists()
    short = storage_error("/x/Y_pool.npy", OSError("4200 requested and 2032 written"))
    assert isinstance(short, StorageError) and short.errno == errno.ENOSPC and "/x/Y_pool.npy" in str(short)


def test_request_larger_than_the_disk_is_refused_before_it_starts(tmp_path, capsys):
    t0 = time.time()
    rc = guide_main(["profile=smoke", "data.synth.num_emitters=1000000", f"data.cache_dir={tmp_path / 'c'}",
                     f"hydra.run.dir={tmp_path / 'run'}"])
    err = errors(capsys)
    assert rc == 2 and len(err) == 1 and "MiB needed" in err[0] and "(ENOSPC)" in err[0], err
    assert not (tmp_path / "c").exists() and not (tmp_path / "run").exists() and time.time() - t0 < 30


# ---- 3: checks before any folder exists ----------------------------------------------------------------

CHECKS = [("training.num_threads=100000", "CPUs of this machine"), ("seed=-1", "seed=-1: expected an integer in [0, 2**32 - 1]"),
          ("seed=5000000000", "[0, 2**32 - 1]"), ("data.target_length=10", "needs frames of at least 384 samples"),
          ("stage1.checkpoint=/nonexistent.pt", "'/nonexistent.pt': no such file"),
          ("gpus=4096", "gpus=4096"), ("+training.foo=1", "unknown config key 'training.foo'"),
          ("hydra.run.dir=RUN/x${oops}", "hydra.run.dir='RUN/x${oops}': cannot be resolved")]


@pytest.mark.parametrize("override,needle", CHECKS, ids=[c[0].split("=")[0] for c in CHECKS])
def test_checked_before_any_folder(tmp_path, capsys, monkeypatch, override, needle):
    monkeypatch.chdir(tmp_path)
    args = ["profile=smoke", override.replace("RUN", str(tmp_path)), f"data.cache_dir={tmp_path / 'c'}",
            f"stage1.cache_dir={tmp_path / 's1'}"] + ([] if override.startswith("hydra") else [f"hydra.run.dir={tmp_path / 'run'}"])
    assert guide_main(args) == 2
    err = errors(capsys)
    assert len(err) == 1 and needle.replace("RUN", str(tmp_path)) in err[0], err
    assert list(tmp_path.iterdir()) == []                                       # no folder, no cache, no run


def test_runs_dir_with_interpolation_is_one_line(tmp_path, capsys):
    assert main(["reproduce", "--runs-dir", str(tmp_path / "r${x}"), "--demo", "--profile", "smoke", "--rows", "s1_1_ce"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "--runs-dir" in err[0] and "'${'" in err[0] and list(tmp_path.iterdir()) == []


# ---- 4: frames whose scale makes normalisation meaningless ---------------------------------------------

def test_frame_scale_is_checked(tmp_path):
    from ltsei.signals.data import DataConfig, load_data
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(3), 12)
    x = rng.standard_normal((len(y), 960, 2)).astype(np.float32) + y[:, None, None] * 0.3
    def data(name, xs, normalize="power"):
        d = tmp_path / name; d.mkdir()
        np.save(d / "X_train.npy", xs); np.save(d / "Y_train.npy", y)
        return load_data(DataConfig(source="files", train_path=str(d / "X_train.npy"), test_path=str(d / "X_train.npy"),
                                    leakage="allow", imbalance_ratio=1, normalize=normalize, cache_dir=str(tmp_path / "c")), 0)
    ref, big = data("ref", x), data("big", x * np.float32(1e30))              # 1e30: float32 power overflows
    assert torch.isfinite(big.train.x).all() and big.train.x.abs().max() > 0.1
    assert torch.allclose(ref.train.x, big.train.x, atol=1e-6)                # normalised in float64: the same frames
    z = x.copy(); z[::2] = 0
    with pytest.raises(ValueError, match=r"zeros.*X_train.npy \(train split\): 16 frames, the first is frame 0: frames that are all zero"):
        data("zeros", z)
    with pytest.raises(ValueError, match="above float32's range"):
        data("none", x * np.float32(1e30), normalize="none")


# ---- 5: the seeds and rows a results folder was asked for ------------------------------------------------

def test_seeds_are_remembered_and_tables_name_the_missing(tmp_path, monkeypatch, capsys):
    import ltsei.core.clean as C
    import ltsei.orchestration.reproduce as rp
    from ltsei.experiments.demo import demo_compose_config, demo_run_experiment
    from ltsei.orchestration.row_runs import prepare_row_run_dir, row_run_overrides
    def execute(task, env=None, profile="smoke"):
        if task.name == "s3_1_crt/seed1": raise KeyboardInterrupt          # interrupted before cRT's second seed
        prepare_row_run_dir(task, profile)
        demo_run_experiment(demo_compose_config(row_run_overrides(task, profile)), task.out_dir)
    monkeypatch.setattr(rp, "row_executor", lambda *a, **k: execute)      # each row: `execute`, no notebook
    runs = tmp_path / "runs"
    base = ["--profile", "smoke", "--runs-dir", str(runs), "--no-report", "--demo", "--jobs", "1"]
    assert reproduce(base + ["--rows", "s1_1_ce,s3_1_crt", "--seeds", "2"]) == 130
    monkeypatch.setattr(C, "CLEAN_NOTE_BYTES", -1)                             # any leftover: the one-line note
    capsys.readouterr()
    assert reproduce(base + ["--dry-run"]) == 0                                 # a plain rerun: the same request
    out = capsys.readouterr().out
    assert "continuing the request recorded" in out and "2 rows x 2 seed(s) = 4 runs; 3 complete" in out
    from ltsei.experiments.report import build_tables
    t = build_tables(runs, "smoke")["tables"]["main"]["table"]
    assert list(t.cells.Seeds) == ["2", "1 of 2"]
    assert any("cRT: seed 0 run, seed 1 missing" in n for n in t.notes)
    monkeypatch.setattr(rp, "row_executor", lambda *a, **k: (lambda *a, **k: None))
    reproduce(base)
    assert "ltsei clean --runs-dir" in capsys.readouterr().out


def reproduce(argv):
    from ltsei.orchestration.reproduce import reproduce_main
    return reproduce_main(argv)


# ---- 6: ltsei clean --------------------------------------------------------------------------------------

def test_ltsei_clean_lists_and_removes_only_its_own(tmp_path, capsys):
    runs = tmp_path / "runs"; s1 = runs / "cache" / "stage1"
    def entry(key, damaged=False):
        e = CacheEntry(s1, key)
        with e.lock(), e.building() as tmp: (tmp / "best.pt").write_bytes(b"w" * 4096); e.publish(tmp)
        if damaged: (e.path / "best.pt").write_bytes(b"x" * 4096); assert not e.ready()
        return e
    used, _, _ = entry("used"), entry("unused"), entry("broken", damaged=True)
    for f in (s1 / "unused" / "manifest.json", s1 / "unused.lock"): os.utime(f, (time.time() - 7200,) * 2)   # not recent
    (runs / "smoke" / "1.1" / "s1_1_ce" / "seed0").mkdir(parents=True)
    (runs / "smoke" / "1.1" / "s1_1_ce" / "seed0" / "metrics.json").write_text(json.dumps({"stage1": {"path": str(used.path)}}))
    w = CacheEntry(s1, "abandoned"); w.make_work(); (w.work_dir / "resume.pt").write_bytes(b"r" * 50_000)
    stale = marked(s1 / f".x.tmp{DEAD}-aa")
    with FileLock(s1 / "gone.lock"): pass
    (s1 / "notes.old2019").mkdir(); (s1 / "notes.old2019" / "f").write_text("mine"); (s1 / "mine.lock").write_text("x")
    assert main(["clean", "--runs-dir", str(runs), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for kind, p in [("quarantined", "quarantine/broken-"), ("resumable", "abandoned.work"), ("temporary", stale.name),
                    ("stale lock", "gone.lock"), ("unreferenced", "stage1/unused")]:
        assert any(kind in l and p in l and "MiB" in l for l in out.splitlines()), (kind, out)
    assert "used.lock" not in out and "stage1/used " not in out and "notes" not in out and "mine.lock" not in out
    assert "dry run: nothing removed" in out and w.work_dir.exists()
    with FileLock(s1 / "abandoned.lock"):                                         # a build resumes it right now: kept
        assert main(["clean", "--runs-dir", str(runs), "--include-resumable"]) == 0
    assert w.work_dir.exists() and "in use by a running build, kept" in capsys.readouterr().out
    assert main(["clean", "--runs-dir", str(runs), "--include-resumable"]) == 0
    assert [it["path"].name for it in leftovers(runs)] == [] and used.ready()
    assert (s1 / "notes.old2019" / "f").read_text() == "mine" and (s1 / "mine.lock").exists()


# ---- 7: --launcher slurm without SLURM ------------------------------------------------------------------

def test_slurm_launcher_without_slurm_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    rc = main(["reproduce", "--launcher", "slurm", "--runs-dir", str(tmp_path / "runs"), "--demo", "--profile", "smoke",
               "--rows", "s1_1_ce"])
    err = errors(capsys)
    assert rc == 2 and len(err) == 1 and "sbatch" in err[0] and "--launcher local" in err[0], err
    assert not (tmp_path / "runs").exists()


# ---- 8: the open items -------------------------------------------------------------------------------------

def test_ctrl_c_starts_no_further_row(tmp_path, monkeypatch):
    import ltsei.orchestration.row_runs as rp
    from ltsei.orchestration.local_launcher import run_local_pool as run_tasks
    from ltsei.orchestration.row_runs import RowRun as Task
    tasks = [Task(ROWS_BY_ID[i], 0, tmp_path / i) for i in ("s1_1_ce", "s2_1_focal")]
    interrupted, second, started = threading.Event(), threading.Event(), []
    real = rp.run_status
    def run_status(d, row=None):                     # the second row reaches its start just after the Ctrl-C
        if Path(d).name == "s2_1_focal" and row is not None: second.set(); interrupted.wait(10)
        return real(d, row)
    monkeypatch.setattr(rp, "run_status", run_status)
    def execute(t):
        started.append(t.name)
        second.wait(10)                              # both rows handed over, then the Ctrl-C
        os.kill(os.getpid(), signal.SIGINT)
        interrupted.wait(10)
        raise RuntimeError("its kernel was killed")
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        run_tasks(tasks, execute, jobs=2, progress=False, interrupt=interrupted.set, locks=True)
    assert started == ["s1_1_ce/seed0"] and time.time() - t0 < 8             # the second row never started, none waited for
    assert [t.status for t in tasks] == ["interrupted", "interrupted"]


def test_slurm_unknown_state_ends(monkeypatch):
    from ltsei.orchestration.slurm_launcher import ACTIVE_SLURM_STATES, poll_job
    class Job:
        job_id, state = "77_0", "UNKNOWN"
        def done(self): return False
    seen = {}
    assert poll_job(Job(), seen, now=100.0, grace=60) is None
    out = poll_job(Job(), seen, now=161.0, grace=60)
    assert out["status"] == "failed" and "UNKNOWN for 61 s" in out["error"] and "UNKNOWN" not in ACTIVE_SLURM_STATES


def test_job_ledger_is_updated_under_a_lock(tmp_path):
    from ltsei.orchestration.launchers import LaunchOptions
    from ltsei.orchestration.slurm_launcher import read_ledger, update_ledger
    opts = LaunchOptions(runs_dir=tmp_path, profile="smoke")
    ts = [threading.Thread(target=update_ledger, args=(opts, {f"r{i}/seed0": {"job_id": str(i), "folder": "f"}})) for i in range(16)]
    for t in ts: t.start()
    for t in ts: t.join()
    assert sorted(read_ledger(opts)) == sorted(f"r{i}/seed0" for i in range(16))


def test_failed_publish_keeps_the_finished_stage1(in_scratch, monkeypatch, capsys):
    import ltsei.core.cache as C
    import ltsei.experiments.run as R
    from ltsei.experiments.run import run_experiment
    cache = in_scratch / "f19_8d"
    args = ["profile=smoke", *SMALL, "stage2.enabled=false", "seed=19", "training.epochs=150", f"stage1.cache_dir={cache}"]   # one epoch
    real = C.CacheEntry.publish
    def full(self, folder):                          # the stage-1 entry's publish meets a full disk (the data's does not)
        if self.root != cache: return real(self, folder)
        raise StorageError(self.path / "manifest.json", OSError(errno.ENOSPC, "No space left on device"))
    monkeypatch.setattr(C.CacheEntry, "publish", full)
    with pytest.raises(StorageError):
        run_experiment(compose_config(args), in_scratch / "f19_8d_a", progress=False)
    work = next(cache.glob("*.work"))
    assert {"best.pt", "last.pt", "meta.json", "log.csv"} <= {p.name for p in work.iterdir()}
    monkeypatch.setattr(C.CacheEntry, "publish", real)
    monkeypatch.setattr(R, "fit", lambda *a, **k: pytest.fail("trained again"))
    capsys.readouterr()
    m = run_experiment(compose_config(args), in_scratch / "f19_8d_b", progress=False)
    assert "publishing the finished training" in capsys.readouterr().out and not work.exists()
    assert m["stage1"]["source"] == "trained" and (Path(m["stage1"]["path"]) / "manifest.json").is_file()


def test_stale_temps_judged_on_their_own_host_only(tmp_path):
    here, there = marked(tmp_path / f".a.tmp{DEAD}-01"), marked(tmp_path / f".b.tmp{DEAD}-02", host="another-node")
    (tmp_path / f"c.tmp{DEAD}").mkdir()                                     # no marker: whatever its name, not ours
    assert clean_stale(tmp_path) == [here]
    assert there.exists() and (tmp_path / f"c.tmp{DEAD}").exists()
