"""The synthetic emitter data set: fingerprints, frames, determinism, the on-disk cache, `ltsei synth`."""
import json
from dataclasses import replace

import numpy as np
import pyModeS
import pytest
from omegaconf import OmegaConf

import ltsei.signals.synth as synth
from ltsei.signals.adsb import bits_to_hex, demodulate, envelope
from ltsei.signals.synth import (SYNTH_PRESETS, SynthConfig, check_synth_config, estimate_cfo, generate_split,
                         load_synth, make_fingerprints, synth_frames, synth_key, synth_main)

SMOKE = SYNTH_PRESETS["smoke"]
# the smoke preset with conftest.SMALL's pool (200 frames per emitter, not 700): for the tests of how the cache handles an
# interrupted or stale generation, which need a generation, not the smoke preset's bytes (test_cache_reuse checks those)
SMOKE_SMALL = replace(SMOKE, pool_per_class=200)


def test_presets_and_checks():
    assert SYNTH_PRESETS["paper"] == SynthConfig()
    q = SYNTH_PRESETS["quick"]
    # the quick frames hold the whole 96 us (preamble + 88 bits) and fit every backbone
    assert q.length >= round(96e-6 * q.sample_rate) and q.num_emitters == 20
    from ltsei.learn.models import MODELS, ModelConfig, create_model
    for name in MODELS: create_model(name, q.num_emitters, q.length, ModelConfig(name=name))
    # the smoke frames fit every backbone too
    for name in MODELS: create_model(name, SMOKE.num_emitters, SMOKE.length, ModelConfig(name=name))
    # (length=0 and rx_filter="sinc": the notebook 04_synth)
    for bad, field in [(dict(num_emitters=1), "num_emitters"), (dict(length=-5), "length"),
                       (dict(sample_rate=1e6), "sample_rate"), (dict(pool_per_class=0), "pool_per_class"),
                       (dict(snr_db_min=30, snr_db_max=10), "snr_db_max"), (dict(difficulty=0), "difficulty"),
                       (dict(icao_mode="fixed"), "icao_mode"), (dict(length=50), "length"),
                       (dict(rx_bandwidth=0.5e6), "rx_bandwidth"), (dict(rx_bandwidth=float("nan")), "rx_bandwidth"),
                       (dict(rx_transition=0.0), "rx_transition"),
                       (dict(analog_rate=1e6), "analog_rate"), (dict(clock_ppm=-1.0), "clock_ppm"), (dict(adc_bits=1), "adc_bits"),
                       (dict(cfo_drift_hz=float("nan")), "cfo_drift_hz"), (dict(overlap_prob=1.5), "overlap_prob")]:
        with pytest.raises(ValueError, match=f"synth.{field}"):
            check_synth_config(replace(SMOKE, **bad))


def test_fingerprints():
    a, b = make_fingerprints(SYNTH_PRESETS["quick"]), make_fingerprints(SYNTH_PRESETS["quick"])
    assert a.equals(b)
    assert not a.equals(make_fingerprints(replace(SYNTH_PRESETS["quick"], seed=1)))
    assert (a["rise_time"] <= 100e-9).all() and (a["fall_time"] <= 200e-9).all() and (a["width_offset"].abs() <= 50e-9).all()
    assert a["ring_zeta"].between(0.2, 0.95).all() and (a["ring_freq"] > 0).all()
    # the carrier offset follows the measured statistics, whatever the difficulty; the rest moves closer
    many = replace(SynthConfig(), num_emitters=400)
    easy, hard = make_fingerprints(replace(many, difficulty=0.5)), make_fingerprints(replace(many, difficulty=4.0))
    assert np.array_equal(easy["cfo_hz"], hard["cfo_hz"])
    assert easy["cfo_hz"].between(*synth.CFO_CLIP_HZ).all()
    # the emitter means follow the measured spread: median near 0.3 MHz, most between 0.05 and 1.1 MHz
    assert 0.2e6 < easy["cfo_hz"].median() < 0.4e6 and easy["cfo_hz"].between(0.05e6, 1.1e6).mean() > 0.7
    for k in ("iq_gain", "ampm", "width_offset", "rise_time", "ring_freq", "log10_linewidth"):
        assert hard[k].std() < 0.5 * easy[k].std(), k


