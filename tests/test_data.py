"""Splits, file readers and tensors of ltsei.signals.data; every bad input gets one clear error."""
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from omegaconf import OmegaConf

from ltsei.signals.data import (DataConfig, check_data_config, class_ranks, count_ranks, cut_counts, frame_hashes, holdout_counts,
                        load_data, long_tail_class_counts, long_tail_counts, save_class_counts, shot_groups)
from ltsei.signals.synth import SYNTH_PRESETS, load_synth, synth_main

SMOKE = SYNTH_PRESETS["smoke"]


def test_long_tail_counts():
    "(The profile's ends, IR 1, at least one frame, the ranks as a permutation: the notebook 05_data.)"
    assert np.array_equal(long_tail_counts(7, 1, 100), [7])
    i = np.arange(20)
    assert np.array_equal(long_tail_counts(300, 20, 50), np.floor(300 * 50.0 ** (-i / 19) + 1e-9).astype(int))
    for bad in (0.99, 0, -1):   # (0.5: the notebook)
        with pytest.raises(ValueError, match="imbalance_ratio"):
            long_tail_counts(300, 20, bad)
    r = class_ranks(20, 5)
    assert np.array_equal(r, class_ranks(20, 5))
    c = long_tail_class_counts(300, 20, 100, 5)
    assert np.array_equal(c, long_tail_counts(300, 20, 100)[r])


def test_shot_groups():
    "(The thresholds above 100 and the tertiles below: the notebook 05_data; here the edge cases.)"
    g = shot_groups([100, 3, 50, 50, 9, 70, 1])  # max <= 100: tertiles by rank, ties by label
    assert g["rule"] == "tertiles" and g["many"] == [0, 2, 5] and g["medium"] == [3, 4] and g["few"] == [1, 6]
    g = shot_groups([5, 5])
    assert g["many"] == [0] and g["medium"] == [1] and g["few"] == []
    with pytest.raises(ValueError):
        shot_groups([])


@pytest.fixture()
def data_cache(scratch):
    """The session's data cache (conftest's scratch folder; entries are content-keyed and checked on every load): the
    smoke preset generated once for the tests that read it, not once each."""
    return scratch / "runs" / "cache"


def _cfg(cache, **kw):
    return DataConfig(synth=SMOKE, cache_dir=str(cache), **kw)


def test_synthetic_bundle(tmp_path, data_cache):
    "(Shapes, dtypes, counts per split, unit power and the shot groups of a bundle: the notebook 05_data.)"
    b = load_data(_cfg(data_cache, imbalance_ratio=10), seed=0)
    n_pool = SMOKE.pool_per_class
    assert b.num_classes == 6 and b.sample_rate == SMOKE.sample_rate
    assert np.array_equal(b.class_counts, long_tail_class_counts(n_pool, 6, 10, 0))
    assert all(s.y.dtype == torch.int64 for s in (b.train, b.val, b.test))
    assert b.info["source"] == "synthetic" and b.info["cache_key"] in b.info["cache_path"]
    text = b.summary()
    assert "6 classes" in text and "train" in text and b.groups["rule"] in text
    # the data do not depend on the run seed; another split_seed moves the head
    b2 = load_data(_cfg(data_cache, imbalance_ratio=10), seed=7)
    assert torch.equal(b.train.x, b2.train.x) and torch.equal(b.test.x, b2.test.x)
    b3 = load_data(_cfg(data_cache, imbalance_ratio=10, split_seed=1), seed=0)
    assert not np.array_equal(b3.class_counts, b.class_counts)
    # IR 1 is balanced and holds every IR-10 training frame (class c keeps the first n_c of its pool)
    b1 = load_data(_cfg(data_cache, imbalance_ratio=1, normalize="none"), seed=0)
    assert (b1.class_counts == n_pool).all()
    s = load_synth(SMOKE, data_cache)
    assert torch.equal(b1.train.x, torch.from_numpy(s.x("pool").astype(np.float32)))
    save_class_counts(b, tmp_path / "out" / "counts.json")
    d = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert d["class_counts"] == b.class_counts.tolist() and d["groups"] == b.groups


