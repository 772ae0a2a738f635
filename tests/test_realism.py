"""The realism measurements (`ltsei.realism`) against hand-computed cases, and `ltsei realism`."""
import json
import re

import numpy as np
import pytest

from ltsei.adsb import make_df17, ppm_chips, pulse_envelope
from ltsei.realism import (REAL_ADSB_REFERENCE, STATS, as_complex, cfo_1nn_accuracy, compare, frame_start,
                           load_frames, measure_frames, realism_main, realism_report, reference_summary,
                           spread_ratio, summarize, synth_sample)
from ltsei.synth import SYNTH_PRESETS, SynthConfig

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


def test_known_frame():
    z, env, _ = _frames()
    st = measure_frames(z, FS)
    assert list(st.start) == [-6] * 4 and list(st.bits) == [88] * 4
    assert np.allclose(st.cfo, 400e3, atol=2e3)
    assert np.allclose(st["align"], -6, atol=0.15)
    assert np.allclose(st.droop, 10, atol=0.5)
    assert (st.ripple < 0.1).all()
    assert np.allclose(st.noise_floor, 10 * np.log10(0.001 + 1e-4) - 10 * np.log10(0.95 ** 2), atol=0.5)
    assert np.allclose(st.dc_gap, 20 * np.log10(0.01 / 0.95), atol=1.5)
    assert np.allclose(st.env0, 1 / 0.95, atol=0.06)
    assert np.allclose(st.rms, np.sqrt((np.abs(z) ** 2).mean(1)), rtol=1e-9)
    assert (st.noise_acf1 < 0.1).all() and np.allclose(st.noise_5mhz, 0.2, atol=0.05)
    # a further 300 kHz of carrier offset moves cfo by 300 kHz and leaves obw99 (measured derotated) alone
    st2 = measure_frames(z * np.exp(2j * np.pi * 300e3 * np.arange(L) / FS), FS)
    assert np.allclose(st2.cfo - st.cfo, 300e3, atol=1e3) and np.allclose(st2.obw99, st.obw99, atol=0.05)
    # the loader's real (N, 2, L) layout gives the same numbers
    x = np.stack([z.real, z.imag], axis=1).astype(np.float32)
    assert np.allclose(measure_frames(x, FS).cfo, st.cfo, atol=1)


@pytest.mark.parametrize("start_us", [-0.2, 0.0, 2.0, 4.5])
def test_frame_start(start_us):
    bits = make_df17(np.random.default_rng(1), 2)
    env = pulse_envelope(ppm_chips(bits), FS, L, 50e-9, 80e-9, 0.0, start_us * 1e-6)
    assert np.array_equal(frame_start(env, FS), [round(start_us * 50)] * 2)


def test_trapezoid_edges_and_raised_cosine_edges():
    bits = make_df17(np.random.default_rng(2), 3)
    chips = np.repeat(ppm_chips(bits), 25, axis=1)[:, :L]
    trap = np.stack([np.convolve(c, np.ones(10) / 10)[:L] for c in chips])   # linear 10-sample ramps
    st = measure_frames(trap.astype(complex), FS)
    assert np.allclose(st.rise, 8.0) and np.allclose(st.fall, 8.0)           # 10-90 % of a 10-sample ramp
    rc = pulse_envelope(ppm_chips(bits), FS, L, 100e-9, 160e-9, 0.0, 0.0)    # raised cosine: 5 and 8 samples
    st = measure_frames(rc.astype(complex), FS)
    assert np.allclose(st.rise, 5.0, atol=0.15) and np.allclose(st.fall, 8.0, atol=0.15)
    # at 10 MS/s +-5 MHz covers the whole band: noise_5mhz is undefined
    rc10 = pulse_envelope(ppm_chips(bits), 10e6, 960, 100e-9, 160e-9, 0.0, 0.0)
    st = measure_frames(rc10.astype(complex) + 0.01, 10e6)
    assert st.noise_5mhz.isna().all() and st.rise.notna().all()


