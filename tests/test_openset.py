"""Unknown emitters (open set), accuracy against SNR, the harmonic mean and the saved training indices: one short
smoke-scale open-set training (its held-out emitters are told apart, copies of known emitters are not), per-frame
SNR for synthetic data and for files."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsei.experiments.config import ConfigError, compose_config
from ltsei.signals.data import DataConfig, load_data, hold_out_unknown, to_split
from ltsei.learn.models import create_model
from ltsei.learn.openset import ScoringModel, score_openset
from ltsei.experiments.run import load_stage1_checkpoint, run_experiment
from ltsei.signals.synth import SYNTH_PRESETS, as_synth_config, generate_split, make_fingerprints, synth_frames, synth_main
from ltsei.learn.train import Runtime
from conftest import SMALL

CPU = Runtime(torch.device("cpu"), None, False)


# The feature-level check of the scores (Gaussian classes, far unknowns and copies of known ones) is the
# teaching case of nbs/15_openset.ipynb ("A check on features"); it is not repeated here.


def test_openset_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown_fraction"):
        compose_config(["profile=smoke", "openset.enabled=true", "openset.unknown_fraction=1.5"])
    with pytest.raises(ConfigError, match="at least 2"):       # 6 emitters: 5 held out leaves 1
        compose_config(["profile=smoke", "openset.enabled=true", "openset.unknown_fraction=0.8"])
    compose_config(["profile=smoke", "openset.unknown_fraction=0.8"])   # not enabled: not checked


def test_openset_smoke_run(in_scratch):
    """One short training (smoke on the smaller pool of conftest.SMALL, IR 1, CE, 4 known emitters): metrics.json holds the open-set section, the SNR
    curve, the harmonic mean and the training indices; the held-out emitters score well above 0.5, frames made
    with the known emitters' own fingerprints about 0.5."""
    cfg = compose_config(["profile=smoke", *SMALL, "openset.enabled=true", "openset.unknown_fraction=0.34",
                          "stage2.enabled=false", "data.imbalance_ratio=1"])
    out = in_scratch / "r_openset"
    m = run_experiment(cfg, out, progress=False)
    o = m["openset"]
    assert len(o["unknown_classes"]) == 2 and len(o["known_classes"]) == 4 and o["n_unknown_test"] == 40
    assert o["closed_set_acc"] == pytest.approx(m["test"]["acc"])        # scored on the classifier that was measured
    assert len(m["class_counts"]) == 4 and 0 <= m["test"]["hmean"] <= 1
    best = max(v["auroc"] for v in o["scores"].values())
    assert best > 0.65, o["scores"]
    for v in o["scores"].values():
        assert 0 <= v["fpr_at_tpr"] <= 1 and 0 <= v["oscr"] <= o["closed_set_acc"] + 1e-9
    z = np.load(out / "openset_scores.npz")
    assert z["known_msp"].shape == (80,) and z["unknown_msp"].shape == (40,)
    # training indices: the file, its sha256, and the pool rows of the known emitters
    idx = np.load(out / "train_indices.npy")
    assert m["train_indices"]["sha256"] == hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest()
    P = cfg.data.synth.pool_per_class
    assert sorted(set((idx // P).tolist())) == o["known_classes"] and idx.size == sum(m["class_counts"])
    # accuracy against SNR on the known test frames
    s = m["snr"]
    assert sum(s["count"]) == 80 and s["edges"][0] <= 25.0 and s["edges"][-1] >= 35.0
    # copies: fresh frames of every known emitter's own fingerprint are not told apart from the known test frames
    data = hold_out_unknown(load_data(cfg.data, 0), o["unknown_classes"])
    model = create_model(cfg.model.name, data.num_classes, data.length, cfg.model)
    load_stage1_checkpoint(out / "checkpoints" / "stage1_best.pt", model)
    sc = as_synth_config(cfg.data.synth)
    fp, rng = make_fingerprints(sc), np.random.default_rng(12345)
    x = np.concatenate([synth_frames(sc, fp.loc[c].to_dict(), 40, rng)[0] for c in o["known_classes"]])
    data.unknown = to_split(x, np.repeat(o["known_classes"], 40), "power")
    copies, _ = score_openset(ScoringModel(model), data, cfg.openset, 256, CPU)
    for k, v in copies["scores"].items():
        assert abs(v["auroc"] - 0.5) < 0.15, (k, copies["scores"])


def test_synthetic_snr_leaves_the_frames_unchanged():
    S = SYNTH_PRESETS["smoke"]
    x, y, b = generate_split(S, "test")
    x2, y2, b2, snr = generate_split(S, "test", with_snr=True)
    assert np.array_equal(x, x2) and np.array_equal(b, b2)
    assert snr.shape == y.shape and S.snr_db_min <= snr.min() and snr.max() <= S.snr_db_max


def test_files_snr_table_and_train_indices(tmp_path):
    synth_main(["--out", str(tmp_path / "f"), "--preset", "smoke", "--workers", "1", "--quiet"])
    n_test = SYNTH_PRESETS["smoke"].num_emitters * SYNTH_PRESETS["smoke"].test_per_class
    snr = np.linspace(0, 30, n_test)
    (tmp_path / "f" / "frames.csv").write_text("snr_db\n" + "\n".join(f"{v:.3f}" for v in snr) + "\n")
    d = DataConfig(source="files", train_path=str(tmp_path / "f" / "X_train.npy"), val_path=str(tmp_path / "f" / "X_val.npy"),
                   test_path=str(tmp_path / "f" / "X_test.npy"), imbalance_ratio=10, cache_dir=str(tmp_path / "c"))
    b = load_data(d, 0)
    np.testing.assert_allclose(b.test_snr, snr, atol=1e-3)
    xtr = np.load(tmp_path / "f" / "X_train.npy", mmap_mode="r")
    i = b.train_indices[[0, -1]]
    np.testing.assert_allclose(b.train.x[[0, -1]].numpy(), to_split(np.asarray(xtr[i]).transpose(0, 2, 1), np.zeros(2, int), "power").x.numpy(), rtol=1e-6)
    (tmp_path / "f" / "frames.csv").write_text("snr_db\n1\n")
    with pytest.raises(ValueError, match="one row per frame"):
        load_data(d, 0)
