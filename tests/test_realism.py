"""The realism measurements (`ltsei.signals.realism`) against hand-computed cases, and `ltsei realism`."""
import json
import re

import numpy as np
import pytest

from ltsei.signals.adsb import make_df17, ppm_chips, pulse_envelope
from ltsei.signals.realism import (REAL_ADSB_REFERENCE, STATS, as_complex, cfo_1nn_accuracy, compare, frame_start,
                           load_frames, measure_frames, realism_main, reference_summary, summarize, synth_sample)
from ltsei.signals.synth import SYNTH_PRESETS

FS, L = 50e6, 4800


def _frames(n=4, seed=0, lead=6, cfo=400e3, droop=0.10, dc=0.01, noise_power=0.001):
    "Ideal PPM frames (1-sample raised-cosine edges) with a known carrier, lead, droop, DC and gap noise."
    rng = np.random.default_rng(seed)
    bits = make_df17(rng, n)
    t = np.arange(L) / FS
    env = pulse_envelope(ppm_chips(bits), FS, L, 20e-9, 20e-9, 0.0, -lead / FS)
    z = env * (1 - droop * (t + lead / FS) / 96e-6) * np.exp(2j * np.pi * cfo * t + 1j)
    noise = np.sqrt(noise_power / 2) * (rng.standard_normal(z.shape) + 1j * rng.standard_normal(z.shape))
    return z + dc + noise * (env < 0.01), env, bits


# (a known frame's 13 statistics, a further 300 kHz, the (N, 2, L) layout: the notebook 06_realism)


@pytest.mark.parametrize("start_us", [-0.2, 0.0, 2.0, 4.5])
def test_frame_start(start_us):
    bits = make_df17(np.random.default_rng(1), 2)
    env = pulse_envelope(ppm_chips(bits), FS, L, 50e-9, 80e-9, 0.0, start_us * 1e-6)
    assert np.array_equal(frame_start(env, FS), [round(start_us * 50)] * 2)


def test_edges_at_10_msps():
    "(Linear and raised-cosine edges at 50 MS/s: the notebook 06_realism.) At 10 MS/s +-5 MHz is the whole band."
    bits = make_df17(np.random.default_rng(2), 3)
    rc10 = pulse_envelope(ppm_chips(bits), 10e6, 960, 100e-9, 160e-9, 0.0, 0.0)
    st = measure_frames(rc10.astype(complex) + 0.01, 10e6)
    assert st.noise_5mhz.isna().all() and st.rise.notna().all()


# (white and 2-tap averaged noise: the notebook 06_realism)


def test_known_tone_at_other_rates():
    for fs in (8e6, 20e6):
        n = int(96e-6 * fs)
        bits = make_df17(np.random.default_rng(4), 3)
        env = pulse_envelope(ppm_chips(bits), fs, n, 60e-9, 100e-9, 0.0, 0.0)
        z = env * np.exp(2j * np.pi * -250e3 * np.arange(n) / fs)
        assert np.allclose(measure_frames(z, fs).cfo, -250e3, atol=2e3)


def test_spread_and_1nn():
    "(A spread ratio by hand, none without 2 frames of a class, offsets far apart: the notebook 06_realism.)"
    y = np.repeat(np.arange(3), 5)
    # identical offsets: nothing to tell apart; 20 classes in groups of 10 average two groups
    assert cfo_1nn_accuracy(np.zeros(15), y) <= 0.5
    y20 = np.repeat(np.arange(20), 5)
    assert cfo_1nn_accuracy(y20 * 1e5 + np.tile(np.arange(5.0), 20), y20, classes_per_group=10) == 1.0


def test_reference_and_units():
    R = REAL_ADSB_REFERENCE
    assert R["frames"] == 84 and set(R["statistics"]) == set(STATS) and "DIR-SEI" in R["source"]
    r50 = reference_summary()
    assert r50.loc["rise", "median"] == R["statistics"]["rise"]["median"]
    # (the reference at 8 MS/s and in ns: the notebook 06_realism)
    stats = measure_frames(_frames()[0], FS)
    s = summarize(stats, FS)
    t = compare(s, r50)
    assert list(t.index) == list(STATS) and set(t["inside"]) <= {"yes", "no", "n/a"}
    assert summarize(stats, FS, time_units=True).loc["rise", "median"] == pytest.approx(s.loc["rise", "median"] * 20)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(N, L\)"):           # ((N, 3, L): the notebook)
        as_complex(np.zeros((2, 3, 4, 10), complex))
    with pytest.raises(ValueError, match="sample_rate"):
        measure_frames(np.zeros((1, 2, 100)), 1e6)
    with pytest.raises(ValueError, match="preamble"):
        measure_frames(np.zeros((1, 2, 100)), 50e6)


