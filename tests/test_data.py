"""Splits, file readers and tensors of ltsei.data; every bad input gets one clear error."""
import json
from dataclasses import replace

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from omegaconf import OmegaConf

from ltsei.data import (DataConfig, class_ranks, load_data, long_tail_class_counts, long_tail_counts, read_xy,
                        save_class_counts, shot_groups, to_ncl)
from ltsei.synth import SYNTH_PRESETS, SynthConfig, load_synth, synth_main

SMOKE = SYNTH_PRESETS["smoke"]


def test_long_tail_counts():
    n = long_tail_counts(500, 60, 100)
    assert n[0] == 500 and n[-1] == 5 and (np.diff(n) <= 0).all()
    assert np.array_equal(long_tail_counts(300, 20, 1), np.full(20, 300))
    assert long_tail_counts(10, 5, 1000).min() == 1
    assert np.array_equal(long_tail_counts(7, 1, 100), [7])
    i = np.arange(20)
    assert np.array_equal(long_tail_counts(300, 20, 50), np.floor(300 * 50.0 ** (-i / 19) + 1e-9).astype(int))
    for bad in (0.99, 0, -1):
        with pytest.raises(ValueError, match="imbalance_ratio"):
            long_tail_counts(300, 20, bad)
    r = class_ranks(20, 5)
    assert sorted(r) == list(range(20)) and np.array_equal(r, class_ranks(20, 5))
    c = long_tail_class_counts(300, 20, 100, 5)
    assert np.array_equal(c, long_tail_counts(300, 20, 100)[r])


def test_shot_groups():
    g = shot_groups([500, 150, 101, 100, 20, 19, 1])
    assert g == {"many": [0, 1, 2], "medium": [3, 4], "few": [5, 6], "rule": "thresholds"}
    g = shot_groups([100, 3, 50, 50, 9, 70, 1])  # max <= 100: tertiles by rank, ties by label
    assert g["rule"] == "tertiles" and g["many"] == [0, 2, 5] and g["medium"] == [3, 4] and g["few"] == [1, 6]
    g = shot_groups([5, 5])
    assert g["many"] == [0] and g["medium"] == [1] and g["few"] == []
    with pytest.raises(ValueError):
        shot_groups([])


def _cfg(tmp_path, **kw):
    return DataConfig(synth=SMOKE, cache_dir=str(tmp_path / "cache"), **kw)


def test_synthetic_bundle(tmp_path):
    b = load_data(_cfg(tmp_path, imbalance_ratio=10), seed=0)
    assert b.num_classes == 6 and b.sample_rate == 10e6 and b.length == 960
    for s, n in ((b.train, 100), (b.val, 36), (b.test, 36)):
        assert s.x.shape == (n, 2, 960) and s.x.dtype == torch.float32 and s.x.is_contiguous()
        assert s.y.dtype == torch.int64 and s.y.shape == (n,)
        assert torch.allclose(s.x.pow(2).sum(1).mean(1), torch.ones(n), atol=1e-4)
    assert np.array_equal(np.bincount(b.train.y.numpy()), b.class_counts)
    assert np.array_equal(b.class_counts, long_tail_class_counts(40, 6, 10, 0))
    assert (np.bincount(b.val.y.numpy()) == 6).all() and (np.bincount(b.test.y.numpy()) == 6).all()
    assert b.groups == shot_groups(b.class_counts)
    assert b.info["source"] == "synthetic" and b.info["cache_key"] in b.info["cache_path"]
    text = b.summary()
    assert "6 classes" in text and "train" in text and "tertiles" in text
    # the data do not depend on the run seed; another split_seed moves the head
    b2 = load_data(_cfg(tmp_path, imbalance_ratio=10), seed=7)
    assert torch.equal(b.train.x, b2.train.x) and torch.equal(b.test.x, b2.test.x)
    b3 = load_data(_cfg(tmp_path, imbalance_ratio=10, split_seed=1), seed=0)
    assert not np.array_equal(b3.class_counts, b.class_counts)
    # IR 1 is balanced and holds every IR-10 training frame (class c keeps the first n_c of its pool)
    b1 = load_data(_cfg(tmp_path, imbalance_ratio=1, normalize="none"), seed=0)
    assert (b1.class_counts == 40).all()
    s = load_synth(SMOKE, tmp_path / "cache")
    assert torch.equal(b1.train.x, torch.from_numpy(s.x("pool").astype(np.float32)))
    save_class_counts(b, tmp_path / "out" / "counts.json")
    d = json.loads((tmp_path / "out" / "counts.json").read_text())
    assert d["class_counts"] == b.class_counts.tolist() and d["groups"] == b.groups