# (frames at 8-50 MS/s demodulate to their bits and decode as DF17: the notebook 04_synth)


def test_frame_statistics():
    cfg = SYNTH_PRESETS["paper"]
    fp = make_fingerprints(cfg)
    x, bits = synth_frames(cfg, fp.loc[4].to_dict(), 200, np.random.default_rng(0))
    rms = np.sqrt((x ** 2).sum(1).mean(1))
    lo, hi = synth.RMS_RANGE
    assert rms.min() >= lo - 1e-3 and rms.max() <= hi + 1e-3 and np.ptp(rms) > 0.4
    assert np.abs(x.mean(axis=(0, 2))).max() < 0.1          # mean I and Q near 0
    assert len({h[2:8] for h in bits_to_hex(bits)}) == 200   # random ICAO per frame
    x2, _ = synth_frames(cfg, fp.loc[4].to_dict(), 200, np.random.default_rng(0))
    assert np.array_equal(x, x2)          # (icao_mode=per_emitter: the notebook 04_synth)


@pytest.mark.parametrize("preset,rel", [("paper", 0.0), ("quick", 0.07)])
def test_estimate_cfo(preset, rel):
    "Within 30 kHz at 50 MS/s; at 8 MS/s the narrow receiver filter pulls the estimate towards 0 by a few %."
    cfg = replace(SYNTH_PRESETS[preset], snr_db_min=30, snr_db_max=30)
    fp = make_fingerprints(cfg).loc[0].to_dict()
    for f in (-0.25e6, 0.4e6, 1.25e6):
        x, _ = synth_frames(cfg, {**fp, "cfo_hz": f, "cfo_jitter_hz": 0.0, "log10_linewidth": 1.5}, 20, np.random.default_rng(0))
        assert np.abs(estimate_cfo(x, cfg.sample_rate) - f).max() < 30e3 + rel * abs(f)


