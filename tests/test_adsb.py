"""ADS-B DF17 frames: CRC, frame content checked by pyModeS, PPM modulation and demodulation."""
import numpy as np
import pyModeS
import pytest

from ltsei.signals.adsb import (bits_to_hex, crc24, demodulate, envelope, find_preamble, hex_to_bits, make_df17,
                        ppm_chips, pulse_envelope)

KNOWN = ["8D4840D6202CC371C32CE0576098", "8D40621D58C382D690C8AC2863A7", "8D485020994409940838175B284F"]


def test_crc_detects_every_single_bit_error():
    "(A known frame's CRC and parity, and one flipped bit: the notebook 03_adsb.)"
    b = hex_to_bits(KNOWN)
    for i in range(112):  # every single-bit error is detected
        c = b[:1].copy(); c[0, i] ^= 1
        assert crc24(c).any()


def test_hex_round_trip_and_errors():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (50, 112)).astype(np.uint8)
    assert (hex_to_bits(bits_to_hex(bits)) == bits).all()   # (a known frame and hexes of unequal length: the notebook)
    with pytest.raises(ValueError, match="multiple of 4"):
        bits_to_hex(np.zeros((1, 7), np.uint8))
    with pytest.raises(ValueError, match="at least 25 bits"):
        crc24(np.zeros(10, np.uint8))


def test_df17_frames_decode_with_pymodes():
    "1000 frames cover the three message kinds (a fixed ICAO address: the notebook 03_adsb)."
    rng = np.random.default_rng(1)
    frames = make_df17(rng, 1000)
    tcs = set()
    for h in bits_to_hex(frames):
        d = pyModeS.decode(h)
        assert d["df"] == 17 and d["crc_valid"] is True, (h, d)
        tcs.add(d["typecode"])
    assert tcs & {1, 2, 3, 4} and tcs & set(range(9, 19)) and 19 in tcs


def test_envelope_shape_and_timing():
    bits = make_df17(np.random.default_rng(2), 3)
    chips = ppm_chips(bits)
    assert chips.shape == (3, 16 + 224)
    fs = 100e6
    env = pulse_envelope(chips, fs, 12500, 50e-9, 100e-9, 0.0, 0.0)
    assert env.dtype == np.float32 and env.shape == (3, 12500)
    t = np.arange(12500) / fs
    for k in range(112):  # the pulse of bit k sits in the first half of its period for a 1
        first = env[:, int((8.25e-6 + k * 1e-6) * fs)]
        second = env[:, int((8.75e-6 + k * 1e-6) * fs)]
        assert np.allclose(first, bits[:, k]) and np.allclose(second, 1 - bits[:, k])
    assert env[:, t > 121e-6].max() == 0      # (edges too slow for the chip: the notebook 03_adsb)
    with pytest.raises(ValueError, match="positive"):
        pulse_envelope(chips, fs, 0)


@pytest.mark.parametrize("fs", [8e6, 10e6, 20e6, 50e6])
def test_modulate_demodulate_decode(fs):
    """Many frames at high SNR: the demodulator recovers every bit, and the hex of the demodulated bits
    decodes with pyModeS as DF17 with a valid CRC."""
    rng = np.random.default_rng(int(fs))
    B = 300
    bits = make_df17(rng, B)
    L = int(np.ceil(122e-6 * fs))
    t0 = rng.uniform(-3, 4, B) / fs
    env = pulse_envelope(ppm_chips(bits), fs, L, rng.uniform(20e-9, 100e-9, B), rng.uniform(50e-9, 200e-9, B),
                         rng.uniform(-50e-9, 50e-9, B), t0)
    t = np.arange(L) / fs
    x = env * np.exp(1j * (2 * np.pi * rng.uniform(-1e6, 1.5e6, (B, 1)) * t + rng.uniform(0, 2 * np.pi, (B, 1))))
    x = x + 0.05 * (rng.standard_normal((B, L)) + 1j * rng.standard_normal((B, L)))  # about 23 dB SNR
    iq = np.stack([x.real, x.imag], axis=1).astype(np.float32)
    got, t0_hat, n = demodulate(envelope(iq), fs)
    assert n == 112 and (got == bits).all()
    assert np.abs(t0_hat - t0).max() < 0.1e-6
    for h in bits_to_hex(got):
        d = pyModeS.decode(h)
        assert d["df"] == 17 and d["crc_valid"] is True


def test_demodulate_returns_the_bits_that_fit():
    "(112 asked of a 96 us frame, a frame 0.3 us late, no bit after the preamble: the notebook 03_adsb.)"
    bits = make_df17(np.random.default_rng(0), 2)
    env = pulse_envelope(ppm_chips(bits), 10e6, 960)
    got, _, n = demodulate(env, 10e6, 88)
    assert n == 88 and (got == bits[:, :88]).all()
    got, _, n = demodulate(env, 10e6, 40)
    assert n == 40 and (got == bits[:, :40]).all()
    assert np.allclose(find_preamble(env, 10e6), 0, atol=0.1e-6)
    with pytest.raises(ValueError, match="n_bits"):
        demodulate(env, 10e6, 0)


def test_demodulate_synthetic_frames_with_late_start():
    """Synthetic frames whose capture starts after the preamble (positive timing offset) demodulate
    to the bits that fit instead of raising."""
    from dataclasses import replace
    from ltsei.signals.synth import SYNTH_PRESETS, make_fingerprints, synth_frames
    cfg = replace(SYNTH_PRESETS["quick"], num_emitters=2, snr_db_min=30, snr_db_max=30,   # 96 us at 8 MS/s
                  align_min_s=0.15e-6, align_max_s=0.25e-6)   # the first pulse starts 0.15-0.25 us after sample 0
    x, bits = synth_frames(cfg, make_fingerprints(cfg).loc[0].to_dict(), 8, np.random.default_rng(0))
    got, t0, n = demodulate(envelope(x), cfg.sample_rate, 88)
    assert n == 87 and (got == bits[:, :87]).all() and (t0 > 0).all()