def test_target_length_and_omegaconf(data_cache):
    L = SMOKE.length
    crop = load_data(_cfg(data_cache, target_length=L - 40, normalize="none"), 0)
    pad = load_data(_cfg(data_cache, target_length=L + 40, normalize="none"), 0)
    full = load_data(_cfg(data_cache, normalize="none"), 0)
    assert crop.length == L - 40 and pad.length == L + 40
    assert torch.equal(crop.test.x, full.test.x[..., :L - 40])
    assert torch.equal(pad.test.x[..., :L], full.test.x) and (pad.test.x[..., L:] == 0).all()
    oc = OmegaConf.structured(_cfg(data_cache, imbalance_ratio=10))
    assert torch.equal(load_data(oc, 0).train.x, load_data(_cfg(data_cache, imbalance_ratio=10), 0).train.x)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_synth_main_round_trip(tmp_path, data_cache, fmt):
    out = tmp_path / "files"
    assert synth_main(["--out", str(out), "--preset", "smoke", "--format", fmt, "--workers", "1"]) == 0
    if fmt == "npy":
        paths = {k: str(out / f"X_{k}.npy") for k in ("train", "val", "test")}
    else:
        paths = {k: str(out / "data.npz") for k in ("train", "val", "test")}
    cfg = DataConfig(source="files", train_path=paths["train"], val_path=paths["val"], test_path=paths["test"],
                     imbalance_ratio=1, normalize="none")
    b = load_data(cfg, 0)
    s = load_synth(SMOKE, data_cache, workers=1, progress=False) if fmt == "npz" else None   # (npy: the notebook)
    for name, split in (("train", "pool"), ("val", "val"), ("test", "test")) if fmt == "npz" else ():
        got = getattr(b, name)
        assert torch.equal(got.x, torch.from_numpy(s.x(split).astype(np.float32))), name
        assert torch.equal(got.y, torch.from_numpy(s.y(split))), name
    assert b.sample_rate == SMOKE.sample_rate and b.num_classes == 6 and b.info["label_base"] == 0
    # the public files' naming (X_train_6Class.npy + Y_train_6Class.npy) and a stratified validation hold-out
    if fmt == "npy":
        for k in ("train", "test"):
            (out / f"X_{k}_6Class.npy").write_bytes((out / f"X_{k}.npy").read_bytes())
            (out / f"Y_{k}_6Class.npy").write_bytes((out / f"Y_{k}.npy").read_bytes())
        c2 = DataConfig(source="files", train_path=str(out / "X_train_6Class.npy"), test_path=str(out / "X_test_6Class.npy"),
                        val_fraction=0.25, imbalance_ratio=10)
        b2 = load_data(c2, 0)
        n_val = SMOKE.pool_per_class // 4
        assert (np.bincount(b2.val.y.numpy()) == n_val).all()
        assert np.array_equal(b2.class_counts, long_tail_class_counts(SMOKE.pool_per_class - n_val, 6, 10, 0))
        assert b2.info["n_max"] == SMOKE.pool_per_class - n_val
        # no validation frame is also a training frame
        tr = {bytes(r) for r in b2.train.x.numpy()}
        assert not any(bytes(r) in tr for r in b2.val.x.numpy())


