"""Verification end to end at the quick scale: does a frame come from the aircraft it claims to be?

The spoofing scenario of `ltsei synth-recording` (20 aircraft of the quick preset, the very transmitters the quick
profile's networks learnt, ranked by a run's training counts at IR 100; 3 impersonators, 3 replayers and 3 ghosts, each
with its own hardware; an enrollment recording and a later test recording at 8 MS/s), then for each method's trained
run (quick profile, seed 0: the main row's run where `ltsei reproduce` made it, e.g. `runs/quick/1.1/s1_1_ce/seed0`,
else trained here with the guide's command unless a complete run is already there, the stage 1 shared through the cache): `ltsei enroll` on the enrollment recording, `ltsei verify --truth` on the test recording.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_verify.py [--methods ce,crt,moe,balpoe] [--space logits] [--seed 0] [--frames screen]

One line per method, the last one being the last method's:

    verify: track detection many X% medium Y% few Z% at false alarm F%; frame EER E%; R x real time

Track detection: the share of impersonator and replayer tracks of 10 frames called spoofs, by the shot group of the
aircraft they claim (many / medium / few enrolled frames); false alarm: the share of genuine tracks of 10 frames called
spoofs; frame EER: the per-frame equal-error rate; R: recorded seconds per CPU second of `ltsei verify` (one thread).
Goal: many-shot >= 95 % at <= 1 % false alarm.
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from ltsei.rows import BALPOE_RUN     # the rival beyond the guide (row x2_balpoe)
GUIDE = {   # the guide's commands (ltsei.rows), quick profile
    "ce": ("CE", "loss.name=CrossEntropy sampling.name=none stage2.enabled=false"),
    "crt": ("cRT", "loss.name=CrossEntropy sampling.name=none stage2.enabled=true stage2.mode=crt stage2.epochs=100 stage2.lr=0.1 "
                   "stage2.optimizer=SGD stage2.loss=CrossEntropy stage2.sampler=class_uniform stage2.freeze_bn=true stage2.warmup_epochs=5"),
    "moe": ("MoE-LTSEI", "loss.name=CrossEntropy sampling.name=none stage2.enabled=true stage2.mode=moe_ltsei stage2.epochs=100 "
                         "stage2.lr=0.1 stage2.loss=MoELTSEILoss stage2.moe.num_experts=3 stage2.moe_loss.scale=30.0 "
                         "stage2.moe_loss.margin_m0=0.35 stage2.moe_loss.lambda_gate=1.0 stage2.freeze_bn=true"),
    "balpoe": ("BalPoE", BALPOE_RUN),
}


def ltsei(*args) -> str:
    "Run an ltsei command in a subprocess (one thread); its stdout, or exit with its error."
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-c", "import sys; from ltsei.cli import main; sys.exit(main(sys.argv[1:]))", *map(str, args)],
                       env=env, capture_output=True, text=True)
    if p.returncode: sys.exit(f"ltsei {args[0]} failed: {p.stderr.strip()[-2000:]}")
    return p.stdout


ROW_OF = {"ce": "s1_1_ce", "crt": "s3_1_crt", "moe": "s5_2_short", "balpoe": "x2_balpoe"}   # the same commands as rows of ltsei reproduce


def trained_run(method: str, root: Path, seed: int) -> Path:
    """The method's quick run at `seed`: the main row's run when `ltsei reproduce` made it, else the benchmark's own
    (reused when complete, else trained with the guide's command)."""
    from ltsei.rows import ROWS_BY_ID
    from ltsei.experiments.layout import run_dir
    from ltsei.core.storage import resolve_runs_dir
    row = run_dir(resolve_runs_dir(), "quick", ROWS_BY_ID[ROW_OF[method]], seed)
    if (row / "metrics.json").is_file(): return row
    run = root / f"{method}_seed{seed}"
    if (run / "metrics.json").is_file(): return run
    print(f"[bench] training {GUIDE[method][0]} (quick, seed {seed}) into {run.name}", flush=True)
    cmd = [sys.executable, str(ROOT / "main.py"), "profile=quick", f"seed={seed}", *GUIDE[method][1].split(), f"hydra.run.dir={run}"]
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL)
    return run


def line(s: dict) -> str:
    t, f = s["evaluation"]["track"], s["evaluation"]["frame"]["all"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    return (f"verify: track detection many {pct(t['many']['detection'])} medium {pct(t['medium']['detection'])} "
            f"few {pct(t['few']['detection'])} at false alarm {pct(t['all']['false_alarm'])}; frame EER {pct(f['eer'])}; "
            f"{s['real_time']:.1f} x real time")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="ce,crt,moe", help="comma-separated: ce, crt, moe, balpoe")
    p.add_argument("--space", default="logits", choices=("features", "logits"), help="the embedding (features: the shared stage 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", default="screen", choices=("screen", "every", "track"), help="ltsei verify --frames (default screen, its default)")
    p.add_argument("--runs", default=None, help="folder of the runs (default: the results root's quick/bench_verify)")
    p.add_argument("--work", default=None, help="folder for the scenario, galleries and verifications (default: beside the runs)")
    a = p.parse_args(argv)
    from ltsei.core.storage import resolve_runs_dir
    root = Path(a.runs) if a.runs else resolve_runs_dir() / "quick" / "bench_verify"
    work = Path(a.work) if a.work else root / "work"
    methods = a.methods.split(",")
    runs = {m: trained_run(m, root, a.seed) for m in methods}
    scen = work / f"scenario_seed{a.seed}"
    t0 = time.time()
    if not (scen / "truth.csv").is_file():
        print(ltsei("synth-recording", "--out", scen, "--preset", "quick", "--aircraft", 20, "--imbalance-ratio", 100,
                    "--head-replies", 300, "--test-replies", 50, "--impersonators", 3, "--replayers", 3, "--ghosts", 3,
                    "--spoofer-replies", 50, "--seed", a.seed, "--order-from", runs[methods[0]]).strip().splitlines()[0], flush=True)
    rec = ("--format", "cs16", "--sample-rate", "8e6")
    lines = []
    for m in methods:
        gal, ver = work / f"gallery_{m}_{a.space}", work / f"verify_{m}_{a.space}_{a.frames}"
        print(f"[{GUIDE[m][0]}] " + ltsei("enroll", scen / "enroll.cs16", *rec, "--model", runs[m], "--space", a.space, "--new", "--out", gal).strip().splitlines()[0], flush=True)
        out = ltsei("verify", scen / "test.cs16", *rec, "--gallery", gal, "--truth", scen / "truth.csv", "--out", ver, "--threads", 1, "--frames", a.frames)
        print("\n".join(f"[{GUIDE[m][0]}] {x}" for x in out.strip().splitlines()[:-1]), flush=True)
        lines.append((m, line(json.loads((ver / "summary.json").read_text()))))
    print(f"[bench] {time.time() - t0:.0f} s; space {a.space}; runs: {', '.join(f'{r.parent.name}/{r.name}' for r in runs.values())}")
    for m, ln in lines:
        print(f"# {GUIDE[m][0]}")
        print(ln)


if __name__ == "__main__":
    main()