# (the paper default inside the reference, its spread ratios and CFO 1-NN: the notebook 06_realism)


def test_realism_main_against_reference(capsys):
    assert realism_main(["--preset", "paper", "--emitters", "10", "--frames-per-emitter", "4"]) == 0
    out = capsys.readouterr().out
    assert "compared with the reference: 84 real frames" in out and "synthetic medians inside the real p10-p90" in out
    assert "spread ratio: rise" in out and "CFO-only 1-NN" in out
    assert re.search(r"spectrum bins inside the real p10-p90: \d+ of 96", out) and "envelope-ACF lags inside the real p10-p90: " in out
    assert realism_main(["--preset", "quick", "--emitters", "10", "--frames-per-emitter", "3", "--rx-bandwidth", "5e6"]) == 0
    out = capsys.readouterr().out
    assert "rx_bandwidth=5000000.0" in out and "in ns (the sample rates differ)" in out and "n/a" in out
    assert "of 14 (0.521 MHz bins within +-4 MHz)" in out and "of 8 (lags of 125 ns up to 1000 ns)" in out
    assert "carried to 8 MS/s" in out and "obw99: n/a" in out


def test_realism_main_against_files(tmp_path, capsys):
    smoke = SYNTH_PRESETS["smoke"]
    x, y = synth_sample(smoke, 4)
    np.save(tmp_path / "X_train_6Class.npy", x.transpose(0, 2, 1).astype(np.float64))   # the public (N, L, 2) layout
    np.save(tmp_path / "Y_train_6Class.npy", y)
    (tmp_path / "meta.json").write_text(json.dumps({"sample_rate": smoke.sample_rate}))
    xf, yf, fs, desc = load_frames([tmp_path / "X_train_6Class.npy"] * 2)          # the same file twice: deduplicated
    assert xf.shape == x.shape and fs == smoke.sample_rate and "24 duplicates dropped" in desc
    assert np.allclose(xf, x)       # (the command on these files, every median inside: the notebook 06_realism)
    with pytest.raises(FileNotFoundError):
        realism_main([str(tmp_path / "missing.npy")])


def test_curves_known_cases():
    from ltsei.signals.realism import (REAL_ADSB_CURVES, compare_curves, curves_at, reference_curves, reference_notes,
                               spectrum_bins_full)
    # (a tone in its bin, the shares summing to 1, the derotation, a square wave's ACF, the reference's curves at 50 and
    # 8 MS/s, a summary inside itself: the notebook 06_realism)
    assert spectrum_bins_full(50e6).all()
    r50, r8 = reference_curves(), reference_curves(8e6)
    assert list(r50["envelope_acf"]["p90"]) == REAL_ADSB_CURVES["envelope_acf"]["p90"]
    assert curves_at(r50, 8e6)["spectrum_db"]["p10"].equals(r8["spectrum_db"]["p10"])
    with pytest.raises(ValueError, match="curves_at"):
        compare_curves(r50, r8)
    notes = "\n".join(reference_notes(8e6))
    assert "14 bins" in notes and "obw99: n/a" in notes and reference_notes(50e6) == []
    assert np.isnan(reference_summary(8e6).loc["obw99", "median"]) and np.isfinite(reference_summary(20e6).loc["obw99", "median"])


# (the fit recovering a known receiver, and its preset file read back: the notebook 06_realism)