def test_target_length_and_omegaconf(tmp_path):
    crop = load_data(_cfg(tmp_path, target_length=800, normalize="none"), 0)
    pad = load_data(_cfg(tmp_path, target_length=1000, normalize="none"), 0)
    full = load_data(_cfg(tmp_path, normalize="none"), 0)
    assert crop.length == 800 and pad.length == 1000
    assert torch.equal(crop.test.x, full.test.x[..., :800])
    assert torch.equal(pad.test.x[..., :960], full.test.x) and (pad.test.x[..., 960:] == 0).all()
    oc = OmegaConf.structured(_cfg(tmp_path, imbalance_ratio=10))
    assert torch.equal(load_data(oc, 0).train.x, load_data(_cfg(tmp_path, imbalance_ratio=10), 0).train.x)


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_synth_main_round_trip(tmp_path, fmt):
    out = tmp_path / "files"
    assert synth_main(["--out", str(out), "--preset", "smoke", "--format", fmt, "--workers", "1"]) == 0
    if fmt == "npy":
        paths = {k: str(out / f"X_{k}.npy") for k in ("train", "val", "test")}
    else:
        paths = {k: str(out / "data.npz") for k in ("train", "val", "test")}
    cfg = DataConfig(source="files", train_path=paths["train"], val_path=paths["val"], test_path=paths["test"],
                     imbalance_ratio=1, normalize="none")
    b = load_data(cfg, 0)
    s = load_synth(SMOKE, tmp_path / "cache", workers=1, progress=False)
    for name, split in (("train", "pool"), ("val", "val"), ("test", "test")):
        got = getattr(b, name)
        assert torch.equal(got.x, torch.from_numpy(s.x(split).astype(np.float32))), name
        assert torch.equal(got.y, torch.from_numpy(s.y(split))), name
    assert b.sample_rate == 10e6 and b.num_classes == 6 and b.info["label_base"] == 0
    # the public files' naming (X_train_6Class.npy + Y_train_6Class.npy) and a stratified validation hold-out
    if fmt == "npy":
        for k in ("train", "test"):
            (out / f"X_{k}_6Class.npy").write_bytes((out / f"X_{k}.npy").read_bytes())
            (out / f"Y_{k}_6Class.npy").write_bytes((out / f"Y_{k}.npy").read_bytes())
        c2 = DataConfig(source="files", train_path=str(out / "X_train_6Class.npy"), test_path=str(out / "X_test_6Class.npy"),
                        val_per_class=10, imbalance_ratio=10)
        b2 = load_data(c2, 0)
        assert (np.bincount(b2.val.y.numpy()) == 10).all()
        assert np.array_equal(b2.class_counts, long_tail_class_counts(30, 6, 10, 0))
        assert b2.info["n_max"] == 30
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
    cfg = DataConfig(source="files", train_path=str(p), test_path=str(p), val_per_class=2, imbalance_ratio=1, normalize="none")
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
                             val_per_class=2, imbalance_ratio=1, normalize="none"), 0)
    assert torch.allclose(b.test.x, torch.from_numpy(x.transpose(0, 2, 1)))
    # (2, 2, N) fits two layouts: auto refuses, an explicit layout works
    x2 = np.random.default_rng(0).standard_normal((12, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "amb.npz", x=x2, y=np.repeat(np.arange(3), 4))
    cfg = DataConfig(source="files", train_path=str(tmp_path / "amb.npz"), test_path=str(tmp_path / "amb.npz"),
                     val_per_class=1, imbalance_ratio=1, normalize="none")
    with pytest.raises(ValueError, match="fits several layouts"):
        load_data(cfg, 0)
    b = load_data(replace(cfg, layout="NCL"), 0)
    assert torch.equal(b.test.x, torch.from_numpy(x2))
    # label_base "0" on 0-based labels; "1" forced on 0-based labels is an error naming the label
    np.savez(tmp_path / "z.npz", X=x, Y=y)
    c0 = DataConfig(source="files", train_path=str(tmp_path / "z.npz"), test_path=str(tmp_path / "z.npz"), val_per_class=2)
    assert load_data(replace(c0, label_base="0"), 0).info["label_base"] == 0
    with pytest.raises(ValueError, match="below the label base 1"):
        load_data(replace(c0, label_base="1"), 0)


# ---- every bad input: one clear error naming the file/key/setting, and no cache entry left behind ----

def _bad(tmp_path, name, X, Y):
    p = tmp_path / f"X_{name}.npy"
    np.save(p, X); np.save(tmp_path / f"Y_{name}.npy", Y)
    return DataConfig(source="files", train_path=str(p), test_path=str(p), val_per_class=1, cache_dir=str(tmp_path / "cache"))


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
    nan = x.copy(); nan[5, 3, 1] = np.nan
    cases.append((_bad(tmp_path, "nan", nan, y), ValueError, "NaN or inf"))
    inf = x.copy(); inf[7, 0, 0] = np.inf
    cases.append((_bad(tmp_path, "inf", inf, y), ValueError, "first is frame 7"))
    cases.append((_bad(tmp_path, "len", x, y[:-1]), ValueError, "differ in length"))
    cases.append((_bad(tmp_path, "frac", x, y + 0.5), ValueError, "whole numbers"))
    cases.append((_bad(tmp_path, "ystr", x, np.array(["a"] * 24)), ValueError, "expected integers"))
    cases.append((_bad(tmp_path, "gap", x, np.where(y == 1, 2, y)), ValueError, r"classes \[1\] have no samples"))
    cases.append((_bad(tmp_path, "neg", x, y - 1), ValueError, "below the label base"))
    cases.append((_bad(tmp_path, "empty", x[:0], y[:0]), ValueError, "no samples"))
    ok = _bad(tmp_path, "ok", x, y)
    cases.append((replace(ok, val_per_class=8), ValueError, "data.val_per_class=8"))
    cases.append((replace(ok, imbalance_ratio=0.5), ValueError, "data.imbalance_ratio=0.5"))
    cases.append((replace(ok, target_length=0), ValueError, "data.target_length=0"))
    cases.append((replace(ok, target_length=-3), ValueError, "data.target_length=-3"))
    cases.append((replace(ok, layout="LNC"), ValueError, "data.layout='LNC'"))
    cases.append((replace(ok, layout="CLN"), ValueError, "does not fit data.layout=CLN"))
    cases.append((replace(ok, label_base="2"), ValueError, "data.label_base='2'"))
    cases.append((replace(ok, normalize="max"), ValueError, "data.normalize='max'"))
    cases.append((replace(ok, test_path=None), ValueError, "data.test_path is required"))
    cases.append((replace(ok, train_path=None), ValueError, "data.train_path is required"))
    cases.append((replace(ok, source="web"), ValueError, "data.source='web'"))
    np.savez(tmp_path / "keys.npz", signal_matrix=x, y=y)
    cases.append((replace(ok, train_path=str(tmp_path / "keys.npz")), ValueError, r"holds keys \['signal_matrix', 'y'\]"))
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
