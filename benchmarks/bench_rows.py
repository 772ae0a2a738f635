"""Row overhead and rows per hour: what one `ltsei reproduce` row costs besides its training, and how many rows an
hour one device runs with 1, 2 or 4 runs on it at once.

    .venv/bin/python benchmarks/bench_rows.py [--rows s1_1_ce,s3_1_crt] [--repeat 2] [--pack 1 2 4] [--pack-rows 4]

**Overhead.** Each row runs through the real path (`ltsei.orchestration.kernels.RowExecutor` -> `execute_row_notebook`:
the experiment notebook executed by papermill, the real composer and runner) at the `smoke` profile, whose
epochs are near zero. The run's wall time minus the seconds its training reports in `metrics.json` (stage 1 when
trained here, stage 2) is its overhead; papermill's per-cell timings split it into kernel start (everything
outside the cells: kernel start, notebook read and write, shutdown), imports, config, the rest of the run
(data loading, model set-up, test evaluation, writing results) and the figures. A first row fills the data cache
and is reported apart. Target: at most 3 s per row.

**Packing.** `--pack-rows` smoke rows (distinct stage-1 settings, data cache warm, stage-1 cache empty) run
through the local launcher with 1, 2 and 4 runs at once (threads = cores / runs, as `ltsei reproduce --jobs`
gives them; with CUDA: all on one GPU at `--gpus-per-run` 1, 1/2, 1/4); rows per hour = rows / wall time.

The machine's load (uptime) is printed before and after each part: the numbers are only as quiet as it was.
"""
import argparse, json, os, shutil, tempfile, time
from pathlib import Path

TARGET = 3.0
PROFILE = "smoke"


def load() -> str:
    try: return "load average " + " ".join(Path("/proc/loadavg").read_text().split()[:3]) + f" on {os.cpu_count()} cores"
    except OSError: return "load average unknown"


def executor(runs, threads, warm=0):
    from ltsei.orchestration.kernels import RowExecutor, load_notebook
    from ltsei.orchestration.row_runs import REAL_FUNCS
    return RowExecutor(PROFILE, threads, REAL_FUNCS, str(runs), load_notebook("experiment.ipynb"), warm=warm)


def plan(rows, runs):
    from ltsei.experiments.config import compose_config
    from ltsei.rows import select_rows
    from ltsei.orchestration.row_runs import check_configs, plan_row_runs
    tasks = plan_row_runs(select_rows(rows), [0], PROFILE, runs)
    check_configs(tasks, PROFILE, compose_config, runs)
    return tasks