def test_preset_files_and_unlabelled_captures(tmp_path, capsys):
    "(A good preset file read, as overrides and as flags: the notebook 06_realism.)"
    from ltsei.signals.realism import read_synth_preset
    f = tmp_path / "p.yaml"
    for text, msg in (("rx_bandwith: 5e6\n", "not data.synth keys"), ("num_emitters: 2.5\n", "expected a int"),
                      ("- 1\n", "expected a mapping"), ("sample_rate: 1e6\n", "synth.sample_rate")):
        f.write_text(text)
        with pytest.raises(ValueError, match=msg):
            read_synth_preset(f)
    with pytest.raises(ValueError, match="expected one of"):
        realism_main(["--preset", "nonesuch"])
    with pytest.raises(ValueError, match="--fit FILES... and --out"):
        realism_main(["--out", str(tmp_path / "x.yaml")])
    # captures without labels: one class (-1); the fit refuses a non-yaml --out before reading anything
    x, _ = synth_sample(SYNTH_PRESETS["smoke"], 2)
    np.save(tmp_path / "caps.npy", x.transpose(0, 2, 1))
    xf, yf, fs, desc = load_frames([tmp_path / "caps.npy"], sample_rate=8e6)
    assert xf.shape == x.shape and (yf == -1).all() and "unlabelled" in desc
    with pytest.raises(ValueError, match="expected a .yaml file"):
        realism_main(["--fit", str(tmp_path / "caps.npy"), "--out", str(tmp_path / "x.txt")])


def test_low_rate_measurement():
    "At 2 MS/s (one sample per chip) the levels come from single samples; edge times are n/a, the CFO still holds."
    fs, n = 2e6, 240
    bits = make_df17(np.random.default_rng(6), 3)
    env = pulse_envelope(ppm_chips(bits), fs, n, 60e-9, 100e-9, 0.0, -0.25e-6)
    z = env * np.exp(2j * np.pi * 80e3 * np.arange(n) / fs)
    st = measure_frames(z + 0.01, fs, max_bits=112)
    assert st.rise.isna().all() and st.fall.isna().all() and (st.bits == 112).all()
    assert np.allclose(st.cfo, 80e3, atol=3e3)
    assert np.isfinite(st[["noise_floor", "droop", "dc_gap", "rms"]].to_numpy()).all()


def test_preset_file_in_the_experiment_config_and_ltsei_synth(tmp_path):
    from ltsei.cli import expand_synth_preset, synth_preset_flags
    from ltsei.experiments.config import compose_config
    f = tmp_path / "rx.yaml"
    f.write_text("sample_rate: 20000000.0\nlength: 1920\nrx_bandwidth: 6.5e6\n")
    cfg = compose_config(expand_synth_preset(["profile=smoke", f"data.synth.preset={f}", "data.synth.length=960"]))
    assert (cfg.data.synth.sample_rate, cfg.data.synth.rx_bandwidth, cfg.data.synth.length) == (20e6, 6.5e6, 960)
    assert cfg.data.synth.num_emitters == SYNTH_PRESETS["smoke"].num_emitters          # the rest from the profile
    assert synth_preset_flags(["--preset", str(f), "--out", "d"])[:2] == ["--sample-rate", "20000000.0"]


# (an 8-bit ADC's frames and unquantised ones: the notebook 06_realism)


def test_fit_traffic_recovers_rate():
    "Frames of the stick with known Mode A/C traffic: the fit over the same receiver without it finds its rate and levels roughly."
    from dataclasses import replace
    from ltsei.signals.traffic import fit_traffic, fruit_stats
    from ltsei.signals.frame_stats import synth_sample
    quiet = replace(SYNTH_PRESETS["rtl2m"], num_emitters=3, snr_db_min=30.0, snr_db_max=30.0, fruit_rate_hz=0.0,
                    fruit_modes_share=0.0, fruit_over_db_max=30.0)
    truth = replace(quiet, fruit_rate_hz=6000.0, fruit_modes_share=0.0, fruit_db_min=-4.0, fruit_db_max=0.0, seed=3)
    x = synth_sample(truth, 30)[0]
    assert fruit_stats(synth_sample(quiet, 10)[0], 2e6)["hit"] == 0.0 < fruit_stats(x, 2e6)["hit"]
    fit, _ = fit_traffic(quiet, x, 2e6, frames=30, rounds=1)
    assert 3000 < fit.fruit_rate_hz < 12000 and fit.fruit_modes_share < 0.3, fit
    assert abs(fit.fruit_db_max - truth.fruit_db_max) < 3, fit
    assert fit_traffic(truth, x[..., :243], 2e6)[0] == truth                # no tail to measure: the base's traffic
