"""ADS-B DF17 frames: CRC, frame content checked by pyModeS, PPM modulation and demodulation."""
import numpy as np
import pyModeS
import pytest

from ltsei.adsb import (bits_to_hex, crc24, demodulate, envelope, find_preamble, hex_to_bits, make_df17,
                        parity24, ppm_chips, pulse_envelope)

KNOWN = ["8D4840D6202CC371C32CE0576098", "8D40621D58C382D690C8AC2863A7", "8D485020994409940838175B284F"]


def test_crc_of_known_frames():
    b = hex_to_bits(KNOWN)
    assert (crc24(b) == 0).all()
    assert (parity24(b[:, :88]) == b[:, 88:]).all()
    for i in range(112):  # every single-bit error is detected
        c = b[:1].copy(); c[0, i] ^= 1
        assert crc24(c).any()


def test_hex_round_trip_and_errors():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, (50, 112)).astype(np.uint8)
    assert (hex_to_bits(bits_to_hex(bits)) == bits).all()
    assert bits_to_hex(hex_to_bits(KNOWN)) == KNOWN
    with pytest.raises(ValueError, match="same length"):
        hex_to_bits(["8D", "8D48"])
    with pytest.raises(ValueError, match="multiple of 4"):
        bits_to_hex(np.zeros((1, 7), np.uint8))
    with pytest.raises(ValueError, match="at least 25 bits"):
        crc24(np.zeros(10, np.uint8))


def test_df17_frames_decode_with_pymodes():
    rng = np.random.default_rng(1)
    frames = make_df17(rng, 1000)
    tcs = set()
    for h in bits_to_hex(frames):
        d = pyModeS.decode(h)
        assert d["df"] == 17 and d["crc_valid"] is True, (h, d)
        tcs.add(d["typecode"])
    assert tcs & {1, 2, 3, 4} and tcs & set(range(9, 19)) and 19 in tcs
    fixed = make_df17(rng, 5, icao=0x4840D6)
    assert {pyModeS.decode(h)["icao"] for h in bits_to_hex(fixed)} == {"4840D6"}


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
    assert env[:, t > 121e-6].max() == 0
    with pytest.raises(ValueError, match="edges too slow"):
        pulse_envelope(chips, fs, 100, fall_time=0.4e-6)
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
    bits = make_df17(np.random.default_rng(0), 2)
    env = pulse_envelope(ppm_chips(bits), 10e6, 960)
    got, _, n = demodulate(env, 10e6, 112)  # 96 us hold the preamble and 88 bits: 112 asked, 88 returned
    assert n == 88 and got.shape == (2, 88) and (got == bits[:, :88]).all()
    got, _, n = demodulate(env, 10e6, 88)
    assert n == 88 and (got == bits[:, :88]).all()
    got, _, n = demodulate(env, 10e6, 40)
    assert n == 40 and (got == bits[:, :40]).all()
    assert np.allclose(find_preamble(env, 10e6), 0, atol=0.1e-6)
    # a positive timing offset (the frame starts 0.3 us late): 87 whole bits fit in every frame
    late = pulse_envelope(ppm_chips(bits), 10e6, 960, t0=np.array([0.3e-6, 0.0]))
    got, t0, n = demodulate(late, 10e6, 88)
    assert n == 87 and got.shape == (2, 87) and (got == bits[:, :87]).all()
    assert abs(t0[0] - 0.3e-6) < 0.1e-6
    # no bit after the preamble: a clear error
    with pytest.raises(ValueError, match="hold no bit after the 8 us preamble"):
        demodulate(env[:, :85], 10e6)
    with pytest.raises(ValueError, match="n_bits"):
        demodulate(env, 10e6, 0)


def test_demodulate_synthetic_frames_with_late_start():
    """Synthetic frames whose capture starts after the preamble (positive timing offset) demodulate
    to the bits that fit instead of raising."""
    from dataclasses import replace
    from ltsei.synth import SYNTH_PRESETS, make_fingerprints, synth_frames
    import ltsei.synth as synth
    cfg = replace(SYNTH_PRESETS["quick"], num_emitters=2, snr_db_min=30, snr_db_max=30)   # 96 us at 8 MS/s
    old = synth.ALIGN_S
    try:
        synth.ALIGN_S = (0.15e-6, 0.25e-6)       # the first pulse starts 0.15-0.25 us after sample 0
        x, bits = synth_frames(cfg, make_fingerprints(cfg).loc[0].to_dict(), 8, np.random.default_rng(0))
    finally:
        synth.ALIGN_S = old
    got, t0, n = demodulate(envelope(x), cfg.sample_rate, 88)
    assert n == 87 and (got == bits[:, :87]).all() and (t0 > 0).all()
