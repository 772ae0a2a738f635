"""Fault injection inside one run (issue 10): every numbered case that lives in `run_experiment` /
`python main.py`, reproduced and checked against the new behaviour. All at the smoke scale, on the smaller pool of conftest.SMALL.

1 stale stage 1 (a data file replaced in place)  2 shared inodes  3 damaged cache entries
4 a crafted pickle as a checkpoint  5 disk full / read-only / no permission during a save
7 the thread count  8 leftovers of killed processes  9 checks before any work
and resume inside a run after a SIGKILL in stage 1 and in stage 2."""
import contextlib, errno, json, os, pickle, shutil, signal, subprocess, sys, textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsei.core.storage import StorageError
from ltsei.cli import guide_main
from ltsei.experiments.config import ConfigError, compose_config, stage1_key
from ltsei.experiments.run import CKPT_FORMAT, CheckpointError, run_experiment
from conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]
NO_S2 = ["stage2.enabled=false"]
# the reference run of cases 2-8: stage 1 only, one smoke epoch (300 x 0.007 = 2 epochs, 150 x 0.007 = 1): what
# those cases check (detection, quarantine, the rebuilt result bit for bit, the message) does not need two
REF = NO_S2 + ["seed=11", "training.epochs=150", "gpus=cpu"]   # bit for bit below: on the CPU, on a GPU box too


def run(overrides, out, **kw):
    return run_experiment(compose_config(["profile=smoke", *SMALL, *overrides]), out, progress=False, **kw)


def same_result(a, b):
    assert a["test"] == b["test"] and a["val"] == b["val"] and a["best_epoch"] == b["best_epoch"]


def entry_of(m) -> Path:
    return Path(m["stage1"]["path"])


def errors(capsys) -> list:
    "The error lines the command line printed (progress bars aside)."
    return [l for l in capsys.readouterr().err.replace("\r", "\n").splitlines() if l.startswith("error")]


def leftovers(*folders) -> list:
    "Temporary files or folders (`*.tmpPID`, `*.oldPID`) anywhere below `folders`."
    return [p for f in folders for p in Path(f).rglob("*") if ".tmp" in p.name or ".old" in p.name]


@pytest.fixture(scope="module")
def clean(scratch):
    "A clean smoke run (stage 1 only) with its own stage-1 cache: the reference every repaired run must equal."
    cache, cwd = scratch / "faults_cache", os.getcwd()
    os.chdir(scratch)                    # the data cache (runs/cache) of the scratch folder, as in_scratch's tests
    try: m = run(REF + [f"stage1.cache_dir={cache}"], scratch / "faults_clean")
    finally: os.chdir(cwd)
    assert m["stage1"]["source"] == "trained"
    return m, cache


# ---- 1: a training file replaced in place ------------------------------------------------------------

def write_files(folder: Path, seed: int, classes: int = 4) -> dict:
    "Small data files in the public layout: X_<split>.npy (N, L, 2) float32 and Y_<split>.npy."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", 20), ("val", 4), ("test", 4)):
        y = np.repeat(np.arange(classes), n)
        x = rng.standard_normal((len(y), 960, 2)).astype(np.float32) + y[:, None, None] * 0.3
        np.save(folder / f"X_{split}.npy", x); np.save(folder / f"Y_{split}.npy", y)
    return {s: folder / f"X_{s}.npy" for s in ("train", "val", "test")}


def files_args(p):
    return ["data.source=files", f"data.train_path={p['train']}", f"data.val_path={p['val']}",
            f"data.test_path={p['test']}", "data.imbalance_ratio=10", "stage2.moe.num_experts=3"]


def test_file_replaced_in_place_is_not_served_stale(in_scratch, capsys):
    p = write_files(in_scratch / "files1", seed=1)
    for f in (in_scratch / "files1").iterdir(): os.utime(f, ns=(f.stat().st_mtime_ns - 10**10,) * 2)  # digests remembered
    a = run(NO_S2 + ["training.epochs=150"] + files_args(p), in_scratch / "f1_a")
    assert a["stage1"]["source"] == "trained"
    assert run(NO_S2 + ["training.epochs=150"] + files_args(p), in_scratch / "f1_b")["stage1"]["source"] == "cache"      # same bytes: reused
    old = p["train"].stat()
    x = np.load(p["train"]); np.save(p["train"], -x)                                           # same path, same size
    os.utime(p["train"], ns=(old.st_atime_ns, old.st_mtime_ns))                                # even the mtime restored
    assert p["train"].stat().st_size == old.st_size
    c = run(NO_S2 + ["training.epochs=150"] + files_args(p), in_scratch / "f1_c")
    assert c["stage1"]["source"] == "trained" and c["stage1"]["key"] != a["stage1"]["key"]
    # the labels beside the signal file are part of the content too
    y = np.load(p["train"].with_name("Y_train.npy")); np.save(p["train"].with_name("Y_train.npy"), y[::-1].copy())
    assert run(NO_S2 + ["training.epochs=150"] + files_args(p), in_scratch / "f1_d")["stage1"]["key"] != c["stage1"]["key"]