def _frames(n=24, L=64, C=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, L, 2)).astype(np.float32), np.repeat(np.arange(C), n // C)


def _write_mat73(path, arrays):
    "An HDF5 file as MATLAB -v7.3 writes it: a 512-byte header block and arrays stored transposed."
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, v in arrays.items():
            f[k] = np.asarray(v).T
    head = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(head.ljust(116) + b"\x00" * 8 + b"\x00\x02" + b"IM")


@pytest.mark.parametrize("layout", ["NLC", "NCL", "CLN"])
@pytest.mark.parametrize("kind", ["npy", "npz", "mat5", "mat73", "h5"])
def test_file_formats_and_layouts(tmp_path, layout, kind):
    x, y = _frames()
    ref = x.transpose(0, 2, 1)
    arr = {"NLC": x, "NCL": x.transpose(0, 2, 1), "CLN": x.transpose(2, 1, 0)}[layout]
    y1 = y + 1  # 1-based labels, as MATLAB-origin files often have
    if kind == "npy":
        p = tmp_path / "X_train_3Class.npy"; np.save(p, arr); np.save(tmp_path / "Y_train_3Class.npy", y1)
    elif kind == "npz":
        p = tmp_path / "d.npz"; np.savez(p, X=arr, Y=y1)
    elif kind == "mat5":
        p = tmp_path / "d.mat"; scipy.io.savemat(p, {"data": arr, "labels": y1.reshape(-1, 1)})
    elif kind == "mat73":
        p = tmp_path / "d.mat"; _write_mat73(p, {"X": arr, "Y": y1.reshape(1, -1).astype(np.float64)})
    else:
        p = tmp_path / "d.h5"
        with h5py.File(p, "w") as f:
            f["x"] = arr; f["y"] = y1
    cfg = DataConfig(source="files", train_path=str(p), test_path=str(p), val_fraction=0.25, imbalance_ratio=1, normalize="none",
                     leakage="allow")   # one file as train and test: every test frame is a training frame
    b = load_data(cfg, 0)
    assert b.info["label_base"] == 1 and b.num_classes == 3
    assert torch.equal(b.test.x, torch.from_numpy(ref)) and torch.equal(b.test.y, torch.from_numpy(y))
    assert b.sample_rate == 50e6 and "assumed" in b.info["sample_rate_source"]


def test_complex_and_explicit_options(tmp_path):
    x, y = _frames()
    z = x[..., 0] + 1j * x[..., 1]
    _write_mat73(tmp_path / "c.mat", {"X": z, "Y": y})
    with h5py.File(tmp_path / "c.mat", "r+") as f:  # MATLAB's complex storage: a (real, imag) compound
        del f["X"]
        comp = np.zeros(z.T.shape, dtype=[("real", "<f8"), ("imag", "<f8")])
        comp["real"], comp["imag"] = z.T.real, z.T.imag
        f["X"] = comp
    b = load_data(DataConfig(source="files", train_path=str(tmp_path / "c.mat"), test_path=str(tmp_path / "c.mat"),
                             val_fraction=0.25, imbalance_ratio=1, normalize="none", leakage="allow"), 0)
    assert torch.allclose(b.test.x, torch.from_numpy(x.transpose(0, 2, 1)))
    # ((2, 2, N) fits two layouts, auto refuses and an explicit layout works: the notebook 05_data)
    # label_base "0" on 0-based labels; "1" forced on 0-based labels is an error naming the label
    np.savez(tmp_path / "z.npz", X=x, Y=y)
    c0 = DataConfig(source="files", train_path=str(tmp_path / "z.npz"), test_path=str(tmp_path / "z.npz"), leakage="allow")
    assert load_data(replace(c0, label_base="0"), 0).info["label_base"] == 0
    with pytest.raises(ValueError, match="below the label base 1"):
        load_data(replace(c0, label_base="1"), 0)


# ---- every bad input: one clear error naming the file/key/setting, and no cache entry left behind ----

def _bad(tmp_path, name, X, Y):
    p = tmp_path / f"X_{name}.npy"
    np.save(p, X); np.save(tmp_path / f"Y_{name}.npy", Y)
    return DataConfig(source="files", train_path=str(p), test_path=str(p), leakage="allow", cache_dir=str(tmp_path / "cache"))


def test_bad_files(tmp_path):
    x, y = _frames()
    cases = []
    cases.append((DataConfig(source="files", train_path=str(tmp_path / "missing.npy"), test_path=str(tmp_path / "missing.npy")),
                  FileNotFoundError, "missing.npy"))
    np.save(tmp_path / "X_nolabels.npy", x)
    cases.append((DataConfig(source="files", train_path=str(tmp_path / "X_nolabels.npy"), test_path=str(tmp_path / "X_nolabels.npy")),
                  FileNotFoundError, "no label file"))
    cases.append((_bad(tmp_path, "flat", x[..., 0], y), ValueError, "expected 3 axes"))
    cases.append((_bad(tmp_path, "wide", np.zeros((24, 64, 3), np.float32), y), ValueError, "expected one of"))
    cases.append((_bad(tmp_path, "str", np.full((24, 64, 2), "a"), y), ValueError, "dtype <U1"))
    cases.append((_bad(tmp_path, "bool", np.zeros((24, 64, 2), bool), y), ValueError, "dtype bool"))
    inf = x.copy(); inf[7, 0, 0] = np.inf
    cases.append((_bad(tmp_path, "inf", inf, y), ValueError, "first is frame 7"))
    cases.append((_bad(tmp_path, "frac", x, y + 0.5), ValueError, "whole numbers"))
    cases.append((_bad(tmp_path, "ystr", x, np.array(["a"] * 24)), ValueError, "expected integers"))
    cases.append((_bad(tmp_path, "gap", x, np.where(y == 1, 2, y)), ValueError, r"classes \[1\] have no samples"))
    cases.append((_bad(tmp_path, "neg", x, y - 1), ValueError, "below the label base"))
    cases.append((_bad(tmp_path, "empty", x[:0], y[:0]), ValueError, "no samples"))
    ok = _bad(tmp_path, "ok", x, y)
    cases.append((replace(ok, val_fraction=1.0), ValueError, "data.val_fraction=1.0"))
    cases.append((replace(ok, long_tail="tail"), ValueError, "data.long_tail='tail'"))
    cases.append((replace(ok, leakage="ignore"), ValueError, "data.leakage='ignore'"))
    cases.append((replace(ok, leakage="error"), ValueError, "share 24 distinct frames"))
    cases.append((replace(ok, target_length=0), ValueError, "data.target_length=0"))
    cases.append((replace(ok, layout="CLN"), ValueError, "does not fit data.layout=CLN"))
    cases.append((replace(ok, test_path=None), ValueError, "data.test_path is required"))
    cases.append((replace(ok, train_path=None), ValueError, "data.train_path is required"))
    (tmp_path / "d.csv").write_text("1,2")
    cases.append((replace(ok, train_path=str(tmp_path / "d.csv")), ValueError, "unsupported file type '.csv'"))
    (tmp_path / "fake.mat").write_bytes(b"not a mat file at all" * 20)
    cases.append((replace(ok, train_path=str(tmp_path / "fake.mat")), ValueError, "fake.mat"))
    np.save(tmp_path / "X_short.npy", x[:, :32]); np.save(tmp_path / "Y_short.npy", y)
    cases.append((replace(ok, test_path=str(tmp_path / "X_short.npy")), ValueError, "set data.target_length"))
    np.save(tmp_path / "X_more.npy", x); np.save(tmp_path / "Y_more.npy", y + 1)
    cases.append((replace(ok, test_path=str(tmp_path / "X_more.npy")), ValueError, "beyond the training file's classes"))
    for cfg, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            load_data(cfg, 0)
    assert load_data(ok, 0).num_classes == 3
    assert not (tmp_path / "cache").exists()


def test_bad_synthetic_settings_leave_no_cache(tmp_path):
    for synth, msg in ((replace(SMOKE, length=0), "synth.length"), (replace(SMOKE, length=-1), "synth.length"),
                       (replace(SMOKE, num_emitters=0), "synth.num_emitters")):
        with pytest.raises(ValueError, match=msg):
            load_data(DataConfig(synth=synth, cache_dir=str(tmp_path / "cache")), 0)
    with pytest.raises(ValueError, match="data.imbalance_ratio"):
        load_data(DataConfig(synth=SMOKE, imbalance_ratio=0.9, cache_dir=str(tmp_path / "cache")), 0)
    assert not (tmp_path / "cache").exists()


# ---- real captures as they come: the cut, the hold-out, leakage, label base, unreadable files ----

def _public(folder, counts=(2, 15, 9, 4, 11, 3, 7, 8, 6, 5), n_test=3, L=256, shared=(), copies=(), base=0, seed=0):
    """Files in the public data set's naming and layout (X (N, L, 2) float64, Y (N,) int): `shared` lists training
    indices copied into the test file (into the test frames of the same class), `copies` (i, j) pairs make
    training frame j a copy of frame i."""
    rng = np.random.default_rng(seed)
    K = len(counts)
    xtr, ytr = rng.standard_normal((sum(counts), L, 2)), np.repeat(np.arange(K), counts)
    xte, yte = rng.standard_normal((K * n_test, L, 2)), np.repeat(np.arange(K), n_test)
    for i in shared:
        same = [k for k in shared if ytr[k] == ytr[i]]          # the shared frames of i's class, in order
        xte[np.flatnonzero(yte == ytr[i])[same.index(i)]] = xtr[i]
    for i, j in copies:
        xtr[j] = xtr[i]
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in {"X_train": xtr, "Y_train": ytr + base, "X_test": xte, "Y_test": yte + base}.items():
        np.save(folder / f"{k}_{K}Class.npy", v)
    return DataConfig(source="files", train_path=str(folder / f"X_train_{K}Class.npy"),
                      test_path=str(folder / f"X_test_{K}Class.npy"), normalize="none")


def test_cut_rule():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.integers(1, 40, rng.integers(2, 12))
        for ir in (1, 3, 10, 100):
            n, r = cut_counts(a, ir, 3)
            assert (1 <= n).all() and (n <= a).all()
            assert sorted(r) == list(range(a.size)) and n[r == 0][0] == a.max()     # the head keeps all it has
            by_rank = n[np.argsort(r)]
            assert (np.diff(by_rank) <= 0).all()                                     # n_c falls with the rank
            assert np.array_equal(by_rank, np.minimum(a[np.argsort(r)], long_tail_counts(a.max(), a.size, ir)))
        assert np.array_equal(cut_counts(a, 1, 0)[0], a)                             # IR 1 keeps every frame
    # (balanced counts give the synthetic profile and ranks; the public 70 frames at IR 1 stay 70: the notebook 05_data)


def test_holdout_counts():
    a = np.arange(1, 300)
    for f in (0.05, 0.1, 0.3, 0.5, 0.9):
        v = holdout_counts(a, f)
        assert v[0] == 0 and (v[1:] >= 1).all() and (v < a).all()
        big = a >= 2 / min(f, 1 - f)
        assert (np.abs(v - f * a)[big] <= 0.5 + 1e-9).all()                         # the share, rounded
    with pytest.raises(ValueError, match="data.val_fraction"):
        holdout_counts([4], 1.0)


def test_as_given_and_cut_on_public_files(tmp_path, capsys):
    cfg = _public(tmp_path / "pub")
    a = np.array([2, 15, 9, 4, 11, 3, 7, 8, 6, 5])
    v = holdout_counts(a, 0.1)
    b = load_data(replace(cfg, long_tail="as_given"), 0)
    assert np.array_equal(b.class_counts, a - v) and np.array_equal(np.bincount(b.val.y.numpy(), minlength=10), v)
    assert b.info["imbalance_ratio"] == pytest.approx((a - v).max() / (a - v).min()) == b.info["imbalance_ratio_trained"]
    assert b.groups == shot_groups(a - v) and b.groups["rule"] == "tertiles"
    assert b.info["class_ranks"] == count_ranks(a - v, 0).tolist() and b.test.y.numel() == 30
    assert f"long tail: as given: {(a - v).sum()} frames" in b.summary()
    # cut at IR 1 trains on the same frames; at IR 10 the head keeps all it has, no class more than it has
    b1 = load_data(replace(cfg, imbalance_ratio=1), 0)
    assert torch.equal(b1.train.x, b.train.x) and torch.equal(b1.val.x, b.val.x)
    b10 = load_data(replace(cfg, imbalance_ratio=10), 0)
    assert b10.class_counts.max() == 13 == (a - v).max() and (b10.class_counts <= a - v).all() and b10.info["n_max"] == 13
    # train and validation never share a frame; the held-out frames are a seeded draw
    tr = set(frame_hashes(b.train.x.numpy()).tolist())
    assert not tr & set(frame_hashes(b.val.x.numpy()).tolist())
    assert not torch.equal(load_data(replace(cfg, long_tail="as_given", split_seed=1), 0).val.x, b.val.x)
    # a cut that keeps less than half warns, in one line, and the note is kept
    capsys.readouterr()
    bal = _public(tmp_path / "bal", counts=(40,) * 6, L=64)
    b100 = load_data(replace(bal, imbalance_ratio=100), 0)
    out = capsys.readouterr().out
    warn = [l for l in out.splitlines() if l.startswith("[ltsei] warning:")]
    assert len(warn) == 1 and f"keeps {b100.class_counts.sum()} of the 216 training frames" in warn[0] and "as_given" in warn[0]
    assert any(n.startswith("warning: data.long_tail=cut keeps") for n in b100.info["notes"])
    capsys.readouterr()
    load_data(replace(bal, imbalance_ratio=2), 0)
    assert "warning" not in capsys.readouterr().out
    # as_given is for files
    with pytest.raises(ValueError, match="as_given is for files"):
        load_data(DataConfig(synth=SMOKE, long_tail="as_given", cache_dir=str(tmp_path / "cache")), 0)


def test_tiny_classes(tmp_path, capsys):
    # a class with a single frame keeps it for training, and says so; a class of two gives one
    b = load_data(replace(_public(tmp_path / "t", counts=(1, 2, 5)), long_tail="as_given"), 0)
    assert b.class_counts.tolist() == [1, 1, 4] and np.bincount(b.val.y.numpy(), minlength=3).tolist() == [0, 1, 1]
    assert "class [0] has a single training frame" in capsys.readouterr().out
    # no class can give a frame: a clear error
    with pytest.raises(ValueError, match="no validation frames left.*data.val_path"):
        load_data(_public(tmp_path / "one", counts=(1, 1, 1), seed=1), 0)
    # ... unless a validation file is given
    vb = load_data(replace(_public(tmp_path / "one", counts=(1, 1, 1), seed=1), val_path=str(tmp_path / "t" / "X_test_3Class.npy")), 0)
    assert vb.class_counts.tolist() == [1, 1, 1] and vb.info["val"].startswith("file ")


def test_leakage(tmp_path, capsys):
    # training frames 0 (class 0) and 3, 4 (class 1) are in the test file
    cfg = _public(tmp_path / "leak", counts=(3, 6, 5), n_test=4, shared=(0, 3, 4), copies=((6, 7),))
    with pytest.raises(ValueError, match=r"share 3 distinct frames \(3 of the 14 train frames, 3 of the 12 test frames\).*data.leakage=drop"):
        load_data(cfg, 0)
    b = load_data(replace(cfg, leakage="drop", long_tail="as_given"), 0)
    out = capsys.readouterr().out
    assert "dropped those 3 from the train data" in out and "1 extra copy of 1 frame held more than once" in out
    assert b.info["duplicates"]["train_test"] == {"distinct": 3, "in_a": 3, "in_b": 3}
    assert b.info["duplicates"]["train"]["copies"] == 1
    assert b.class_counts.sum() + b.val.y.numel() + b.info["duplicates"]["val_trained"] == 11
    h_te = frame_hashes(b.test.x.numpy())
    assert b.test.y.numel() == 12 and not np.isin(frame_hashes(b.train.x.numpy()), h_te).any()
    assert not np.isin(frame_hashes(b.val.x.numpy()), h_te).any()
    a = load_data(replace(cfg, leakage="allow", long_tail="as_given"), 0)
    assert "[ltsei] warning:" in capsys.readouterr().out and a.info["duplicates"]["train_test"]["in_b"] == 3
    assert a.class_counts.sum() > b.class_counts.sum()
    # a frame held twice with a copy on each side of the hold-out: dropped from validation, not from training
    dup = _public(tmp_path / "dup", counts=(2, 2), n_test=2, copies=((0, 1), (2, 3)))
    with pytest.raises(ValueError, match="no validation frames left"):
        load_data(dup, 0)
    # a validation file that shares frames with the test file follows data.leakage; with training: dropped from val
    vcfg = _public(tmp_path / "v", counts=(4, 4), n_test=3)
    xtr = np.load(tmp_path / "v" / "X_train_2Class.npy"); xte = np.load(tmp_path / "v" / "X_test_2Class.npy")
    np.save(tmp_path / "v" / "X_val.npy", np.stack([xtr[0], xte[0], xte[3] * 2, xtr[5] * 2]))
    np.save(tmp_path / "v" / "Y_val.npy", np.array([0, 0, 1, 1]))
    vcfg = replace(vcfg, val_path=str(tmp_path / "v" / "X_val.npy"), imbalance_ratio=1)
    with pytest.raises(ValueError, match="the val file .*X_val.npy and the test file .* share 1 distinct frames"):
        load_data(vcfg, 0)
    bv = load_data(replace(vcfg, leakage="drop"), 0)
    assert bv.val.y.tolist() == [1, 1] and bv.info["duplicates"]["val_trained"] == 1
    assert bv.class_counts.tolist() == [4, 4]


def test_frame_hashes_tell_one_float32_step():
    "(Copies, repeats and shared frames: the notebook 05_data.)"
    x = np.random.default_rng(0).standard_normal((5, 2, 8))
    y = x.copy(); y[2, 1, 7] = np.nextafter(np.float32(y[2, 1, 7]), np.float32(9), dtype=np.float32)
    assert (frame_hashes(x) != frame_hashes(y)).sum() == 1                          # one float32 step apart: different


def test_label_base(tmp_path, capsys):
    "(How `choose_label_base` decides: the notebook 05_data; here what load_data does with it.)"
    # a 0-based file lacking class 0 whose test file has it: 0-based, and class 0 cannot be trained
    cfg = _public(tmp_path / "p", counts=(0, 4, 4), n_test=2)
    with pytest.raises(ValueError, match=r"classes \[0\] have no samples in the training file"):
        load_data(cfg, 0)
    assert "label base 0: label 0 occurs (in the test file)" in capsys.readouterr().out
    # a 0-based pair that lacks class 0 in both files reads as 1-based, and says so and how to override it
    xtr = np.load(tmp_path / "p" / "X_train_3Class.npy"); ytr = np.load(tmp_path / "p" / "Y_train_3Class.npy")
    np.save(tmp_path / "p" / "Y_test_3Class.npy", np.array([1, 1, 2, 2]))
    np.save(tmp_path / "p" / "X_test_3Class.npy", np.load(tmp_path / "p" / "X_test_3Class.npy")[2:])
    b = load_data(replace(cfg, imbalance_ratio=1), 0)
    line = [l for l in capsys.readouterr().out.splitlines() if "label base" in l]
    assert len(line) == 1 and "label base 1" in line[0] and "exactly 1..2" in line[0] and "data.label_base=0" in line[0]
    assert b.num_classes == 2 and b.info["label_base"] == 1 and b.info["label_base_reason"] in line[0]
    with pytest.raises(ValueError, match="set data.label_base=1"):
        load_data(replace(cfg, label_base="0"), 0)
    assert ytr.min() == 1 and len(xtr) == 8


def test_unreadable_files_name_the_file(tmp_path):
    x, y = _frames()
    np.save(tmp_path / "X_a.npy", x.astype(np.float64)); np.save(tmp_path / "Y_a.npy", y)
    good = (tmp_path / "X_a.npy").read_bytes()
    cfg = DataConfig(source="files", train_path=str(tmp_path / "X_a.npy"), test_path=str(tmp_path / "X_a.npy"), leakage="allow")
    # (a truncated .npy, an empty one, half a header, a pickled object array, a broken .npz: the notebook 05_data)
    cases = [(b"\x93NUMPY garbage" * 10, "X_a.npy: not a readable .npy file")]
    for data, msg in cases:
        (tmp_path / "X_a.npy").write_bytes(data)
        with pytest.raises(ValueError, match=msg):
            load_data(cfg, 0)
    (tmp_path / "X_a.npy").write_bytes(good)
    load_data(cfg, 0)
    # a truncated label file names the label file
    yb = (tmp_path / "Y_a.npy").read_bytes()
    (tmp_path / "Y_a.npy").write_bytes(yb[:-20])
    with pytest.raises(ValueError, match="Y_a.npy: truncated"):
        load_data(cfg, 0)
    np.save(tmp_path / "Y_a.npy", y[:-1])
    with pytest.raises(ValueError, match=r"X_a.npy \(train split, labels .*Y_a.npy\): signals and labels differ in length"):
        load_data(cfg, 0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"] = x; f["y"] = y
    (tmp_path / "d.h5").write_bytes((tmp_path / "d.h5").read_bytes()[:1000])
    with pytest.raises(ValueError, match="d.h5: could not read"):
        load_data(replace(cfg, train_path=str(tmp_path / "d.h5")), 0)
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="e.npz: the file is empty"):
        load_data(replace(cfg, train_path=str(tmp_path / "e.npz")), 0)


def test_check_data_config():
    check_data_config(DataConfig())
    oc = OmegaConf.structured(DataConfig(source="files", train_path="a.npy", test_path="b.npy", long_tail="as_given"))
    oc.label_base = 1                                          # an override data.label_base=1 arrives as "1"
    check_data_config(oc)
    bad = [({"imbalance_ratio": 0.5}, "data.imbalance_ratio=0.5"), ({"imbalance_ratio": float("nan")}, "data.imbalance_ratio=nan"),
           ({"val_fraction": 0.0}, "data.val_fraction=0.0"), ({"val_fraction": 1}, "data.val_fraction=1"),
           ({"long_tail": "trim"}, "data.long_tail='trim'"), ({"leakage": "warn"}, "data.leakage='warn'"),
           ({"label_base": "2"}, "data.label_base='2'"), ({"layout": "LNC"}, "data.layout='LNC'"),
           ({"source": "web"}, "data.source='web'"), ({"normalize": "max"}, "data.normalize='max'"),
           ({"batch_size": 0}, "data.batch_size=0"), ({"batch_size": True}, "data.batch_size=True"),
           ({"target_length": -3}, "data.target_length=-3"), ({"split_seed": -1}, "data.split_seed=-1"),
           ({"cache_dir": ""}, "data.cache_dir=''"), ({"train_path": 3}, "data.train_path=3"),
           ({"long_tail": "as_given"}, "as_given is for files"),
           ({"source": "files", "train_path": "a.npy"}, "data.test_path is required"),
           ({"synth": replace(SMOKE, num_emitters=1)}, "data.synth.num_emitters=1")]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            check_data_config(DataConfig(**kw))
