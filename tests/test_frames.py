"""`ltsei frames`: from an SDR recording to a data set labelled by ICAO address (nbs/07_frames.ipynb)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyModeS
import pytest

import ltsei.signals.frames as F
from ltsei.cli import main
from ltsei.signals.frames import FramesConfig, frames_main, open_recording, scan, select_frames, synth_recording, write_iq

MODES1 = Path(__file__).parent / "data" / "dump1090-modes1" / "modes1.bin"


def run(tmp, *args, name="out"):
    out = tmp / name
    assert frames_main([str(a) for a in args] + ["--out", str(out)]) == 0
    return out, pd.read_csv(out / "frames.csv", dtype={"icao": str, "msg": str})


@pytest.fixture(scope="module")
def modes1(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes1")
    return {"17": run(tmp, MODES1, "--sample-rate", "2e6", name="df17"),
            "all": run(tmp, MODES1, "--sample-rate", "2e6", "--df", "all", name="all")}


def test_modes1_df17(modes1):
    out, f = modes1["17"]
    assert len(f) >= 141 and set(f.df) == {17} and set(f.icao) == {"4D2023"} and (f.crc == "ok").all()
    X, Y = np.load(out / "X.npy"), np.load(out / "Y.npy")
    assert X.shape == (len(f), 256, 2) and X.dtype == np.float32 and (Y == 0).all()
    em = pd.read_csv(out / "emitters.csv", dtype={"icao": str})
    assert em.to_dict("list")["icao"] == ["4D2023"] and em.frames[0] == len(f)
    assert json.loads((out / "meta.json").read_text())["sample_rate"] == 2e6
    ann = json.loads((out / "modes1.sigmf-meta").read_text())
    assert len(ann["annotations"]) == len(f) and ann["global"]["core:datatype"] == "cu8"
    from sigmf import validate
    validate.validate(ann)                                      # raises on a file SigMF tools would refuse
    assert (out / "long_tail.png").stat().st_size > 0 and "frames of 1 aircraft" in (out / "summary.txt").read_text()


def test_modes1_every_reply_agrees_with_pymodes(modes1):
    "(256 replies of one aircraft, each read by pyModeS as the same DF and address: the notebook 07_frames.)"
    _, f = modes1["all"]
    n = f.df.value_counts()
    assert n[17] >= 141 and n[11] >= 73 and n[[0, 4, 5, 20, 21]].sum() >= 42
    for msg in f.msg[f.df == 17]:
        d = pyModeS.decode(msg)
        assert d["crc_valid"] is True and d["typecode"] == int(msg[8:10], 16) >> 3


def test_fix_1bit_flags_what_it_repairs(tmp_path):
    _, f = run(tmp_path, MODES1, "--sample-rate", "2e6", "--fix-1bit")
    assert len(f) >= 141 and set(f.icao) == {"4D2023"} and (f.corrected == (f.crc == "fixed")).all()


# (each raw format written and read back, its magnitude and its guessed format: the notebook 07_frames)


def test_sigmf_recording_gives_the_same_frames(tmp_path, modes1):
    from sigmf import SigMFFile
    (tmp_path / "rec.sigmf-data").write_bytes(MODES1.read_bytes())
    SigMFFile(data_file=str(tmp_path / "rec.sigmf-data"),
              global_info={"core:datatype": "cu8", "core:sample_rate": 2e6}).tofile(str(tmp_path / "rec.sigmf-meta"))
    _, f = run(tmp_path, tmp_path / "rec.sigmf-meta", "--format", "sigmf")
    assert f.msg.tolist() == modes1["17"][1].msg.tolist()


def test_chunk_edges_each_frame_once():
    sig, truth = synth_recording(8e6, 0.06, num_emitters=3, frames=20, snr_db=(20, 30), overlaps=0,
                                 edges=[1 << 16, 3 << 16, 5 << 16], seed=3)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        write_iq(Path(d) / "s", sig, "cf32")
        rec = open_recording(Path(d) / "s", "cf32", 8e6)
        small = scan(rec, FramesConfig(chunk=1 << 16))
        big = scan(rec, FramesConfig(chunk=1 << 22))
    start, edges = (truth.time_s * 8e6).to_numpy()[:, None], np.array([1 << 16, 3 << 16, 5 << 16])
    edge = truth.msg[((start < edges) & (start + 960 > edges)).any(1)]     # a reply lasts 120 us = 960 samples
    msgs = select_frames(small.assign(file=0)).msg
    assert len(edge) == 3 and all((msgs == m).sum() == 1 for m in edge)
    assert len(small) == len(big) and (small.hi == big.hi).all() and np.allclose(small.time_s, big.time_s)


def recall(fs, seconds, frames, seed):
    sig, truth = synth_recording(fs, seconds, num_emitters=8, frames=frames, snr_db=(4, 30), overlaps=3,
                                 edges=[1 << 16], seed=seed)
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        write_iq(Path(d) / "s", sig, "cf32")
        f = select_frames(scan(open_recording(Path(d) / "s", "cf32", fs), FramesConfig(chunk=1 << 16)).assign(file=0))
    j = np.abs(f.time_s.to_numpy()[:, None] - truth.time_s.to_numpy()[None, :]).argmin(1)
    near = np.abs(f.time_s.to_numpy() - truth.time_s.to_numpy()[j]) < 1e-6
    assert near.all() and (f.icao.to_numpy() == truth.icao.to_numpy()[j]).all()      # no frame with a wrong address
    truth["found"] = np.isin(np.arange(len(truth)), j)
    return truth


@pytest.mark.parametrize("fs,seconds,frames,snr", [(2e6, 0.3, 150, 18.0), (8e6, 0.1, 120, 10.0), (50e6, 0.03, 50, 10.0)])
def test_synthetic_recording_recall(fs, seconds, frames, snr):
    """>= 99 % of the frames above `snr` dB come back with the right address (2 MS/s: from 18 dB, see the notebook:
    one sample per chip loses about a third of the frames at 10 dB by noise alone), the stronger frame of each
    overlapping pair too, and no frame carries a wrong address."""
    t = recall(fs, seconds, frames, seed=int(fs) % 97)
    clear = t[~t.overlapped & (t.snr_db > snr)]
    assert clear.found.mean() >= 0.99, clear[~clear.found]
    strong = t.loc[t.index[t.overlapped] + 1]                  # the frame that starts inside each weaker one
    assert strong[strong.snr_db > snr].found.all()


def test_min_frames_split_target_rate_duplicates(tmp_path):
    sig, truth = synth_recording(8e6, 0.08, num_emitters=6, frames=60, snr_db=(20, 30), overlaps=0, seed=5)
    write_iq(tmp_path / "s.cs16", sig * 0.05, "cs16")
    out, f = run(tmp_path, tmp_path / "s.cs16", tmp_path / "s.cs16", "--format", "cs16", "--sample-rate", "8e6",
                 "--min-frames", "3", "--split", "--target-rate", "4e6")
    counts = truth.icao.value_counts()
    assert set(f.icao) == set(counts.index[counts >= 3]) and len(f) == counts[counts >= 3].sum()   # the copy: removed
    assert "dropped %d exact duplicates" % len(truth) in (out / "summary.txt").read_text()
    Xtr, Xte = np.load(out / "X_train.npy"), np.load(out / "X_test.npy")
    assert Xtr.shape[1:] == (512, 2) and len(Xtr) + len(Xte) == len(f)
    assert not ({x.tobytes() for x in Xtr} & {x.tobytes() for x in Xte})
    for _, g in f[f.split == "test"].groupby("label"):
        assert f[(f.label == g.label.iloc[0]) & (f.split == "train")].time_s.max() < g.time_s.min()
    em = pd.read_csv(out / "emitters.csv")
    assert em.frames.is_monotonic_decreasing and (np.load(out / "Y_train.npy") < len(em)).all()
    from ltsei.signals.data import DataConfig, load_data                 # it trains as it is: data.source=files reads it
    b = load_data(DataConfig(source="files", train_path=str(out / "X_train.npy"), test_path=str(out / "X_test.npy"),
                             long_tail="as_given"), 0)
    assert (b.num_classes, b.sample_rate, b.length) == (len(em), 4e6, 512)


def _bad(tmp_path, capsys, args, contains):
    out = tmp_path / "bad"
    assert main(["frames", *map(str, args), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and contains in err[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.")]


def test_bad_inputs_one_line_nothing_written(tmp_path, capsys):
    "(An odd byte count, an empty file, a cs16 file read as u8, SigMF without a rate, no --sample-rate: the notebook 07_frames.)"
    (tmp_path / "short.bin").write_bytes(MODES1.read_bytes()[:200])
    _bad(tmp_path, capsys, [tmp_path / "short.bin", "--sample-rate", "2e6"], "shorter than one window")
    z = np.zeros(100000, np.complex64); z[5000] = np.nan
    write_iq(tmp_path / "nan.cf32", z, "cf32")
    _bad(tmp_path, capsys, [tmp_path / "nan.cf32", "--format", "cf32", "--sample-rate", "2e6"], "sample 5000 is not finite")


def test_interrupt_leaves_the_old_output(tmp_path, monkeypatch, capsys):
    out, f = run(tmp_path, MODES1, "--sample-rate", "2e6")
    before = sorted(p.name for p in out.iterdir())
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(F, "plot_long_tail", boom)           # late in the writing: most files exist in the stage
    assert main(["frames", str(MODES1), "--sample-rate", "2e6", "--df", "all", "--out", str(out)]) == 130
    assert sorted(p.name for p in out.iterdir()) == before and len(pd.read_csv(out / "frames.csv")) == len(f)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_dc_offset_is_removed(tmp_path):
    "A zero-IF receiver's DC offset (here 3x the noise amplitude) would hide the weaker pulses: every frame above 10 dB is found."
    sig, truth = synth_recording(8e6, 0.08, num_emitters=4, frames=40, snr_db=(10, 30), overlaps=0, seed=4)
    write_iq(tmp_path / "dc.cs16", (sig + np.complex64(3 * np.exp(0.7j))) * 0.01, "cs16")
    f = select_frames(scan(open_recording(tmp_path / "dc.cs16", "cs16", 8e6), FramesConfig()).assign(file=0))
    assert set(f.msg) == set(truth.msg)
