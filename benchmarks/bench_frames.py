"""Benchmark of `ltsei frames`' detection (`scan`: preamble search, bit slicing, CRC, over a recording read in
chunks): speed in multiples of real time at 2 MS/s on one thread, and peak memory for a recording and for one
4 times as long. Targets: >= 50x real time; the longer recording's peak within 1.25x of the shorter's (memory flat
in the recording's length).

The recording: `synth_recording` frames (50 emitters, 200 replies/s, SNR 5-30 dB) in noise at 2 MS/s, stored as
unsigned 8-bit I/Q like `rtl_sdr` writes it; the longer one repeats it. Also the real, very busy `modes1.bin`
(1400 replies/s) repeated 20 times. Speed counts the process's CPU time, the best of 3 runs (other processes on a
shared machine slow the wall clock far more than the CPU time); both are printed. Peak memory: numpy's allocations seen by tracemalloc (the
recording itself is a memory map, paged by the system).

With --recall it measures instead the recall by SNR on synthetic recordings at 2, 8 and 50 MS/s (frames of known
emitters at random times, overlapping pairs, frames across chunk edges): the share of frames found with the right
address, per SNR bin, and the frames found with a wrong address (none allowed).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_frames.py [--seconds 5] [--df 17|all] [--recall]
"""
import argparse, os, tempfile, time, tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

from ltsei.signals.frames import FramesConfig, open_recording, scan, select_frames, synth_recording, write_iq

SPEED_TARGET, MEMORY_RATIO_TARGET = 50.0, 1.25
MODES1 = Path(__file__).resolve().parent.parent / "tests" / "data" / "dump1090-modes1" / "modes1.bin"


def repeat(src: Path, dst: Path, k: int) -> Path:
    "`dst` = the bytes of `src`, k times."
    data = src.read_bytes()
    with open(dst, "wb") as f:
        for _ in range(k): f.write(data)
    return dst


def measure(path: Path, cfg: FramesConfig, repeats: int = 3) -> dict:
    """Scan the u8 recording at 2 MS/s: replies found, CPU and wall seconds (the best of `repeats` runs: the least
    disturbed by other processes), real-time factors, tracemalloc peak (MiB, a run of its own: tracing slows it)."""
    rec = open_recording(path, "u8", 2e6)
    scan(open_recording(MODES1, "u8", 2e6), cfg)               # warm-up (imports, tables)
    c = w = float("inf")
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        found = scan(rec, cfg)
        c, w = min(c, time.process_time() - c0), min(w, time.perf_counter() - w0)
    tracemalloc.start()
    scan(rec, cfg)
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    s = rec.n / rec.sample_rate
    return {"seconds": s, "replies": len(found), "cpu_s": c, "wall_s": w, "x_cpu": s / c, "x_wall": s / w, "peak_mib": peak}


def show(name, r):
    print(f"{name:34s} {r['seconds']:7.1f} s  {r['replies']:6d} replies  cpu {r['cpu_s']:6.2f} s = {r['x_cpu']:6.1f}x real time"
          f"  (wall {r['wall_s']:6.2f} s = {r['x_wall']:6.1f}x)  peak {r['peak_mib']:7.1f} MiB")


def recall_table(seeds=(0, 1, 2)) -> pd.DataFrame:
    "Recall by SNR bin (and the frames with a wrong address) at 2, 8 and 50 MS/s, chunks of 2^16 samples."
    rows = []
    for fs, seconds, frames in ((2e6, 1.0, 300), (8e6, 0.4, 250), (50e6, 0.06, 100)):
        for seed in seeds:
            sig, truth = synth_recording(fs, seconds, num_emitters=10, frames=frames, snr_db=(0, 30), overlaps=5,
                                         edges=[1 << 16, 3 << 16], seed=seed)
            with tempfile.TemporaryDirectory() as d:
                write_iq(Path(d) / "s", sig, "cf32")
                f = select_frames(scan(open_recording(Path(d) / "s", "cf32", fs), FramesConfig(chunk=1 << 16)).assign(file=0))
            j = np.abs(f.time_s.to_numpy()[:, None] - truth.time_s.to_numpy()[None, :]).argmin(1)
            ok = (np.abs(f.time_s.to_numpy() - truth.time_s.to_numpy()[j]) < 1e-6) & (f.icao.to_numpy() == truth.icao.to_numpy()[j])
            truth["found"] = np.isin(np.arange(len(truth)), j[ok])
            rows.append(truth.assign(rate=f"{fs / 1e6:g} MS/s", wrong=int((~ok).sum()) / len(truth)))
    t = pd.concat(rows)
    t = t[~t.overlapped]
    t["snr"] = pd.cut(t.snr_db, [0, 6, 8, 10, 12, 14, 16, 20, 30])
    tab = t.pivot_table(index="snr", columns="rate", values="found", aggfunc="mean", observed=True).round(3)
    n = t.pivot_table(index="snr", columns="rate", values="found", aggfunc="size", observed=True)
    return tab, n, t.groupby("rate").wrong.sum()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0, help="length of the synthetic recording (the long one: 4x)")
    p.add_argument("--df", default="17", choices=("17", "all"))
    p.add_argument("--recall", action="store_true", help="recall by SNR on synthetic recordings instead")
    a = p.parse_args(argv)
    if a.recall:
        tab, n, wrong = recall_table()
        print("recall (frames found with the right address / frames, not counting the weaker frame of an overlapping pair)")
        print(tab.to_string()); print("frames per bin:"); print(n.to_string())
        print("frames with a wrong address:", wrong.round(0).astype(int).to_dict())
        return
    cfg = FramesConfig(df=a.df)
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, chunk {cfg.chunk} samples, --df {a.df}")
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sig, truth = synth_recording(2e6, a.seconds, num_emitters=50, frames=int(200 * a.seconds), snr_db=(5, 30),
                                     overlaps=0, seed=0)
        write_iq(d / "rec.u8", sig * 0.03, "u8")                 # noise about 2.7 LSB, the strongest frames near full scale
        del sig
        one = measure(d / "rec.u8", cfg)
        four = measure(repeat(d / "rec.u8", d / "rec4.u8", 4), cfg)
        dense = measure(repeat(MODES1, d / "modes1x20.u8", 20), cfg)
    show("synthetic, 200 replies/s", one)
    show("synthetic, 4x as long", four)
    show("modes1.bin x 20, 1400 replies/s", dense)
    ratio = four["peak_mib"] / one["peak_mib"]
    print(f"speed: {'PASS' if one['x_cpu'] >= SPEED_TARGET else 'FAIL'} ({one['x_cpu']:.0f}x real time on one core, target {SPEED_TARGET:g}x; "
          f"busy real recording {dense['x_cpu']:.0f}x)")
    print(f"memory: {'PASS' if ratio <= MEMORY_RATIO_TARGET else 'FAIL'} (peak {one['peak_mib']:.1f} MiB for {one['seconds']:g} s, "
          f"{four['peak_mib']:.1f} MiB for {four['seconds']:g} s: {ratio:.2f}x, target <= {MEMORY_RATIO_TARGET:g}x)")


if __name__ == "__main__":
    main()
