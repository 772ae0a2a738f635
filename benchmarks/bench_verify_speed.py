"""Speed and memory of `ltsei verify` on an RTL-SDR-like recording: 2 MS/s unsigned 8-bit I/Q, 200 replies per second,
one thread. Targets: >= 50x real time; the peak memory of a 60 s recording within 10 % of a 5 s one (memory flat).
Both are measured with a verdict for every frame and with `--frames track` (the network sees only the frames each
track's test needs); the speed target is judged on the latter.

The recording: `ltsei synth-recording --sample-rate 2e6 --format u8 --replies-per-s 200` (20 aircraft and 9 spoofers of the
quick preset), its test recording (about 5 s) and the same bytes 12 times over (about 60 s); the gallery: its enrollment
recording, enrolled with a trained quick run's network (frames resampled from 2 to 8 MS/s for it). Each verification
runs in a process of its own: CPU seconds (the process's, so other jobs on a shared machine count little) from the
start of `verify()` (loading the network and the gallery included: about 2 CPU s, so a short recording pays mostly
that; the rate beyond the start-up is printed too) and the peak resident memory (ru_maxrss). The
network's own cost per frame is measured apart, to say what the speed is made of.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_verify_speed.py --model RUN
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

SPEED_TARGET, MEMORY_TARGET = 50.0, 1.10
CHILD = """
import json, resource, sys
from ltsei.instrument.verify_cli import verify
verify([sys.argv[1]], sys.argv[2], sys.argv[3], fmt="u8", sample_rate=2e6, threads=1, progress=False, every=sys.argv[4] == "every")
s = json.load(open(sys.argv[3] + "/summary.json"))
print(json.dumps({"cpu_s": s["cpu_seconds"], "recorded_s": s["seconds_recorded"], "frames": s["frames"],
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def child(*args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True)
    if p.returncode: sys.exit(p.stderr[-2000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def network_cost(gallery: Path, n: int = 512) -> float:
    "CPU seconds per frame of the gallery's network on one thread (batches of 256)."
    import numpy as np, torch
    from ltsei.instrument.verify import Network, _run_files
    net = Network(_run_files(gallery), json.loads((gallery / "manifest.json").read_text())["space"], threads=1)
    x = np.random.default_rng(0).standard_normal((n, 2, net.length)).astype(np.float32)
    net(x[:256])
    t = time.process_time(); net(x); return (time.process_time() - t) / n


def cost_split(rec: Path, gallery: Path) -> dict:
    "CPU seconds of each part of verifying every frame of `rec` on one thread, measured apart in this process (start-up apart)."
    import numpy as np, torch
    from ltsei.signals.frames import open_recording
    from ltsei.instrument.verify import Network, _run_files, read_gallery, scan_replies, network_plan, network_windows, window_span
    from ltsei.instrument.verify_cli import frame_verdicts
    torch.set_num_threads(1)
    t = {"start-up (torch, network, gallery)": -time.process_time()}
    g = read_gallery(gallery); net = Network(_run_files(gallery), g["manifest"]["space"], threads=1)
    net(np.zeros((1, 2, net.length), np.float32))
    t["start-up (torch, network, gallery)"] += time.process_time()
    r = open_recording(rec, "u8", 2e6)
    before, after = window_span(r, net.sample_rate, net.length)
    parts, n, it = dict.fromkeys(("scan (detector, CRC)", "windows (cut, resample, normalise)", "network", "scoring"), 0.0), 0, scan_replies(r, before=before, after=after)
    while True:
        s = time.process_time()
        try: f, _, block, a = next(it)
        except StopIteration: break
        parts["scan (detector, CRC)"] += time.process_time() - s
        if not len(f): continue
        s = time.process_time()
        tt = f.time_s.to_numpy()[network_plan(r, f.time_s.to_numpy(), net.sample_rate, net.length, block, a)["fits"]]
        x = network_windows(r, tt, net.sample_rate, net.length, block, a)[0]
        parts["windows (cut, resample, normalise)"] += time.process_time() - s; s = time.process_time()
        e = net(x); parts["network"] += time.process_time() - s; s = time.process_time()
        claim = np.zeros(len(e), np.int64)
        frame_verdicts(g["templates"].z(e), claim, g["templates"].tau); parts["scoring"] += time.process_time() - s
        n += len(e)
    return {**t, **parts, "frames": n, "recorded_s": r.n / r.sample_rate}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a trained quick run folder")
    p.add_argument("--work", default=None, help="scratch folder (default: the results root's quick/bench_verify_speed)")
    p.add_argument("--repeat", type=int, default=12, help="the long recording is the short one this many times")
    a = p.parse_args(argv)
    from ltsei.core.storage import resolve_runs_dir
    from ltsei.cli import main as ltsei
    work = Path(a.work) if a.work else resolve_runs_dir() / "quick" / "bench_verify_speed"
    scen = work / "scenario"
    if not (scen / "truth.csv").is_file():
        assert ltsei(["synth-recording", "--out", str(scen), "--sample-rate", "2e6", "--format", "u8", "--replies-per-s", "200",
                      "--head-replies", "100", "--test-replies", "40", "--spoofer-replies", "20"]) == 0
    long = work / "test_x12.u8"
    if not long.is_file():
        data = (scen / "test.u8").read_bytes()
        with open(long, "wb") as f:
            for _ in range(a.repeat): f.write(data)
    gal = work / "gallery"
    assert ltsei(["enroll", str(scen / "enroll.u8"), "--format", "u8", "--sample-rate", "2e6", "--model", a.model, "--new", "--out", str(gal)]) == 0
    short, lng = child(scen / "test.u8", gal, work / "v_short", "every"), child(long, gal, work / "v_long", "every")
    short_t, lng_t = child(scen / "test.u8", gal, work / "v_short_t", "track"), child(long, gal, work / "v_long_t", "track")
    per_frame = network_cost(gal)
    split = cost_split(long, gal)
    for name, r in (("short, every frame", short), ("long, every frame", lng), ("short, --frames track", short_t), ("long, --frames track", lng_t)):
        print(f"{name}: {r['recorded_s']:.1f} s recorded, {r['frames']} frames, {r['cpu_s']:.1f} CPU s = "
              f"{r['recorded_s'] / r['cpu_s']:.2f}x real time; peak RSS {r['rss_mib']:.0f} MiB")
    x, xt = lng["recorded_s"] / lng["cpu_s"], lng_t["recorded_s"] / lng_t["cpu_s"]
    rate = lng["frames"] / lng["recorded_s"]
    print(f"network: {1e3 * per_frame:.2f} ms per frame on one thread = {rate * per_frame:.2f} CPU s per recorded s at "
          f"{rate:.0f} frames/s (alone it allows at most {1 / (rate * per_frame):.1f}x real time)")
    n, sec = split.pop("frames"), split.pop("recorded_s")
    print(f"cost split, every frame of the long recording in one process ({n} frames, {sec:.0f} s):")
    for k, v in split.items():
        per = "" if k.startswith("start-up") else f" = {1e3 * v / max(n, 1):.3f} ms/frame, {v / sec:.4f} CPU s per recorded s"
        print(f"  {k}: {v:.2f} CPU s{per}")
    work_s = sum(v for k, v in split.items() if not k.startswith("start-up"))
    print(f"  beyond the start-up these parts allow at most {sec / max(work_s, 1e-9):.1f}x real time; without the network "
          f"{sec / max(work_s - split['network'], 1e-9):.1f}x")
    marg = lambda l, sh: (l["recorded_s"] - sh["recorded_s"]) / max(l["cpu_s"] - sh["cpu_s"], 1e-9)
    print(f"beyond the start-up (the long recording's extra seconds over the short one's extra CPU seconds): "
          f"{marg(lng_t, short_t):.1f}x real time with --frames track, {marg(lng, short):.1f}x with every frame")
    ratio = max(lng["rss_mib"] / short["rss_mib"], lng_t["rss_mib"] / short_t["rss_mib"])
    print(f"speed: {'PASS' if xt >= SPEED_TARGET else 'FAIL'} ({xt:.1f}x real time on one core with --frames track, {x:.1f}x with a verdict "
          f"for every frame; target {SPEED_TARGET:g}x)")
    print(f"memory: {'PASS' if ratio <= MEMORY_TARGET else 'FAIL'} (peak {lng['rss_mib']:.0f} MiB for {lng['recorded_s']:.0f} s "
          f"vs {short['rss_mib']:.0f} MiB for {short['recorded_s']:.0f} s; the larger ratio of the two modes {ratio:.3f}x, target <= {MEMORY_TARGET:g}x)")


if __name__ == "__main__":
    main()
