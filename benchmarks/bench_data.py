"""Benchmark of the synthetic data layer: generation throughput, and the time to generate the
paper-scale default data set (60 emitters x (500 + 50 + 100) frames x 4800 samples) into a fresh
cache and to load it back as tensors with `load_data`. Targets: generation <= 60 s, loading <= 5 s
(on the project's 2-core machine; other processes sharing the CPU slow both).

    .venv/bin/python benchmarks/bench_data.py [--preset paper] [--workers N] [--keep DIR]
"""
import argparse, os, shutil, tempfile, time
from dataclasses import replace

import numpy as np

from ltsei.signals.data import DataConfig, load_data
from ltsei.signals.synth import SYNTH_PRESETS, gen_rate, load_synth, make_fingerprints, split_sizes, synth_frames

GEN_TARGET_S, LOAD_TARGET_S = 60.0, 5.0


def throughput(cfg, frames=1000, chunk=250):
    "Single-process frames/s and complex MS/s of synth_frames (the generator's inner loop)."
    fp = make_fingerprints(cfg)
    synth_frames(cfg, fp.loc[0].to_dict(), 20, np.random.default_rng(0))  # warm-up
    t = time.perf_counter()
    for i in range(frames // chunk):
        synth_frames(cfg, fp.loc[i % cfg.num_emitters].to_dict(), chunk, np.random.default_rng(i))
    dt = time.perf_counter() - t
    return frames / dt, frames * cfg.length / dt / 1e6


def verdict(t, target):
    return f"{'PASS' if t <= target else 'FAIL'} ({t / target:.2f} of the {target:g} s target)"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper", choices=sorted(SYNTH_PRESETS))
    p.add_argument("--workers", type=int, default=None, help="generator processes (default: up to 2)")
    p.add_argument("--keep", default=None, help="cache folder to use and keep (default: a temporary one)")
    a = p.parse_args(argv)
    cfg = SYNTH_PRESETS[a.preset]
    n = sum(split_sizes(cfg).values()) * cfg.num_emitters
    print(f"cpu cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f} (other processes share the CPU)")
    for name in ("quick", a.preset):
        fps, mss = throughput(SYNTH_PRESETS[name])
        c = SYNTH_PRESETS[name]
        made = f", made at {gen_rate(c) / 1e6:g} MS/s" if gen_rate(c) != c.sample_rate else ""
        print(f"throughput, 1 process, {name} ({c.length} samples at {c.sample_rate / 1e6:g} MS/s{made}): "
              f"{fps:,.0f} frames/s, {mss:,.1f} M complex samples/s")
    root = a.keep or tempfile.mkdtemp(prefix="bench-data-")
    try:
        t = time.perf_counter()
        s = load_synth(cfg, root, workers=a.workers)
        gen = time.perf_counter() - t
        size = sum(f.stat().st_size for f in s.path.iterdir()) / 2 ** 20
        print(f"generate {a.preset}: {n:,} frames x {cfg.length} samples in {gen:.1f} s "
              f"({n / gen:,.0f} frames/s, {n * cfg.length / gen / 1e6:,.1f} MS/s), cache {size:,.0f} MiB -> {verdict(gen, GEN_TARGET_S)}")
        t = time.perf_counter()
        b = load_data(DataConfig(cache_dir=root, synth=cfg), seed=0)
        load = time.perf_counter() - t
        print(f"load from cache (load_data, IR {b.info['imbalance_ratio']:g}): train {tuple(b.train.x.shape)}, "
              f"val {tuple(b.val.x.shape)}, test {tuple(b.test.x.shape)} in {load:.2f} s -> {verdict(load, LOAD_TARGET_S)}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        if not a.keep: shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