def test_noise_colour():
    rng = np.random.default_rng(3)
    _, env, _ = _frames(seed=3)
    w = rng.standard_normal((4, L)) + 1j * rng.standard_normal((4, L))
    white = measure_frames(env + 0.05 * w, FS)
    ma = measure_frames(env + 0.05 * (w + np.roll(w, 1, axis=1)) / 2, FS)   # 2-tap average: lag-1 acf exactly 1/2
    assert (white.noise_acf1 < 0.1).all() and np.allclose(white.noise_5mhz, 0.2, atol=0.05)
    assert np.allclose(ma.noise_acf1, 0.5, atol=0.06)
    assert (ma.noise_5mhz > white.noise_5mhz + 0.05).all()                 # low-pass noise: more power near DC


def test_known_tone_at_other_rates():
    for fs in (8e6, 20e6):
        n = int(96e-6 * fs)
        bits = make_df17(np.random.default_rng(4), 3)
        env = pulse_envelope(ppm_chips(bits), fs, n, 60e-9, 100e-9, 0.0, 0.0)
        z = env * np.exp(2j * np.pi * -250e3 * np.arange(n) / fs)
        assert np.allclose(measure_frames(z, fs).cfo, -250e3, atol=2e3)


def test_spread_and_1nn():
    assert spread_ratio([1, 3, 5, 7], [0, 0, 1, 1]) == pytest.approx(2.0)
    assert np.isnan(spread_ratio([1, 2, 3], [0, 1, 2]))
    y = np.repeat(np.arange(3), 5)
    assert cfo_1nn_accuracy(np.repeat([0.0, 1e5, 2e5], 5) + np.tile(np.arange(5.0), 3), y) == 1.0
    # identical offsets: nothing to tell apart; 20 classes in groups of 10 average two groups
    assert cfo_1nn_accuracy(np.zeros(15), y) <= 0.5
    y20 = np.repeat(np.arange(20), 5)
    assert cfo_1nn_accuracy(y20 * 1e5 + np.tile(np.arange(5.0), 20), y20, classes_per_group=10) == 1.0


def test_reference_and_units():
    R = REAL_ADSB_REFERENCE
    assert R["frames"] == 84 and set(R["statistics"]) == set(STATS) and "DIR-SEI" in R["source"]
    r50 = reference_summary()
    assert r50.loc["rise", "median"] == R["statistics"]["rise"]["median"]
    r8 = reference_summary(8e6)
    assert r8.loc["rise", "median"] == pytest.approx(R["statistics"]["rise"]["median"] * 8 / 50)
    assert np.isnan(r8.loc["noise_5mhz", "median"])
    rt = reference_summary(time_units=True)
    assert rt.loc["align", "median"] == pytest.approx(R["statistics"]["align"]["median"] * 20) and rt.loc["fall", "unit"] == "ns"
    stats = measure_frames(_frames()[0], FS)
    s = summarize(stats, FS)
    t = compare(s, r50)
    assert list(t.index) == list(STATS) and set(t["inside"]) <= {"yes", "no", "n/a"}
    assert summarize(stats, FS, time_units=True).loc["rise", "median"] == pytest.approx(s.loc["rise", "median"] * 20)


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(N, 2, L\)"):
        as_complex(np.zeros((2, 3, 10)))
    with pytest.raises(ValueError, match="sample_rate"):
        measure_frames(np.zeros((1, 2, 100)), 1e6)
    with pytest.raises(ValueError, match="preamble"):
        measure_frames(np.zeros((1, 2, 100)), 50e6)


