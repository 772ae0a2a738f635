"""The README's recipe for the public ADS-B data set's files (X_train_{K}Class.npy and siblings), run through
`python main.py` on small files written in exactly that naming and layout: X (N, 4800, 2) float64 with I and Q
in the last axis, Y (N,) integers from 0; a few to a dozen frames per class, and test frames that are copies
of training frames, as the public subsets share frames."""
import json

import numpy as np
import pytest

from ltsei.cli import guide_main
from ltsei.signals.data import holdout_counts

K, L = 10, 4800
TRAIN = np.array([2, 15, 9, 4, 11, 3, 7, 8, 6, 5])   # frames per class, 70 in all
N_TEST = 3
SHARED = (0, 2, 17, 26)                               # training frames (classes 0, 1, 2, 3) copied into the test file

# The README's recipe, with the folder of the files in {d}
RECIPE = ("data.source=files data.train_path={d}/X_train_10Class.npy data.test_path={d}/X_test_10Class.npy "
          "data.long_tail=as_given data.leakage=drop")


def write_public_files(folder):
    "Frames with a per-class carrier offset in noise (so the classes differ), in the public files' naming and layout."
    rng = np.random.default_rng(0)
    t = np.arange(L) / 50e6
    def frames(y):
        f = 0.2e6 + 0.1e6 * y[:, None]                                # carrier offset per class
        z = np.exp(2j * np.pi * f * t + 1j * rng.uniform(0, 2 * np.pi, (len(y), 1)))
        z += 0.3 * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
        return np.stack([z.real, z.imag], axis=-1)                    # (N, 4800, 2) float64
    ytr, yte = np.repeat(np.arange(K), TRAIN), np.repeat(np.arange(K), N_TEST)
    xtr, xte = frames(ytr), frames(yte)
    for i in SHARED:
        xte[np.flatnonzero(yte == ytr[i])[0]] = xtr[i]
    folder.mkdir()
    for name, a in {"X_train": xtr, "Y_train": ytr, "X_test": xte, "Y_test": yte}.items():
        np.save(folder / f"{name}_{K}Class.npy", a)
    assert xtr.shape == (70, 4800, 2) and xtr.dtype == np.float64 and ytr.dtype.kind == "i" and ytr.min() == 0


@pytest.fixture()
def public(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                       # runs/cache/... inside tmp_path
    write_public_files(tmp_path / "adsb")
    return tmp_path


def test_recipe_runs_to_metrics(public, capsys):
    out = public / "run"
    argv = RECIPE.format(d=public / "adsb").split() + ["profile=smoke", "training.num_threads=1", f"hydra.run.dir={out}",
                                                     "training.epochs=150"]   # one smoke epoch: the data's handling is under test
    assert guide_main(argv) == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    left = TRAIN - np.bincount(np.repeat(np.arange(K), TRAIN)[list(SHARED)], minlength=K)   # the shared frames dropped
    assert m["class_counts"] == (left - holdout_counts(left, 0.1)).tolist()   # as given, minus the hold-out
    assert m["test"]["per_class_support"] == [N_TEST] * K                   # the test file as given
    assert sum(m["val"]["per_class_support"]) == holdout_counts(left, 0.1).sum()
    assert m["groups"]["rule"] == "tertiles" and sorted(m["groups"]["many"] + m["groups"]["medium"] + m["groups"]["few"]) == list(range(K))
    d = m["data"]
    assert d["label_base"] == 0 and d["long_tail"] == "as_given" and d["sample_rate_source"].startswith("assumed")
    assert d["duplicates"]["train_test"] == {"distinct": 4, "in_a": 4, "in_b": 4}
    assert 0.0 <= m["test"]["acc"] <= 1.0
    printed = capsys.readouterr().out
    assert "[ltsei] data: label base 0: label 0 occurs" in printed and "dropped those 4 from the train data" in printed


def test_recipe_without_a_leakage_choice_stops_before_work(public, capsys):
    out = public / "leak"
    argv = RECIPE.format(d=public / "adsb").replace(" data.leakage=drop", "").split() + ["profile=smoke", f"hydra.run.dir={out}"]
    assert guide_main(argv) == 2
    err = capsys.readouterr().err
    assert "share 4 distinct frames (4 of the 70 train frames, 4 of the 30 test frames)" in err and "data.leakage=drop" in err
    assert not (out / "metrics.json").exists() and not (public / "runs" / "cache" / "stage1").exists()