def phases(task, wall):
    "The row's wall time split by papermill's cell timings and the training seconds of its metrics.json."
    nb = json.loads((task.out_dir / "experiment.ipynb").read_text())
    m = json.loads((task.out_dir / "metrics.json").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    dur = [float((c["metadata"].get("papermill") or {}).get("duration") or 0.0) for c in code]
    src = ["".join(c["source"]) for c in code]
    def cell(pred): return sum(d for d, s in zip(dur, src) if pred(s))
    s1, s2 = m.get("stage1") or {}, m.get("stage2") or {}
    train = (0.0 if s1.get("reused") else float(s1.get("seconds") or 0.0)) + float(s2.get("seconds") or 0.0)
    run_cell = cell(lambda s: "load_callable(runner)" in s)
    out = {"wall": wall, "training": train,
           "kernel start, papermill": wall - sum(dur),
           "imports": cell(lambda s: s.lstrip().startswith("import time")),
           "config": cell(lambda s: "load_callable(composer)" in s),
           "run outside training": run_cell - train,
           "figures": cell(lambda s: "plt.show()" in s or "plot_" in s),
           "stage 1": "reused" if s1.get("reused") else "trained"}
    out["overhead"] = wall - train
    return out


KEYS = ["wall", "training", "overhead", "kernel start, papermill", "imports", "config", "run outside training", "figures"]


def bench_overhead(rows, repeat, runs, warm):
    from ltsei.orchestration.kernels import warm_kernels
    from ltsei.core.storage import lock_beside
    label = f"warm kernels ({warm} kept ready)" if warm else "cold kernels (a kernel started per row)"
    print(f"\n== row overhead, {label}: rows {rows} x {repeat}, profile {PROFILE}, back to back ({load()})")
    ex = executor(runs, 0, warm)
    first = plan(rows.split(",")[0], runs)[0]
    if warm: warm_kernels(warm).fill()
    t0 = time.time()
    with lock_beside(first.out_dir): ex(first)
    p = phases(first, time.time() - t0)
    print(f"first row (fills the data cache): {p['wall']:.1f} s, training {p['training']:.1f} s, overhead {p['overhead']:.1f} s")
    results, t_all = [], time.time()
    for k in range(repeat):
        for t in plan(rows, runs):
            t0 = time.time()
            with lock_beside(t.out_dir): ex(t)
            results.append((t.name, phases(t, time.time() - t0)))
    t_all = time.time() - t_all
    if warm: warm_kernels(warm).close()
    print(f"{'row':24s} " + " ".join(f"{k[:12]:>12s}" for k in KEYS) + "  stage 1")
    for name, p in results:
        print(f"{name:24s} " + " ".join(f"{p[k]:12.2f}" for k in KEYS) + f"  {p['stage 1']}")
    mean = {k: sum(p[k] for _, p in results) / len(results) for k in KEYS}
    print(f"{'mean':24s} " + " ".join(f"{mean[k]:12.2f}" for k in KEYS))
    print(f"{label}: overhead per row {mean['overhead']:.2f} s against the target of at most {TARGET:.0f} s: "
          f"{'MET' if mean['overhead'] <= TARGET else 'NOT MET'}; {len(results)} rows back to back in {t_all:.1f} s ({load()})")
    return mean


def bench_packing(rows, levels, runs, launcher, warm):
    import torch
    from ltsei.orchestration import reproduce  # noqa: F401  (every launcher registered)
    from ltsei.orchestration.launchers import LaunchOptions, launch_row_runs
    cores, cuda = os.cpu_count() or 1, torch.cuda.is_available()
    print(f"\n== rows per hour, {len(rows.split(','))} smoke rows, {'one GPU' if cuda else 'the CPU'} "
          f"({cores} cores), launcher {launcher}, {'warm' if warm else 'cold'} kernels ({load()})")
    out = {}
    for c in levels:
        shutil.rmtree(runs / PROFILE, ignore_errors=True)
        shutil.rmtree(runs / "cache" / "stage1", ignore_errors=True)     # data cache stays warm, stage 1 trains
        tasks = plan(rows, runs)
        threads = max(1, cores // c) if c > 1 else 0
        opts = LaunchOptions(jobs=c, gpus_per_run=(1 / c if cuda else None), runs_dir=runs, profile=PROFILE,
                             progress=False, ray_address=None)
        t0 = time.time()
        launch_row_runs(launcher, tasks, executor(runs, threads, max(2, c) if warm else 0), opts)
        wall = time.time() - t0
        bad = [(t.name, t.error) for t in tasks if t.status != "done"]
        if bad: print(f"  {c} per device: failures {bad}")
        out[c] = len(tasks) / wall * 3600
        print(f"  {c} run(s) at once: {len(tasks)} rows in {wall:.1f} s = {out[c]:.0f} rows/hour "
              f"({threads or 'all'} thread(s) each; {load()})")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="s1_1_ce,s3_1_crt", help="rows for the overhead (default: one single-stage, one cRT)")
    ap.add_argument("--repeat", type=int, default=2, help="times each row runs (default: 2)")
    ap.add_argument("--pack", type=int, nargs="*", default=[1, 2, 4], help="runs at once per device (default: 1 2 4)")
    ap.add_argument("--pack-rows", default="s1_1_ce,s2_1_focal,s2_2_bs,s2_3_sqrt", help="rows for the packing part")
    ap.add_argument("--launcher", default="local", help="launcher for the packing part (local or ray)")
    ap.add_argument("--runs-dir", default=None, help="scratch results folder (default: a temporary one, removed)")
    ap.add_argument("--no-overhead", action="store_true", help="skip the overhead part")
    ap.add_argument("--warm", type=int, default=2, help="warm kernels kept ready in the overhead part (default: 2)")
    ap.add_argument("--kernels", nargs="*", default=["cold", "warm"], choices=["cold", "warm"],
                    help="measure with a kernel started per row (cold, today) and/or warm kernels (default: both)")
    a = ap.parse_args(argv)
    runs = Path(a.runs_dir) if a.runs_dir else Path(tempfile.mkdtemp(prefix="bench_rows-"))
    try:
        for kind in a.kernels:
            if not a.no_overhead: bench_overhead(a.rows, a.repeat, runs, warm=a.warm if kind == "warm" else 0)
        for kind in a.kernels:
            if a.pack: bench_packing(a.pack_rows, a.pack, runs, a.launcher, warm=kind == "warm")
    finally:
        if not a.runs_dir: shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