def test_paper_default_is_real_like():
    "The targets of the synthetic model, measured like the reference."
    cfg = SynthConfig()
    x, y = synth_sample(cfg, 10)
    rep = realism_report(x, y, cfg.sample_rate)
    t = compare(rep["summary"], reference_summary())
    assert (t["inside"] == "yes").all(), t[t["inside"] != "yes"]
    assert all(rep["spread_ratios"][k] <= 1.5 for k in ("rise", "fall", "droop")), rep["spread_ratios"]
    assert 0.25 <= rep["cfo_1nn_accuracy"] <= 0.75


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
    assert np.allclose(xf, x)
    assert realism_main([str(tmp_path / "X_train_6Class.npy"), "--preset", "smoke", "--frames-per-emitter", "4"]) == 0
    out = capsys.readouterr().out
    # the same generator against its own frames: every comparable median is inside
    assert "compared with 24 frames" in out and "12 of 12 synthetic medians inside the files p10-p90" in out
    with pytest.raises(FileNotFoundError):
        realism_main([str(tmp_path / "missing.npy")])


def test_curves_known_cases():
    from ltsei.realism import (REAL_ADSB_CURVES, compare_curves, curves_at, envelope_acf, reference_curves,
                               reference_notes, spectrum_bins_full, spectrum_db)
    for fs, n in ((50e6, 4800), (8e6, 768)):           # a tone at +1 MHz: all power in bin 49 (0.521..1.042 MHz)
        S = spectrum_db(np.exp(2j * np.pi * 1e6 * np.arange(n) / fs)[None], fs, cfo=0.0)
        assert S[0, 49] == pytest.approx(0.0, abs=1e-6) and np.nanmax(np.delete(S[0], 49)) < -25
    assert spectrum_bins_full(50e6).all() and spectrum_bins_full(8e6).sum() == 14
    z, _, _ = _frames(cfo=2.4e6)
    assert np.allclose((10 ** (spectrum_db(z, FS) / 10)).sum(1), 1.0)
    assert np.isin(spectrum_db(z, FS).argmax(1), [47, 48]).all()          # derotated by the measured cfo
    sq = (np.arange(L) // 25 % 2).astype(complex)[None]                   # square wave: a triangle ACF
    k = np.arange(1, 51)
    e = np.abs(sq[0]) - 0.5
    assert np.allclose(envelope_acf(sq)[0], [np.sum(e[:-j] * e[j:]) / np.sum(e * e) for j in k])
    assert np.allclose(envelope_acf(sq)[0], 1 - 4 * np.minimum(k, 50 - k) / 50, atol=0.011)
    r50, r8 = reference_curves(), reference_curves(8e6)
    assert list(r50["envelope_acf"]["p90"]) == REAL_ADSB_CURVES["envelope_acf"]["p90"]
    assert r8["spectrum_db"]["median"].notna().sum() == 14 and r8["envelope_acf"]["median"].notna().sum() == 8
    assert curves_at(r50, 8e6)["spectrum_db"]["p10"].equals(r8["spectrum_db"]["p10"])
    c = compare_curves(r50, r50)
    assert (c["spectrum_inside"], c["spectrum_of"], c["acf_inside"], c["acf_of"]) == (96, 96, 50, 50)
    with pytest.raises(ValueError, match="curves_at"):
        compare_curves(r50, r8)
    notes = "\n".join(reference_notes(8e6))
    assert "14 bins" in notes and "obw99: n/a" in notes and reference_notes(50e6) == []
    assert np.isnan(reference_summary(8e6).loc["obw99", "median"]) and np.isfinite(reference_summary(20e6).loc["obw99", "median"])


def _known_receiver_files(tmp_path=None):
    """Frames of 6 emitters with known settings: 8 MS/s, 48 us, a 3.5 MHz receiver, SNR 10-16 dB, CFO 100-600 kHz,
    the paper's fingerprint spreads (difficulty 1)."""
    from dataclasses import replace
    from ltsei.synth import make_fingerprints, synth_frames
    true = replace(SYNTH_PRESETS["quick"], num_emitters=6, length=384, rx_bandwidth=3.5e6, snr_db_min=10.0, snr_db_max=16.0, seed=5,
                   difficulty=1.0)
    fp = make_fingerprints(true)
    xs = []
    for e in range(6):
        r = fp.loc[e].to_dict()
        r.update(cfo_hz=100e3 * (e + 1), cfo_jitter_hz=40e3)
        xs.append(synth_frames(true, r, 20, np.random.default_rng(e))[0])
    return true, np.concatenate(xs), np.repeat(np.arange(6), 20)


def test_fit_recovers_known_settings(tmp_path):
    from ltsei.realism import fit_synth, preset_text, read_synth_preset, synth_preset, write_preset
    true, x, y = _known_receiver_files()
    from dataclasses import replace
    fit = fit_synth(x, y, true.sample_rate, replace(SYNTH_PRESETS["quick"], difficulty=1.0), sim_frames=60, seed=1)
    p = fit["preset"]
    assert abs(p["rx_bandwidth"] / 3.5e6 - 1) <= 0.10, p
    assert abs((p["snr_db_min"] + p["snr_db_max"]) / 2 - 13.0) <= 1.0, p
    assert abs(fit["estimates"].loc["cfo_emitter_hz", "median"] - 350e3) <= 20e3, fit["estimates"]
    assert p["sample_rate"] == 8e6 and p["length"] == 384 and p["num_emitters"] == 6
    # the fitted preset's frames: every comparable statistic and every curve point inside the captures' p10-p90
    assert (fit["table"]["inside"] != "no").all(), fit["table"]
    c = fit["curves"]
    assert (c["spectrum_inside"], c["acf_inside"]) == (c["spectrum_of"], c["acf_of"]) == (14, 50)
    # the preset file: the keys read back, the estimates without a key as comments
    out = write_preset(tmp_path / "rx.yaml", preset_text(fit, "test frames"))
    assert read_synth_preset(out) == {k: type(getattr(true, k))(v) for k, v in p.items()}
    assert synth_preset(out, "quick").rx_bandwidth == p["rx_bandwidth"] and synth_preset(out).pool_per_class == 500
    assert "#   cfo_emitter_hz:" in out.read_text()


def test_preset_files_and_unlabelled_captures(tmp_path, capsys):
    from ltsei.realism import preset_flags, preset_overrides, read_synth_preset
    f = tmp_path / "p.yaml"
    f.write_text("snr_db_min: 3\nmultipath: false\nicao_mode: per_emitter\n")
    assert read_synth_preset(f) == {"snr_db_min": 3.0, "multipath": False, "icao_mode": "per_emitter"}
    assert preset_overrides(f) == ["data.synth.snr_db_min=3.0", "data.synth.multipath=false", "data.synth.icao_mode=per_emitter"]
    assert preset_flags(f) == ["--snr-db-min", "3.0", "--no-multipath", "--icao-mode", "per_emitter"]
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
    from ltsei.config import compose_config
    f = tmp_path / "rx.yaml"
    f.write_text("sample_rate: 20000000.0\nlength: 1920\nrx_bandwidth: 6.5e6\n")
    cfg = compose_config(expand_synth_preset(["profile=smoke", f"data.synth.preset={f}", "data.synth.length=960"]))
    assert (cfg.data.synth.sample_rate, cfg.data.synth.rx_bandwidth, cfg.data.synth.length) == (20e6, 6.5e6, 960)
    assert cfg.data.synth.num_emitters == SYNTH_PRESETS["smoke"].num_emitters          # the rest from the profile
    assert synth_preset_flags(["--preset", str(f), "--out", "d"])[:2] == ["--sample-rate", "20000000.0"]


def test_adc_bits_estimate():
    from ltsei.realism import adc_bits_estimate
    z, _, _ = _frames(n=3)
    peak = np.abs(np.concatenate([z.real, z.imag], 1)).max(1, keepdims=True)
    q = 2 * peak * 10 ** (3 / 20) / 2 ** 8                       # an 8-bit ADC, full scale 3 dB over the peak
    zq = np.round(z.real / q) * q + 1j * np.round(z.imag / q) * q
    assert np.allclose(adc_bits_estimate(zq), 8, atol=0.05)
    assert (adc_bits_estimate(z) == 0).all()                       # unquantised