def test_cache_reuse(tmp_path):
    "(One and two processes give the same bytes, the in-memory split is the stored one: the notebook 04_synth.)"
    s1 = load_synth(SMOKE, tmp_path / "a", workers=1, progress=False)
    assert s1.x("pool").shape == (4200, 2, 384) and s1.x("val").shape == (60, 2, 384)
    assert all(pyModeS.decode(h)["crc_valid"] for h in s1.hex("test"))
    # a second load reuses the entry; a config given as an OmegaConf node has the same key
    mtime = (s1.path / "X_pool.npy").stat().st_mtime_ns
    s3 = load_synth(OmegaConf.structured(SMOKE), tmp_path / "a", progress=False)
    assert s3.path == s1.path and (s3.path / "X_pool.npy").stat().st_mtime_ns == mtime
    assert synth_key(OmegaConf.create({**vars(SMOKE), "sample_rate": 8_000_000})) == synth_key(SMOKE)
    assert synth_key(replace(SMOKE, rx_bandwidth=5e6)) != synth_key(SMOKE)
    assert synth_key(replace(SMOKE, seed=1)) != synth_key(SMOKE)
    assert synth_key(replace(SMOKE, multipath=True)) != synth_key(SMOKE)
    meta = json.loads((s1.path / "meta.json").read_text())
    assert meta["version"] == synth.SYNTH_VERSION and len(meta["fingerprints"]["cfo_hz"]) == 6


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch, exc):
    calls = {"n": 0}
    real = synth.synth_frames

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3: raise exc("interrupted")
        return real(*a, **k)

    monkeypatch.setattr(synth, "synth_frames", flaky)
    with pytest.raises(exc):
        load_synth(SMOKE_SMALL, tmp_path, workers=1, progress=False)
    lock = f"synth-{synth.synth_key(SMOKE_SMALL)}.lock"  # the entry's lock file (empty) stays; no entry, no temporary folder
    assert [p.name for p in tmp_path.iterdir()] == [lock]
    monkeypatch.setattr(synth, "synth_frames", real)
    s = load_synth(SMOKE_SMALL, tmp_path, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([s.path.name, lock])


def test_stale_temp_dir_is_ignored_and_cleaned(tmp_path):
    key = synth_key(SMOKE_SMALL)
    stale = tmp_path / f".synth-{key}.tmp{2**22 + 7}-abc"         # a killed build: ltsei's marker in it
    stale.mkdir(parents=True)
    (stale / "X_pool.npy").write_bytes(b"garbage")
    from ltsei.core.storage import TEMP_MARK, host_name
    (stale / TEMP_MARK).write_text(json.dumps({"ltsei": "tmp", "host": host_name(), "pid": 2**22 + 7}))
    mine = tmp_path / f".tmp-synth-{key}-999999999-abc"; mine.mkdir()    # no marker: not ltsei's, never removed
    s = load_synth(SMOKE_SMALL, tmp_path, workers=1, progress=False)
    assert not stale.exists() and mine.exists() and s.x("pool").shape[0] == 6 * 200


def test_bad_config_leaves_no_cache(tmp_path):
    with pytest.raises(ValueError, match="synth.length"):
        load_synth(replace(SMOKE, length=0), tmp_path / "c")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("fmt", ["npz"])     # (npy: the notebook 04_synth)
def test_synth_main_writes_public_layout(tmp_path, fmt):
    out = tmp_path / "out"
    rc = synth_main(["--out", str(out), "--preset", "smoke", "--num-emitters", "3", "--pool-per-class", "12",
                     "--format", fmt, "--workers", "1", "--multipath", "--difficulty", "2"])
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sample_rate"] == 8e6 and meta["config"]["multipath"] is True and meta["config"]["difficulty"] == 2.0
    cfg = replace(SMOKE, num_emitters=3, pool_per_class=12, multipath=True, difficulty=2.0)
    if fmt == "npy":
        X, Y = np.load(out / "X_train.npy"), np.load(out / "Y_train.npy")
    else:
        z = np.load(out / "data.npz")
        X, Y = z["X_train"], z["Y_train"]
        assert float(z["sample_rate"]) == 8e6 and list(z["hex_test"]) == (out / "hex_test.txt").read_text().split()
    assert X.shape == (36, 384, 2) and X.dtype == np.float32 and Y.dtype == np.int64
    assert np.array_equal(Y, np.repeat(np.arange(3), 12))
    x32, _, bits = generate_split(cfg, "pool")
    assert np.array_equal(X, x32.astype(np.float16).astype(np.float32).transpose(0, 2, 1))
    assert (out / "hex_train.txt").read_text().split() == bits_to_hex(bits)
    assert not any(p.name.startswith(".tmp") for p in out.iterdir())


def test_receiver_chain():
    """The receiver filter: flat, half amplitude (6 dB down) at +-rx_bandwidth/2, 70 dB down past its edge, never
    wider than 0.75 x the generation rate; the frames' power stays inside it."""
    assert synth.SYNTH_VERSION not in ("ltsei-synth-1", "ltsei-synth-2")    # the model changed: no old cache is reused
    f = np.linspace(0, 25e6, 2001)
    # (the default receiver's response and the quick preset's generation rate: the notebook 04_synth)
    for cfg, bw in [(SYNTH_PRESETS["quick"], 10e6), (replace(SynthConfig(), rx_bandwidth=4e6), 4e6),
                    (replace(SynthConfig(), rx_bandwidth=60e6), 37.5e6), (replace(SynthConfig(), rx_filter="gaussian"), 10e6)]:
        H = synth.rx_response(cfg, f)
        assert abs(synth.rx_response(cfg, [bw / 2, -bw / 2]) - 0.5).max() < 1e-9 and H[0] == 1 and (np.diff(H) <= 1e-12).all()
        if cfg.rx_filter == "fir":
            assert (H[f <= (bw - cfg.rx_transition) / 2] == 1).all() and (H[f >= (bw + cfg.rx_transition) / 2] <= 10 ** (-70 / 20) + 1e-12).all()
    assert synth.gen_rate(SynthConfig(sample_rate=100e6)) == 100e6
    assert synth.gen_rate(SynthConfig(sample_rate=2e8 / 3 / 8.0001)) == 2e8 / 3 / 8.0001     # no small-integer ratio: made at its own rate
    # at high SNR nearly all of a frame's power lies within the filter's band, in the receiver's frame (before derotation)
    cfg = replace(SynthConfig(), snr_db_min=30, snr_db_max=30)
    x, _ = synth_frames(cfg, make_fingerprints(cfg).loc[0].to_dict(), 20, np.random.default_rng(0))
    z = (x[:, 0] + 1j * x[:, 1]) * np.hanning(x.shape[2])
    S = np.abs(np.fft.fft(z, axis=1)) ** 2
    fr = np.abs(np.fft.fftfreq(x.shape[2], 1 / cfg.sample_rate))
    assert (S[:, fr > 6.5e6].sum(1) / S.sum(1)).max() < 1e-4
    # the SNR is the pulse power over the in-band noise: the off-pulse power of a frame is about 1/SNR of the pulses
    cfg = replace(SynthConfig(), snr_db_min=12, snr_db_max=12)
    x, _ = synth_frames(cfg, make_fingerprints(cfg).loc[0].to_dict(), 40, np.random.default_rng(0))
    from ltsei.signals.realism import measure_frames
    assert abs(measure_frames(x, cfg.sample_rate).noise_floor.median() + 12) < 1.5


def test_quick_is_paper_resampled():
    "The quick preset's frames are the paper-rate frames of the same chain, resampled to 8 MS/s (away from the ends)."
    from scipy.signal import resample_poly
    q = replace(SYNTH_PRESETS["quick"], num_emitters=2)
    p = replace(q, sample_rate=50e6, length=4800)
    fp = make_fingerprints(q).loc[1].to_dict()
    x8, b8 = synth_frames(q, fp, 6, np.random.default_rng(3))
    x50, b50 = synth_frames(p, fp, 6, np.random.default_rng(3))
    assert np.array_equal(b8, b50)
    a = (x8[:, 0] + 1j * x8[:, 1])[:, 40:-40]
    b = resample_poly(x50[:, 0] + 1j * x50[:, 1], 4, 25, axis=1)[:, 40:-40]
    corr = np.abs((a * b.conj()).sum(1)) / np.sqrt((np.abs(a) ** 2).sum(1) * (np.abs(b) ** 2).sum(1))
    assert corr.min() > 0.999, corr


def test_capture_effects():
    """Each capture effect changes the frames, and the frames still decode (high SNR); the ADC leaves at most
    2^adc_bits levels per channel; the defaults leave every effect that does not bring the frames closer to the
    real ones off."""
    base = SynthConfig(num_emitters=2, snr_db_min=30, snr_db_max=30)
    assert (base.clock_ppm, base.adc_bits, base.cfo_drift_hz, base.multipath, base.overlap_prob) == (0.0, 0, 0.0, False, 0.0)
    fp = make_fingerprints(base).loc[0].to_dict()
    x0, bits = synth_frames(base, fp, 8, np.random.default_rng(1))
    for over in (dict(clock_ppm=50.0), dict(adc_bits=6), dict(cfo_drift_hz=50e3), dict(multipath=True), dict(overlap_prob=1.0),
                 dict(rx_filter="gaussian")):
        x, b = synth_frames(replace(base, **over), fp, 8, np.random.default_rng(1))
        assert np.array_equal(b, bits) and not np.allclose(x, x0, atol=1e-3), over
        got, _, n = demodulate(envelope(x), base.sample_rate)
        assert n == 88 and (got == bits[:, :n]).all(), over      # the 88 bits that fit in 96 us
        if "adc_bits" in over:
            assert max(len(np.unique(x[i, c])) for i in range(8) for c in range(2)) <= 2 ** 6


def test_smoke_profile_learns(tmp_path, scratch):
    """The smoke profile is a pipeline check that learns: CE on its balanced (IR 1) training set scores at
    least 3x chance on the test split, so a change that stops training from working fails here."""
    from ltsei.experiments.config import compose_config
    from ltsei.experiments.run import run_experiment
    cfg = compose_config(["profile=smoke", "data.imbalance_ratio=1", "stage2.enabled=false",
                          f"data.cache_dir={scratch / 'runs' / 'cache'}",      # the session's data (the same bytes)
                          f"stage1.cache_dir={tmp_path / 'stage1'}"])
    m = run_experiment(cfg, tmp_path / "run", progress=False)
    chance = 1 / SMOKE.num_emitters
    assert m["test"]["acc"] >= 3 * chance, m["test"]


@pytest.mark.parametrize("name", ["rtl2m", "rtl2m4"])
def test_rtl_presets(name):
    "An RTL-SDR stick: 2 or 2.4 MS/s, a whole reply in a frame, the u8 mid-rise grid in units of full scale."
    cfg = SYNTH_PRESETS[name]
    assert cfg.length / cfg.sample_rate >= 120e-6 and cfg.length >= 384
    x, bits = synth_frames(cfg, make_fingerprints(cfg).loc[0].to_dict(), 4, np.random.default_rng(0))
    assert x.shape == (4, 2, cfg.length) and np.abs(x).max() <= 1.0
    k = x * 127.5 + 127.5
    assert np.allclose(k, np.round(k), atol=2e-3)                # (k - 127.5) / 127.5, k = 0 .. 255
    assert synth_key(cfg) != synth_key(replace(cfg, rx_cfo_hz=1e3))


def test_later_fields_leave_earlier_keys():
    "Fields added later enter the cache key only away from their defaults: every earlier data set keeps its key."
    for k, v in synth._LATER.items():
        assert synth_key(replace(SMOKE, **{k: v})) == synth_key(SMOKE)
    assert synth_key(replace(SMOKE, dc_db_max=-20.0)) != synth_key(SMOKE)


@pytest.mark.parametrize("field,value", [("adc_mode", "u8"), ("adc_headroom_db", 99.0), ("dc_db_min", 5.0),
                                         ("rx_iq_gain", 0.9), ("rx_cfo_hz", 2e6), ("align_max_s", 1e-6)])
def test_rtl_fields_checked(field, value):
    with pytest.raises(ValueError, match=f"synth.{field}="):
        check_synth_config(replace(SYNTH_PRESETS["rtl2m"], **{field: value}))
    with pytest.raises(ValueError, match="synth.adc_mode="):
        check_synth_config(replace(SMOKE, adc_mode="rtl"))             # rtl quantises: adc_bits must be set


def test_fruit_default_leaves_frames():
    "The traffic keys are later fields: at fruit_rate_hz=0 nothing is drawn (the other fruit keys change no byte); above it they enter the key."
    assert {"fruit_rate_hz", "fruit_modes_share", "fruit_db_min", "fruit_db_max", "fruit_over_db_max"} <= set(synth._LATER)
    fp = make_fingerprints(SMOKE).loc[0].to_dict()
    x0, _ = synth_frames(SMOKE, fp, 3, np.random.default_rng(4))
    x1, _ = synth_frames(replace(SMOKE, fruit_db_min=-30.0, fruit_modes_share=0.5, fruit_over_db_max=0.0), fp, 3, np.random.default_rng(4))
    assert np.array_equal(x0, x1)
    assert synth_key(replace(SMOKE, fruit_rate_hz=1e3)) != synth_key(SMOKE)
    with pytest.raises(ValueError, match="synth.fruit_db_max="):
        check_synth_config(replace(SMOKE, fruit_db_min=0.0, fruit_db_max=-1.0))


def test_fruit_mode_ac_pairs():
    "Mode A/C fruit alone on an empty channel: pulses at its level, F1 and F2 20.3 us apart far more often than chance."
    from ltsei.signals.emitters import _fruit
    fs, L = 50e6, 20000                                        # 400 us at 50 MS/s
    cfg = replace(SMOKE, fruit_rate_hz=2e4, fruit_modes_share=0.0, fruit_db_min=-3.0, fruit_db_max=-3.0)
    z = _fruit(cfg, np.zeros((4, L), np.complex64), fs, 0, np.full(4, 4.0), np.full(4, -1e-3), np.random.default_rng(1))
    env = np.abs(z)
    on = env > 0.5 * 2 * 10 ** (-3 / 20)                      # pulse power 4: amplitude 2 x 10^(-3/20)
    assert abs(np.median(env[on]) / 2 - 10 ** (-3 / 20)) < 0.03
    rise = [np.flatnonzero(r[1:] & ~r[:-1]) for r in on]
    def pairs(lag_s):
        return sum(int(np.isin(np.add.outer(e, np.arange(-1, 2)) + round(lag_s * fs), e).any(1).sum()) for e in rise)
    assert pairs(20.3e-6) > 3 * max(pairs(17.0e-6), 1) and pairs(20.3e-6) >= 8, (pairs(20.3e-6), pairs(17.0e-6))
