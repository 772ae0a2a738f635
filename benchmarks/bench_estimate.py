"""The time estimates against the measured time: `ltsei reproduce --profile smoke` (all its rows) and one quick row, each
from an empty results folder (data generation, stage 1, kernel start and the report included), timed; prints
estimate / measured for each (goal: within 1.5x, either way).

    .venv/bin/python benchmarks/bench_estimate.py [--jobs N] [--row s3_1_crt] [--only smoke|quick] [--save FILE]
    .venv/bin/python benchmarks/bench_estimate.py --from FILE     # the ratios of a saved measurement, with today's costs

The estimate is the one `ltsei reproduce` prints (`ltsei.experiments.estimate.plan_seconds` over the plan's configs), scaled by
this CPU's probe (`ltsei.experiments.estimate.speed_factor`, in the precision the runs use) taken before and after the command, so
that the load while it ran is in both numbers. `--save FILE` keeps the measurement (seconds, probe factor, each run's
stage seconds from its metrics.json) so that a change to the costs can be checked again with `--from FILE` without
running anything. Costs a few minutes (smoke: 3-7 min on a 2-core CPU; the quick row: 2-4 min).
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

from ltsei.experiments.estimate import cpu_name, factor_of, load_costs, plan_configs, plan_seconds, probe
from ltsei.orchestration.reproduce import plan_row_runs, row_run_overrides
from ltsei.rows import select_rows

GOAL = 1.5


def estimate(profile: str, rows: str, runs_dir: Path, jobs: int, factor: float) -> float:
    "The estimate `ltsei reproduce` prints for `rows` of `profile` into the (empty) `runs_dir`, at the speed factor `factor`."
    todo = [t for t in plan_row_runs(select_rows(rows), [0], profile, runs_dir) if t.todo]
    cfgs = plan_configs([row_run_overrides(t, profile, runs_dir) for t in todo])
    return plan_seconds(cfgs, jobs, load_costs(), factor=factor)


def run_stages(base: Path) -> list[dict]:
    "Each run's seconds from its metrics.json (stage 1, stage 2, the whole run) under `base`."
    out = []
    for m in sorted(base.rglob("metrics.json")):
        try: d = json.loads(m.read_text())
        except (OSError, ValueError): continue
        out.append({"run": str(m.parent.relative_to(base)), "seconds": d.get("seconds"),
                    "stage1": (d.get("stage1") or {}).get("seconds"), "stage2": (d.get("stage2") or {}).get("seconds")})
    return out


def measure(profile: str, rows: str, jobs: int, log=None) -> dict:
    "Run `ltsei reproduce` for `rows` of `profile` into a fresh folder; its wall time, the probe factor, the runs' stages."
    ltsei = Path(sys.executable).parent / "ltsei"
    with tempfile.TemporaryDirectory(prefix="ltsei-bench-estimate-") as tmp:
        runs = Path(tmp)
        p0 = probe()
        cmd = [str(ltsei), "reproduce", "--profile", profile, "--rows", rows, "--seeds", "1", "--jobs", str(jobs),
               "--runs-dir", str(runs)]
        t = time.perf_counter()
        with open(log or os.devnull, "a") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t
        p1 = probe()
        return {"profile": profile, "rows": rows, "jobs": jobs, "rc": rc, "measured_s": wall,
                "probe": {k: (p0[k] + p1[k]) / 2 for k in p0}, "probe_before_after": [p0, p1], "runs": run_stages(runs / profile)}


def report(m: dict) -> str:
    factor = factor_of(load_costs(), m["probe"])
    with tempfile.TemporaryDirectory() as tmp:
        est = estimate(m["profile"], m["rows"], Path(tmp), m["jobs"], factor)
    ratio = est / m["measured_s"]
    ok = "within" if 1 / GOAL <= ratio <= GOAL else "OUTSIDE"
    return (f"{m['profile']:6s} --rows {m['rows']:10s} --jobs {m['jobs']}: estimate {est:7.0f} s, measured {m['measured_s']:7.0f} s, "
            f"estimate / measured {ratio:.2f} ({ok} the {GOAL}x goal; probe factor {factor:.2f}"
            + (f"; exit {m['rc']}" if m.get("rc") else "") + ")")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="runs at once for the smoke reproduce (default 2, as on a 2-core CPU)")
    ap.add_argument("--row", default="s3_1_crt", help="the quick row (default s3_1_crt: data, stage 1, stage 2)")
    ap.add_argument("--only", choices=["smoke", "quick"], default=None)
    ap.add_argument("--save", default=None, help="write the measurement to this JSON file")
    ap.add_argument("--log", default=None, help="append the commands' output to this file")
    ap.add_argument("--from", dest="load", default=None, help="read a saved measurement instead of running")
    a = ap.parse_args()
    print(f"[bench_estimate] CPU: {cpu_name()}")
    if a.load: ms = json.loads(Path(a.load).read_text())
    else:
        ms = []
        if a.only in (None, "smoke"): ms.append(measure("smoke", "all", a.jobs, a.log))
        if a.only in (None, "quick"): ms.append(measure("quick", a.row, 1, a.log))
        if a.save: Path(a.save).write_text(json.dumps(ms, indent=1))
    for m in ms: print("[bench_estimate] " + report(m))


if __name__ == "__main__":
    main()
