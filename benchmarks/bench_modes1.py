"""The RTL-SDR chain on a real recording: dump1090's `modes1.bin` (2 MS/s u8, one aircraft, 4D2023; BSD-3, the copy in
`tests/data/dump1090-modes1/` with its LICENSE), the figures of `docs/rtl-sdr.md` in one run.

1. `ltsei enroll` 4D2023 on the first half of the recording (by time), `ltsei verify` the second half: the genuine
   frames' and tracks' false alarm (the must-hold: <= 2 % of frames at the gallery's 1 % calibration).
   Every frame goes through the network (`--frames every`), so that each is the network's verdict.
2. The second half with replies of 4D2023 from a synthetic transmitter mixed in (its own hardware, drawn from the
   preset's population, at the recording's pulse level, in stretches clear of its Mode S replies; several draws of
   the transmitter), `ltsei verify --truth`: the impersonation caught per frame and per 10-frame track, the frame EER.

The network: a run trained at 2 MS/s on the stick's preset (`docs/rtl-sdr.md`, command 3; e.g. `runs/my-stick`):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_modes1.py --model runs/my-stick [--recording PATH] [--draws 3]
        [--window-scale window]

Last line: `modes1: genuine false alarm F% (k of n frames, t of T tracks); impersonation caught in X% of tracks, Y% of
frames (D draws); frame EER E%`.
"""
import argparse, json, os, sys, tempfile
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
MODES1 = ROOT / "tests" / "data" / "dump1090-modes1" / "modes1.bin"
RAW = ("--format", "u8", "--sample-rate", "2e6")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a run folder trained at 2 MS/s (docs/rtl-sdr.md, command 3)")
    p.add_argument("--recording", default=str(MODES1), help="a 2 MS/s u8 recording (default: dump1090's modes1.bin)")
    p.add_argument("--draws", type=int, default=3, help="synthetic impersonating transmitters, one after another")
    p.add_argument("--replies", type=int, default=300, help="replies each impersonator sends into the second half")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--window-scale", choices=("reply", "window"), default=None,
                   help="ltsei enroll --window-scale: the reply's (default) or the whole window's")
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from omegaconf import OmegaConf
    from ltsei.cli import main as ltsei
    from ltsei.signals.rtlsdr import split_recording, inject_replies, pulse_level
    from ltsei.signals.synth import SynthConfig
    rec = Path(a.recording)
    if not rec.is_file(): sys.exit(f"bench_modes1: no recording at {rec} (expected a 2 MS/s u8 file such as modes1.bin)")
    with tempfile.TemporaryDirectory() as tmp:
        w = Path(a.work) if a.work else Path(tmp)
        first, second = split_recording(rec, w / "halves")
        assert ltsei(["frames", str(first), *RAW, "--out", str(w / "frames1")]) == 0
        level = pulse_level(np.load(w / "frames1" / "X.npy"))
        icao = pd.read_csv(w / "frames1" / "emitters.csv", dtype={"icao": str}).sort_values("frames").icao.iloc[-1]   # the most heard
        scale = ["--window-scale", a.window_scale] if a.window_scale else []
        assert ltsei(["enroll", str(first), *RAW, "--model", a.model, "--out", str(w / "gallery"), "--new", *scale]) == 0
        assert ltsei(["verify", str(second), *RAW, "--gallery", str(w / "gallery"), "--out", str(w / "genuine"), "--frames", "every"]) == 0
        v = pd.read_csv(w / "genuine" / "verdicts.csv", dtype={"icao": str})
        g = v[v.icao == icao]
        flagged = ["mismatch", "unknown transmitter"]      # the network's verdict on every frame (--frames every)
        fa, tr = g.verdict.isin(flagged).sum(), pd.read_csv(w / "genuine" / "tracks.csv", dtype={"icao": str})
        tr = tr[tr.icao == icao]
        print(f"genuine second half: {len(g)} frames of {icao}, {fa} flagged ({100 * fa / max(len(g), 1):.1f} %); "
              f"{tr.verdict.isin(flagged).sum()} of {len(tr)} tracks flagged")
        cfg = SynthConfig(**OmegaConf.to_container(OmegaConf.load(Path(a.model) / "config.yaml").data.synth, resolve=True))
        caught_t, caught_f, eers, gen_fa = [], [], [], []
        for d in range(a.draws):
            out = w / f"inject{d}"
            out.mkdir(parents=True, exist_ok=True)
            t = inject_replies(second, out / "second.u8", cfg, int(icao, 16), a.replies, level, seed=d)
            t.to_csv(out / "truth.csv", index=False)
            assert ltsei(["verify", str(out / "second.u8"), *RAW, "--gallery", str(w / "gallery"), "--out", str(out / "v"),
                          "--truth", str(out / "truth.csv"), "--frames", "every"]) == 0
            ev = json.loads((out / "v" / "summary.json").read_text())["evaluation"]
            f, k = ev["frame"]["all"], ev["track"]["all"]
            print(f"draw {d}: {json.dumps({'frame': f, 'track': k})}")
            caught_f.append(f["detection"]); caught_t.append(k["detection"]); eers.append(f["eer"]); gen_fa.append(f["false_alarm"])
    pct = lambda x: 100 * float(np.nanmean(x))
    print(f"modes1: genuine false alarm {100 * fa / max(len(g), 1):.1f}% ({fa} of {len(g)} frames, {tr.verdict.isin(flagged).sum()} "
          f"of {len(tr)} tracks); impersonation caught in {pct(caught_t):.0f}% of tracks, {pct(caught_f):.0f}% of frames "
          f"({a.draws} draws; genuine frames flagged beside them {pct(gen_fa):.1f}%); frame EER {pct(eers):.1f}%")


if __name__ == "__main__":
    main()
