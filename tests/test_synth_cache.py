"""The synthetic-data cache under faults (issue 10): the smoke preset's bytes pinned; damaged entries
(zeros inside X_pool.npy, a truncated X_pool.npy, a deleted meta.json or manifest) reported by path, set
aside and rebuilt with the clean bytes; a full disk / read-only folder (injected, and a real small tmpfs
when the tests run as root) and a killed worker end within seconds with one message and no leftovers;
`ltsei synth --out` writes its folder whole. Ctrl-C is tests/test_cli.py::test_ctrl_c_in_ltsei_synth_is_one_line."""
import json
import errno, hashlib, os, shutil, signal, subprocess, time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ltsei.signals import synth
from ltsei.core.storage import StorageError
from ltsei.cli import main
from ltsei.signals.synth import (SPLITS, SYNTH_PRESETS, SynthWorkerError, load_synth, synth_entry, synth_key, synth_main)

SMOKE = SYNTH_PRESETS["smoke"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

# sha256 of the smoke preset's arrays as ltsei-synth-3 writes them (the cache work must not change a byte: a
# reproduction runs on them; labels and bits are those of ltsei-synth-2, only the frames changed). If the
# generator's output changes on purpose, bump SYNTH_VERSION (it is part of the cache key) and update these.
SMOKE_SHA256 = {
    "X_pool.npy": "0f8164e2061f5c875721895e3615912485ba09f4d2f70dce1720ca45f0d1265a",
    "X_val.npy": "b0d5590be154166e1d80fc6066b88c9369d4329e3bf19cff4c79bd8657f04fbb",
    "X_test.npy": "a9a3371e7a93cea359e367902191b09205c3e8dd0378ca5f58ddb5db13ca05f5",
    "Y_pool.npy": "305a1d9264757405c323e249e74d9502ea393c7a6fe35766f9fb7b60b0d0f989",
    "Y_val.npy": "ea8910d2c14df9744ae9f4d4b251bbdf768d9de9efa62b4593cef34a1b36c948",
    "Y_test.npy": "50535e29c490ae62b19936298f1768592e29f09619a3f1b7fe55929741743f8c",
    "bits_pool.npy": "9f3b65c71ae34e6d5b1e2657563818fca05911d7b1de6094c2d0d77971420c2f",
    "bits_val.npy": "3604a0bee6c0b5b719ef630e636e6175d95bc4fe6b67a61856ed4a29ab10d996",
    "bits_test.npy": "8eb22f4915df3acd5aeddfac9e46f0fe128a5ddf2037a413f075e5024fbf73a8",
}


def sha(p) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def array_hashes(entry: Path) -> dict:
    return {name: sha(entry / name) for name in SMOKE_SHA256}


def leftovers(folder) -> list:
    "Temporary files or folders (`*.tmpPID`, `*.oldPID`, `.tmp-*`) anywhere below `folder`."
    return [p for p in Path(folder).rglob("*") if ".tmp" in p.name or ".old" in p.name]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    "The smoke entry generated with two worker processes: the reference."
    s = load_synth(SMOKE, tmp_path_factory.mktemp("synth") / "cache", workers=2, progress=False)
    return s


# the smoke preset with conftest.SMALL's pool (200 frames per emitter, not 700), for the damage tests: each rebuilds an
# entry (in one process) and must give the bytes of the clean entry (generated with two processes) again
SMOKE_SMALL = replace(SMOKE, pool_per_class=200)


@pytest.fixture(scope="module")
def clean_small(tmp_path_factory):
    "The smaller entry generated with two worker processes, and its arrays' sha256: the reference of the damage tests."
    s = load_synth(SMOKE_SMALL, tmp_path_factory.mktemp("synth_small") / "cache", workers=2, progress=False)
    return s, array_hashes(s.path)


def test_smoke_bytes_are_unchanged(clean):
    assert array_hashes(clean.path) == SMOKE_SHA256
    man = synth_entry(SMOKE, clean.path.parent).manifest()
    assert {k: v["sha256"] for k, v in man["files"].items() if k in SMOKE_SHA256} == SMOKE_SHA256
    assert set(man["files"]) == set(SMOKE_SHA256) | {"meta.json"}


def test_key_covers_what_determines_the_bytes(monkeypatch):
    k = synth_key(SMOKE)
    assert synth_key(replace(SMOKE, seed=1)) != k and synth_key(replace(SMOKE, snr_db_max=36.0)) != k
    for name, value in (("CHUNK", 100), ("SYNTH_VERSION", "ltsei-synth-x"), ("STORE_DTYPE", np.float32)):
        with monkeypatch.context() as m:
            m.setattr(synth, name, value)
            assert synth_key(SMOKE) != k, name
    numerics = synth.synth_numerics()
    with monkeypatch.context() as m:
        m.setattr(synth, "synth_numerics", lambda: {**numerics, "numpy": "0.0"})
        assert synth_key(SMOKE) != k


def zeros_in_x_pool(entry: Path):
    p = entry / "X_pool.npy"
    before = p.read_bytes()[100_000:400_000]
    assert any(before)                                        # the 300 KB really change
    with open(p, "r+b") as f: f.seek(100_000); f.write(bytes(300_000))
    return "X_pool.npy does not match its checksum"


def truncated_x_pool(entry: Path):
    p = entry / "X_pool.npy"
    os.truncate(p, p.stat().st_size // 2)
    return "X_pool.npy has"


def deleted_meta(entry: Path):
    (entry / "meta.json").unlink()
    return "meta.json is missing"


def deleted_manifest(entry: Path):
    (entry / "manifest.json").unlink()
    return "manifest.json is missing"


def same_size_same_mtime(entry: Path):
    "A flipped byte that keeps the size and the modification time: caught by the full-content check."
    p = entry / "X_test.npy"
    st = p.stat()
    with open(p, "r+b") as f: f.seek(st.st_size - 7); b = f.read(1); f.seek(st.st_size - 7); f.write(bytes([b[0] ^ 1]))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    return "X_test.npy does not match its checksum"


@pytest.mark.parametrize("damage", [zeros_in_x_pool, truncated_x_pool, deleted_meta, deleted_manifest, same_size_same_mtime])
def test_damaged_entry_is_reported_quarantined_and_rebuilt(clean_small, tmp_path, capsys, damage):
    clean, hashes = clean_small
    cache = tmp_path / "cache"
    shutil.copytree(clean.path, cache / clean.path.name)
    entry = cache / clean.path.name
    assert load_synth(SMOKE_SMALL, cache, workers=1, progress=False).path == entry   # the copy is intact: used as it is
    assert "damaged" not in capsys.readouterr().out
    why = damage(entry)
    s = load_synth(SMOKE_SMALL, cache, workers=1, progress=False)
    lines = [l for l in capsys.readouterr().out.splitlines() if "damaged" in l]
    assert len(lines) == 1 and str(entry) in lines[0] and why in lines[0], lines
    assert s.path == entry and array_hashes(entry) == hashes                       # the clean run's bytes
    q = list((cache / "quarantine").iterdir())
    assert len(q) == 1 and str(q[0]) in lines[0]                                  # set aside, named
    assert not leftovers(cache)
    load_synth(SMOKE_SMALL, cache, workers=1, progress=False)                     # repaired: no second report
    assert "damaged" not in capsys.readouterr().out


def no_space(*a):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_injected_is_one_error_and_leaves_nothing(clean_small, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    t = time.monotonic()
    with pytest.raises(StorageError) as e:
        load_synth(SMOKE_SMALL, cache, workers=2, progress=False)
    assert time.monotonic() - t < 30
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and len(msg.splitlines()) == 1
    assert str(cache / f"synth-{synth_key(SMOKE_SMALL)}") in msg and "no space left" in msg
    assert [p.name for p in cache.iterdir()] == [f"synth-{synth_key(SMOKE_SMALL)}.lock"]   # no entry, no temporary folder
    monkeypatch.undo()
    assert array_hashes(load_synth(SMOKE_SMALL, cache, workers=1, progress=False).path) == clean_small[1]   # the clean bytes


def test_read_only_cache_injected(tmp_path, monkeypatch):
    "EROFS when the lock file or the temporary folder is created: one error naming the path."
    real_open = open

    def ro_open(file, mode="r", *a, **k):
        if str(file).startswith(str(tmp_path)) and any(c in mode for c in "wax+"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr("builtins.open", ro_open)
    with pytest.raises(StorageError, match="read-only") as e:
        load_synth(SMOKE, tmp_path / "cache", workers=1, progress=False)
    assert str(tmp_path / "cache") in str(e.value) and len(str(e.value).splitlines()) == 1


def mounted(folder: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"): return False
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode == 0


@pytest.fixture()
def tmpfs(tmp_path):
    "A 5 MB tmpfs (the smoke entry needs 6.8 MB), when the tests run as root and may mount; else skipped."
    d = tmp_path / "small"
    if not mounted(d, "size=5m"): pytest.skip("needs root and mount -t tmpfs")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_real_full_disk(tmpfs, tmp_path, capsys):
    t = time.monotonic()
    with pytest.raises(StorageError, match="no space left") as e:
        load_synth(SMOKE, tmpfs / "cache", workers=2, progress=False)
    assert str(tmpfs / "cache") in str(e.value) and time.monotonic() - t < 30
    assert [p.name for p in (tmpfs / "cache").iterdir()] == [f"synth-{synth_key(SMOKE)}.lock"]
    assert shutil.disk_usage(tmpfs).used < 100_000                                # the space is free again
    # ltsei synth --out on the full disk: one line naming --out, nothing written there
    assert main(["synth", "--out", str(tmpfs / "out"), "--preset", "smoke", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: could not write the data set") and str(tmpfs / "out") in err[0], err
    assert sorted(p.name for p in tmpfs.iterdir()) == ["cache"] and not leftovers(tmpfs)


def test_read_only_file_system(clean, tmp_path, capsys):
    "A read-only cache folder: an intact entry is used as it is; a missing one is one error naming the folder."
    d = tmp_path / "ro"
    if not mounted(d, "size=20m"): pytest.skip("needs root and mount -t tmpfs")
    try:
        shutil.copytree(clean.path, d / clean.path.name)
        assert subprocess.run(["mount", "-o", "remount,ro", str(d)]).returncode == 0
        s = load_synth(SMOKE, d, workers=1, progress=False)
        assert s.path == d / clean.path.name and array_hashes(s.path) == SMOKE_SHA256
        with pytest.raises(StorageError, match=r"read-only \(EROFS\)") as e:
            load_synth(replace(SMOKE, seed=5), d, workers=1, progress=False)
        assert str(d) in str(e.value)
        assert main(["synth", "--out", str(d / "out"), "--preset", "smoke", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(d / "out") in err[0] and "read-only" in err[0], err
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def children(pid: int) -> list:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try: stat = (p / "stat").read_text()
            except OSError: continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid: out.append(int(p.name))
    return out


def test_killed_worker_ends_with_one_error(tmp_path):
    "SIGKILL to one generator process of `ltsei synth`: one error line within seconds, no hang, nothing left."
    cache = tmp_path / "cache"
    p = subprocess.Popen(["ltsei", "synth", "--out", str(tmp_path / "out"), "--cache-dir", str(cache), "--preset", "quick",
                          "--workers", "2", "--num-emitters", "20", "--pool-per-class", "3000", "--quiet"],
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t = time.monotonic()
        while len(kids := children(p.pid)) < 2 and time.monotonic() - t < 60 and p.poll() is None: time.sleep(0.2)
        assert len(kids) >= 2, "the workers did not start"
        time.sleep(1.0)
        os.kill(kids[0], signal.SIGKILL)
        t = time.monotonic()
        _, err = p.communicate(timeout=60)                 # a hang fails here
        print(f"exit {time.monotonic() - t:.1f} s after the kill")
        assert time.monotonic() - t < 30
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: a synthetic-data worker process died") and "Traceback" not in err
    assert [x.name for x in cache.iterdir() if not x.name.endswith(".lock")] == [] and not (tmp_path / "out").exists()
    assert not leftovers(tmp_path)


def test_worker_exit_in_process_raises(tmp_path, monkeypatch):
    "A worker that exits in the middle (injected os._exit): SynthWorkerError at once, the cache as it was."
    real, parent = synth.synth_frames, os.getpid()

    def dies(*a, **k):
        if os.getpid() != parent: os._exit(3)          # in a worker: gone without a word
        return real(*a, **k)

    monkeypatch.setattr(synth, "synth_frames", dies)
    t = time.monotonic()
    with pytest.raises(SynthWorkerError, match="worker process died"):
        load_synth(SMOKE, tmp_path / "cache", workers=2, progress=False)
    assert time.monotonic() - t < 30
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"synth-{synth_key(SMOKE)}.lock"]


def test_synth_out_is_written_whole(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["--out", str(out), "--preset", "smoke", "--num-emitters", "3", "--pool-per-class", "20", "--workers", "1", "--quiet"]
    assert synth_main(args) == 0
    before = {p.name: sha(p) for p in out.iterdir()}
    assert "X_train.npy" in before and not leftovers(tmp_path)
    # a full disk while writing a new output: one StorageError naming --out, the old output untouched
    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(StorageError, match="no space left") as e:
        synth_main(args + ["--seed", "3"])
    assert str(out) in str(e.value)
    assert {p.name: sha(p) for p in out.iterdir()} == before and not leftovers(tmp_path)
    monkeypatch.undo()
    # an earlier output is replaced whole (npz instead of npy: no stale X_*.npy left)
    assert synth_main(args + ["--format", "npz"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "hex_test.txt", "hex_train.txt", "hex_val.txt", "meta.json"]
    # a folder holding other files is refused before any work
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="notes.txt"):
        synth_main(["--out", str(tmp_path / "mine"), "--preset", "smoke", "--quiet"])
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    # the temporary folder of a killed earlier run beside --out is removed
    stale = tmp_path / ".out.tmp4194311-ab"; stale.mkdir(); (stale / "X_train.npy").write_bytes(b"x")
    from ltsei.core.storage import TEMP_MARK, host_name
    (stale / TEMP_MARK).write_text(json.dumps({"ltsei": "tmp", "host": host_name(), "pid": 4194311}))
    assert synth_main(args) == 0 and not stale.exists()


def test_realism_dedup_uses_frame_hashes(tmp_path):
    "One rule for `the same frame`: realism.load_frames drops what ltsei.signals.data.frame_hashes calls equal (-0.0 == 0.0)."
    from ltsei.signals.data import frame_hashes
    from ltsei.signals.realism import load_frames
    x = np.random.default_rng(0).standard_normal((5, 64, 2)).astype(np.float32)
    x[1] = x[0]                                   # an exact copy
    x[2, 0, 0] = 0.0; x[3] = x[2]; x[3, 0, 0] = -0.0   # equal values, different bytes (a byte hash would keep both)
    np.save(tmp_path / "X_train.npy", x); np.save(tmp_path / "Y_train.npy", np.arange(5))
    xf, yf, _, desc = load_frames([tmp_path / "X_train.npy"], layout="NLC")
    assert len(np.unique(frame_hashes(x.transpose(0, 2, 1)))) == 3
    assert yf.tolist() == [0, 2, 4] and "2 duplicates dropped" in desc