# ---- 2: run folders never share an inode with the cache ------------------------------------------------

def test_run_checkpoints_are_private_copies(in_scratch, clean):
    ref, cache = clean
    out = in_scratch / "faults_clean"
    for name in ("best", "last"):
        mine, cached = out / "checkpoints" / f"stage1_{name}.pt", entry_of(ref) / f"{name}.pt"
        assert mine.stat().st_ino != cached.stat().st_ino and mine.stat().st_nlink == 1 == cached.stat().st_nlink
    ck = torch.load(out / "checkpoints" / "stage1_best.pt", weights_only=True)       # a user "fine-tunes" their run
    ck["state_dict"] = {k: v + 1 if v.is_floating_point() else v for k, v in ck["state_dict"].items()}
    torch.save(ck, out / "checkpoints" / "stage1_best.pt")
    again = run(REF + [f"stage1.cache_dir={cache}"], in_scratch / "f2_again")
    assert again["stage1"]["source"] == "cache"
    same_result(again, ref)


# ---- 3: damaged cache entries are detected, reported by path, set aside and rebuilt ----------------

def zeros(p: Path, at: int, n: int):
    with open(p, "r+b") as f: f.seek(at); f.write(b"\0" * n)


DAMAGE = {
    "zeros_in_best": (lambda e: zeros(e / "best.pt", 1 << 20, 2 << 20), "best.pt does not match its checksum"),
    "zeros_in_last": (lambda e: zeros(e / "last.pt", 4096, 300_000), "last.pt does not match its checksum"),
    "truncated_best": (lambda e: os.truncate(e / "best.pt", 1_000_000), "best.pt has 1000000 bytes"),
    "meta_deleted": (lambda e: (e / "meta.json").unlink(), "meta.json is missing"),
    "manifest_deleted": (lambda e: (e / "manifest.json").unlink(), "manifest.json is missing"),
    "log_edited": (lambda e: (e / "log.csv").write_text("epoch\n0\n"), "log.csv has"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_entry_rebuilt_with_the_clean_result(in_scratch, clean, capsys, kind):
    ref, cache = clean
    damage, needle = DAMAGE[kind]
    entry = entry_of(ref)
    damage(entry)
    capsys.readouterr()
    m = run(REF + [f"stage1.cache_dir={cache}"], in_scratch / f"f3_{kind}")
    out = capsys.readouterr().out
    line = [l for l in out.splitlines() if "damaged" in l]
    assert len(line) == 1 and str(entry) in line[0] and needle in line[0] and "quarantine" in line[0], out
    assert "stage1.checkpoint" not in out
    assert m["stage1"]["source"] == "trained" and m["stage1"]["key"] == ref["stage1"]["key"]
    same_result(m, ref)                                             # bit for bit: same config, threads, machine
    assert (entry / "manifest.json").is_file() and not leftovers(cache)
    assert run(REF + [f"stage1.cache_dir={cache}"], in_scratch / f"f3_{kind}_2")["stage1"]["source"] == "cache"


# ---- 4: a crafted pickle never runs ------------------------------------------------------------------

class Payload:
    "Unpickling this creates the marker file (the attack a weights_only=False load would let through)."
    marker = None
    def __reduce__(self): return (open, (str(self.marker), "w"))


def crafted(path: Path, marker: Path, legacy: bool = False):
    Payload.marker = marker
    obj = {"format": CKPT_FORMAT, "complete": True, "model_name": "ConvNetADSB", "epoch": 0, "state_dict": Payload()}
    if legacy:
        with open(path, "wb") as f: pickle.dump(obj, f)
    else:
        torch.save(obj, path)


@pytest.mark.parametrize("legacy", [False, True])
def test_crafted_checkpoint_is_refused_without_running(in_scratch, capsys, legacy):
    marker, evil = in_scratch / f"MARKER_{legacy}", in_scratch / f"evil_{legacy}.pt"
    crafted(evil, marker, legacy)
    with pytest.raises(CheckpointError) as e:
        run(NO_S2 + [f"stage1.checkpoint={evil}"], in_scratch / f"f4_{legacy}")
    msg = str(e.value)
    assert "\n" not in msg and f"stage1.checkpoint='{evil}'" in msg and "refused without running" in msg
    assert not marker.exists()
    out = in_scratch / f"f4_cli_{legacy}"
    assert guide_main([*NO_S2, "profile=smoke", f"stage1.checkpoint={evil}", f"hydra.run.dir={out}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and "refused without running" in err[0] and not marker.exists()


def test_crafted_cache_entry_is_refused_and_rebuilt(in_scratch, clean, capsys):
    "Someone who can write the cache (manifest included) still cannot make a run execute code."
    ref, cache = clean
    entry, marker = entry_of(ref), in_scratch / "MARKER_cache"
    crafted(entry / "best.pt", marker)
    man = json.loads((entry / "manifest.json").read_text())
    import hashlib
    man["files"]["best.pt"] = {"size": (entry / "best.pt").stat().st_size,
                               "sha256": hashlib.sha256((entry / "best.pt").read_bytes()).hexdigest()}
    (entry / "manifest.json").write_text(json.dumps(man))
    capsys.readouterr()
    m = run(REF + [f"stage1.cache_dir={cache}"], in_scratch / "f4_cache")
    out = capsys.readouterr().out
    assert not marker.exists() and f"the stage-1 cache entry {entry}" in out and "stage1.checkpoint" not in out
    same_result(m, ref)


# ---- 5: disk full, read-only, no permission ------------------------------------------------------------

@pytest.mark.parametrize("code,needle", [(errno.ENOSPC, "no space left on the device (ENOSPC)"),
                                         (errno.EROFS, "the file system is read-only (EROFS)"),
                                         (errno.EACCES, "permission denied (EACCES)")])
def test_failed_save_is_one_message_and_leaves_no_temp_file(in_scratch, monkeypatch, code, needle):
    import ltsei.core.storage as C
    real = C._write_bytes
    def failing(tmp, data):
        if tmp.name.startswith(".best.pt"):            # half the checkpoint reaches the disk, then the error
            with open(tmp, "wb") as f: f.write(bytes(data)[: len(data) // 2])
            raise OSError(code, os.strerror(code))
        real(tmp, data)
    monkeypatch.setattr(C, "_write_bytes", failing)
    cache = in_scratch / f"f5_cache_{code}"
    with pytest.raises(StorageError) as e:
        run(REF + [f"stage1.cache_dir={cache}"], in_scratch / f"f5_{code}")
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "best.pt" in msg and e.value.errno == code
    assert isinstance(e.value, OSError) and isinstance(e.value, ValueError)
    assert not leftovers(cache) and not [p for p in cache.iterdir() if p.is_dir() and not p.name.endswith(".work")]
    monkeypatch.setattr(C, "_write_bytes", real)          # space again: the next run completes
    assert run(REF + [f"stage1.cache_dir={cache}"], in_scratch / f"f5_{code}_ok")["stage1"]["source"] == "trained"


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount for a small tmpfs (the injected OSError test covers the rest)")
    try: yield path
    finally: subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_real_disk_full_and_read_only(in_scratch, capsys, clean):
    ref, _ = clean
    with tmpfs(in_scratch / "f5_tmpfs", "30m") as small:           # a stage-1 entry needs ~50 MB
        out = in_scratch / "f5_real"
        rc = guide_main([*REF, "profile=smoke", *SMALL, f"stage1.cache_dir={small}/stage1", f"hydra.run.dir={out}"])
        err = errors(capsys)
        assert rc == 2 and len(err) == 1 and f"{small}/stage1/" in err[0] and "no space left" in err[0], err
        assert not leftovers(small) and not (out / "metrics.json").exists()
        assert not [p for p in (small / "stage1").iterdir() if p.is_dir() and not p.name.endswith(".work")]
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        rc = guide_main([*REF, "profile=smoke", *SMALL, f"stage1.cache_dir={small}/s1ro", f"hydra.run.dir={out}"])
        err = errors(capsys)
        assert rc == 2 and len(err) == 1 and "read-only" in err[0] and f"{small}/s1ro" in err[0], err


# ---- 7: the thread count is part of the run ----------------------------------------------------------

def test_thread_count_is_in_the_key_and_set_by_the_run(in_scratch, clean):
    ref, cache = clean
    a = compose_config(["profile=smoke", *SMALL, *REF])
    assert a.training.num_threads == 1 and stage1_key(a) == ref["stage1"]["key"]
    if not torch.cuda.is_available():
        assert stage1_key(compose_config(["profile=smoke", *SMALL, *REF, "training.num_threads=2"])) != stage1_key(a)
    torch.set_num_threads(2)
    m = run(REF + [f"stage1.cache_dir={cache}"], in_scratch / "f7")
    assert torch.get_num_threads() == 1 and m["stage1"]["source"] == "cache"


# ---- 8: leftovers of killed processes are cleaned by the next run ---------------------------------------

def marked(folder: Path, pid: int, host=None, kind="tmp") -> Path:
    "A temporary folder as ltsei makes them: its marker names the host and the process."
    from ltsei.core.storage import TEMP_MARK, host_name
    folder.mkdir(parents=True); (folder / "best.pt").write_bytes(b"half")
    (folder / TEMP_MARK).write_text(json.dumps({"ltsei": kind, "host": host or host_name(), "pid": pid}))
    return folder


def test_stale_temporary_files_removed(in_scratch, clean):
    from ltsei.core.cache import claim_run_dir
    ref, cache = clean
    dead = 2**22 + 12345                                 # above pid_max's default: no such process
    stale = [marked(cache / f".{ref['stage1']['key']}.tmp{dead}-ab", dead), marked(cache / f".other.old{dead}-cd", dead, kind="old")]
    out = claim_run_dir(in_scratch / "f8")
    junk = [marked(out / f".metrics.json.tmp{dead}-ef", dead), marked(out / "checkpoints" / f".stage1_best.pt.tmp{dead}-01", dead)]
    live = marked(cache / f".x.tmp{os.getppid()}-02", os.getppid())   # a live process's work is left alone
    m = run(REF + [f"stage1.cache_dir={cache}"], out)
    assert not any(p.exists() for p in stale + junk) and live.exists()
    same_result(m, ref)
    shutil.rmtree(live)


# ---- 9: checks before any work -----------------------------------------------------------------------

@pytest.mark.parametrize("override,needle", [("data.imbalance_ratio=inf", "finite"), ("training.lr=inf", "finite"),
                                             ("training.momentum=5", "[0, 1]"), ("training.warmup_epochs=400", "longer than"),
                                             ("stage2.warmup_epochs=200", "longer than"),
                                             ("stage2.moe.num_experts=7", "more than the 6 classes")])
def test_refused_before_any_work(in_scratch, capsys, override, needle):
    cache = in_scratch / "f9_cache"
    out = in_scratch / "f9_run"
    assert guide_main(["profile=smoke", override, f"stage1.cache_dir={cache}", f"hydra.run.dir={out}"]) == 2
    err = errors(capsys)
    assert len(err) == 1 and needle in err[0] and not cache.exists() and not (out / "config.yaml").exists()


def test_experts_beyond_the_classes_of_data_files(in_scratch):
    "For data files the classes are known once the labels are read: still refused before stage 1 trains."
    p = write_files(in_scratch / "files9", seed=9, classes=3)
    cache = in_scratch / "f9_files_cache"
    with pytest.raises(ConfigError, match="stage2.moe.num_experts=4 is more than the 3 classes"):
        run(files_args(p)[:-1] + ["stage2.moe.num_experts=4", f"stage1.cache_dir={cache}"], in_scratch / "f9_files")
    assert not cache.exists()


# ---- resume inside a run after a SIGKILL ---------------------------------------------------------------

KILLER = textwrap.dedent('''
    import os, signal, sys
    import ltsei.learn.train as T
    stage, after, out, *overrides = sys.argv[1:]
    after, seen, real = int(after), [0], T.Resume.save
    T.Resume.due = lambda self: True                      # a resume state after every epoch
    def save(self, state):
        real(self, state)
        if stage in str(self.path):
            seen[0] += 1
            if seen[0] == after: os.kill(os.getpid(), signal.SIGKILL)   # at an epoch boundary
    T.Resume.save = save
    from ltsei.experiments.config import compose_config
    from ltsei.experiments.run import run_experiment
    m = run_experiment(compose_config(overrides), out, progress=False)
''')


def subprocess_run(workdir: Path, stage: str, kill_after: int, out: Path, overrides: list):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", KILLER, stage, str(kill_after), str(out), *overrides],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


THREE = ["training.epochs=430", "seed=21"]         # 3 smoke epochs of stage 1


@pytest.fixture(scope="module")
def three_epochs(scratch):
    "The uninterrupted stage-1 run (3 smoke epochs) the two stage-1 interruption tests compare against, trained once."
    out, cwd = scratch / "three_epochs", os.getcwd()
    os.chdir(scratch)                    # the session's data cache, as in_scratch's tests
    try: run(NO_S2 + THREE + [f"stage1.cache_dir={scratch / 'three_epochs_cache'}"], out)
    finally: os.chdir(cwd)
    return out


@pytest.mark.parametrize("stage,kill_after,extra", [
    ("stage1", 2, [*THREE, "stage2.enabled=false"]),                  # 3 stage-1 epochs: killed after epoch 1
    ("stage2", 5, ["training.epochs=300", "seed=21", "stage2.epochs=8"]),   # killed after stage-2 epoch 4 of 8
])
def test_resume_after_sigkill_gives_the_uninterrupted_result(in_scratch, monkeypatch, capsys, request, stage, kill_after,
                                                             extra):
    work = in_scratch / f"resume_{stage}"; work.mkdir()
    base = ["profile=smoke", *SMALL, *extra, f"data.cache_dir={in_scratch / 'runs' / 'cache'}"]   # the session's data
    monkeypatch.chdir(work)
    ref = work / "ref"
    if stage == "stage1":                # the uninterrupted reference: shared with the Ctrl-C test below
        ref = request.getfixturevalue("three_epochs")
    else:                                # in this process, from the same folder (stage 1 trained once, shared)
        run_experiment(compose_config(base), ref, progress=False)
    killed = subprocess_run(work, stage, kill_after, work / "killed", base)
    assert killed.returncode == -signal.SIGKILL and not (work / "killed" / "metrics.json").exists()
    states = list(work.rglob("resume.pt")) + list((in_scratch / "runs" / "cache").rglob("resume.pt"))
    assert len(states) == 1 and stage in str(states[0])
    capsys.readouterr()
    run_experiment(compose_config(base), work / "again", progress=False)   # a new run folder, the same config, here
    assert f"resuming after epoch {kill_after - 1}" in capsys.readouterr().out
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (ref, work / "again"))
    same_result(a, b)
    assert a["stage1"]["key"] == b["stage1"]["key"] and (a["stage2"] or {}).get("best_epoch") == (b["stage2"] or {}).get("best_epoch")
    assert b["stage1"]["source"] == ("trained" if stage == "stage1" else "cache")
    assert not list(work.rglob("resume.pt")) and not list((in_scratch / "runs" / "cache").rglob("resume.pt"))
    assert not leftovers(work / "runs", work / "again")
    drop_seconds = lambda d: [l.rsplit(",", 1)[0] for l in (d / "log.csv").read_text().splitlines()]
    assert drop_seconds(work / "again") == drop_seconds(ref)        # the log: every epoch once, the same numbers


def test_ctrl_c_in_stage1_keeps_a_resume_state_and_no_temp_files(in_scratch, monkeypatch, capsys, three_epochs):
    import ltsei.learn.train as T
    monkeypatch.setattr(T.Resume, "due", lambda self: True)
    cache = in_scratch / "fc_cache"
    args = NO_S2 + THREE + [f"stage1.cache_dir={cache}"]                                  # 3 smoke epochs
    ref = json.loads((three_epochs / "metrics.json").read_text())                        # the same run, uninterrupted
    real_save, n = T.Resume.save, [0]
    def interrupted(self, state):
        real_save(self, state); n[0] += 1
        if n[0] == 2: raise KeyboardInterrupt
    monkeypatch.setattr(T.Resume, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(args, in_scratch / "fc_run")
    assert not leftovers(cache) and len(list(cache.rglob("resume.pt"))) == 1
    monkeypatch.setattr(T.Resume, "save", real_save)
    capsys.readouterr()
    m = run(args, in_scratch / "fc_run2")
    assert "resuming after epoch 1 of 3" in capsys.readouterr().out
    same_result(m, ref)
    assert not list(cache.rglob("*.work"))
