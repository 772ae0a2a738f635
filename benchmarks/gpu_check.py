"""The first thing to run on a GPU (issue 36): ltsei's CUDA path checked end to end, one summary line per check.

    .venv/bin/python benchmarks/gpu_check.py                 # on a machine with a GPU: about 10 minutes at most
    .venv/bin/python benchmarks/gpu_check.py --allow-no-gpu  # anywhere: exit 0 where there is no GPU

Checks, in order (each prints `[gpu_check] <check>: ok|FAIL|skipped - <what was found> (<seconds> s)`):

1. `gpu`: a CUDA device is there (the first GPU step; without one the script says so in one line and stops:
   exit 0 with --allow-no-gpu, 1 otherwise).
2. `device tests`: `pytest -k "gpu or cuda"` (tests/test_gpu.py, faked CUDA, and tests/test_gpu_device.py, on the GPU).
3. `smoke reproduce`: `ltsei reproduce --profile smoke` on a few rows, on the GPU (packed one run per GPU).
4. `bit for bit`: the same smoke run twice in two processes: predictions and metrics identical.
5. `paper step`: the paper profile's stage-1 training step (batch 256, 4,800-sample frames, precision auto) for
   ConvNetADSB and MixtureOfExpertsConvNet: milliseconds per step, steps per second and peak GPU memory; ODIN's peak
   memory at its batch of 128.
6. `precision fp32|bf16|fp16`: one quick-profile row (CE, stage 1 only) in each precision: its time and accuracy.
7. `packing`: N smoke runs at once on the N visible GPUs (`--jobs N`), each on its own GPU.

A check that would start after `--budget` seconds (default 540) is skipped and says so. Exit code: 0 when every
check that ran passed, 1 when one failed or when there is no GPU (0 then with --allow-no-gpu). Nothing here has run
on a GPU yet: no GPU had been lent to the project when it was written, so its time limits are guesses.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_ROWS = "s4_1_convnet,s4_2_moe_ce"


def say(check: str, status: str, what: str, seconds: float | None = None) -> None:
    t = f" ({seconds:.0f} s)" if seconds is not None else ""
    print(f"[gpu_check] {check}: {status} - {what}{t}", flush=True)


def run(cmd: list[str], timeout: float, env: dict | None = None, cwd=ROOT) -> tuple[int, str]:
    "A command's exit code and its output (the tail, for a failure's line); 124 on timeout."
    try:
        p = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        return p.returncode, p.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + f"\n(timed out after {timeout:.0f} s)"


def last_line(out: str) -> str:
    lines = [l for l in out.strip().splitlines() if l.strip()]
    return lines[-1][:200] if lines else "(no output)"


def ltsei_cmd(*args: str) -> list[str]:
    "The `ltsei` command of this Python's environment (the console script beside its interpreter)."
    script = Path(sys.executable).with_name("ltsei")
    if script.is_file(): return [str(script), *args]
    return [sys.executable, "-c", "import sys; from ltsei.cli import main; sys.exit(main())", *args]


def main_py(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "main.py"), *overrides]


# ---- the checks ----------------------------------------------------------------------------------------------------

def check_gpu(a) -> bool:
    "The first GPU step: is there a CUDA device?"
    import torch
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "a CPU-only build"
        say("gpu", "skipped", f"no GPU present (torch {torch.__version__}, {build}): nothing measured on a GPU")
        return False
    n = torch.cuda.device_count()
    names = [f"{torch.cuda.get_device_name(i)} (sm {'.'.join(map(str, torch.cuda.get_device_capability(i)))}, "
             f"{torch.cuda.get_device_properties(i).total_memory / 2**30:.0f} GiB)" for i in range(n)]
    say("gpu", "ok", f"{n} GPU(s): {'; '.join(names)}; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}")
    return True


def check_device_tests(a, work: Path) -> bool:
    t = time.time()
    rc, out = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "gpu or cuda",
                   "tests/test_gpu.py", "tests/test_gpu_device.py"], timeout=180)
    say("device tests", "ok" if rc == 0 else "FAIL", last_line(out), time.time() - t)
    return rc == 0


def check_smoke_reproduce(a, work: Path) -> bool:
    t = time.time()
    rc, out = run(ltsei_cmd("reproduce", "--profile", "smoke", "--rows", SMOKE_ROWS, "--seeds", "1",
                            "--runs-dir", str(work / "reproduce"), "--no-report"), timeout=240)
    runs = sorted((work / "reproduce" / "smoke").rglob("metrics.json"))
    dev = {json.loads(p.read_text()).get("runtime", "?") for p in runs}
    ok = rc == 0 and len(runs) >= 2 and all(str(d).startswith("cuda") for d in dev)
    say("smoke reproduce", "ok" if ok else "FAIL", f"{len(runs)} run(s) on {', '.join(map(str, dev)) or '?'}; "
        f"{last_line(out)}", time.time() - t)
    return ok


def _smoke_run(work: Path, name: str) -> tuple[int, str, Path]:
    out_dir = work / name
    rc, out = run(main_py("profile=smoke", "loss.name=LDAMLoss", "loss.ldam_scale=30", "stage2.enabled=true",
                          "stage1.reuse=false", f"stage1.cache_dir={work / name}_s1", f"data.cache_dir={work / 'data'}",
                          "seed=3", f"hydra.run.dir={out_dir}"), timeout=180)
    return rc, out, out_dir


def check_bit_for_bit(a, work: Path) -> bool:
    import numpy as np
    t = time.time()
    (rc1, out1, d1), (rc2, out2, d2) = _smoke_run(work, "same_a"), _smoke_run(work, "same_b")
    if rc1 or rc2:
        say("bit for bit", "FAIL", f"a run failed: {last_line(out1 if rc1 else out2)}", time.time() - t); return False
    p1, p2 = np.load(d1 / "predictions.npz"), np.load(d2 / "predictions.npz")
    diff = [k for k in p1.files if not np.array_equal(p1[k], p2[k])]
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (d1, d2))
    same_metrics = m1["test"] == m2["test"] and m1["best_epoch"] == m2["best_epoch"]
    ok = not diff and same_metrics
    say("bit for bit", "ok" if ok else "FAIL", (f"two smoke runs (LDAM, stage 2 MoE-LTSEI) identical: {len(p1.files)} "
        f"prediction arrays, test metrics, best epoch; {m1.get('runtime')}") if ok else
        f"differ in {diff or 'metrics'} ({m1.get('runtime')})", time.time() - t)
    return ok


def check_paper_step(a, work: Path) -> bool:
    import torch
    from ltsei.experiments.config import compose_config
    from ltsei.learn.losses import create_loss
    from ltsei.learn.models import create_model
    from ltsei.learn.openset import ODIN_BATCH_SIZE, odin_scores
    from ltsei.learn.train import make_optimizer, make_runtime
    t, ok, parts = time.time(), True, []
    cfg = compose_config(["profile=paper"])
    C, L, B = int(cfg.data.synth.num_emitters), int(cfg.data.target_length or 4800), int(cfg.data.batch_size)
    rt = make_runtime(None, str(cfg.training.precision), cfg.training.channels_last)
    for name in ("ConvNetADSB", "MixtureOfExpertsConvNet"):
        try:
            torch.manual_seed(0)
            model = create_model(name, C, L, compose_config(["profile=paper", f"model.name={name}"]).model).to(rt.device)
            if rt.channels_last: model = model.to(memory_format=torch.channels_last)   # as ltsei.experiments.run does
            loss_fn = create_loss("CrossEntropy", [100] * C, label_smoothing=0.0).to(rt.device)
            opt = make_optimizer(model.parameters(), "SGD", 0.1, 0.9, 5e-4)
            scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype is torch.float16 else None
            x, y = torch.randn(B, 2, L, device=rt.device), torch.randint(0, C, (B,), device=rt.device)
            torch.cuda.reset_peak_memory_stats()
            def step():
                with rt.autocast():
                    out = model(x); loss = loss_fn(out, y)
                    if hasattr(model, "aux_loss"): loss = loss + model.aux_loss()
                opt.zero_grad(set_to_none=True)
                if scaler: scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
                else: loss.backward(); opt.step()
            for _ in range(5): step()
            torch.cuda.synchronize(); t0 = time.time(); n = 20
            for _ in range(n): step()
            torch.cuda.synchronize(); ms = (time.time() - t0) / n * 1000
            peak = torch.cuda.max_memory_allocated() / 2**30
            model.eval(); torch.cuda.reset_peak_memory_stats()
            odin_scores(lambda xb: model(xb), x[:ODIN_BATCH_SIZE].cpu(), 1000.0, 0.001, 1024, rt.device)
            odin = torch.cuda.max_memory_allocated() / 2**30
            parts.append(f"{name} {ms:.1f} ms/step ({1000 / ms:.1f} steps/s), peak {peak:.1f} GiB, ODIN peak {odin:.1f} GiB")
            del model, opt, x, y
            torch.cuda.empty_cache()
        except Exception as e:
            ok = False; parts.append(f"{name} failed: {type(e).__name__}: {str(e)[:120]}")
    say("paper step", "ok" if ok else "FAIL", f"batch {B}, L {L}, {rt.describe()}: " + "; ".join(parts), time.time() - t)
    return ok


def check_precisions(a, work: Path) -> bool:
    all_ok = True
    for prec in ("fp32", "bf16", "fp16"):
        t = time.time()
        d = work / f"quick_{prec}"
        rc, out = run(main_py("profile=quick", "loss.name=CrossEntropy", "sampling.name=none", "stage2.enabled=false",
                              f"training.precision={prec}", f"data.cache_dir={work / 'data'}",
                              f"stage1.cache_dir={work / 's1_quick'}", f"hydra.run.dir={d}"), timeout=a.row_timeout)
        ok = rc == 0 and (d / "metrics.json").is_file()
        what = last_line(out)
        if ok:
            m = json.loads((d / "metrics.json").read_text())
            what = (f"quick CE row: balanced accuracy {100 * m['test']['balanced_acc']:.1f} %, {m['precision']['resolved']}, "
                    f"{m.get('runtime')}")
        say(f"precision {prec}", "ok" if ok else "FAIL", what, time.time() - t)
        all_ok &= ok
    return all_ok


def check_packing(a, work: Path) -> bool:
    import torch
    n = torch.cuda.device_count()
    t = time.time()
    rc, out = run(ltsei_cmd("reproduce", "--profile", "smoke", "--rows", "s4_1_convnet", "--seeds", str(max(2, n)),
                            "--jobs", str(n), "--runs-dir", str(work / "packing"), "--no-report"), timeout=240)
    line = next((l for l in out.splitlines() if "run(s) at once on GPU(s)" in l), "")
    ok = rc == 0 and line.count("(x1)") == n
    say("packing", "ok" if ok else "FAIL", f"{n} GPU(s), --jobs {n}: {line.strip() or last_line(out)}", time.time() - t)
    return ok


CHECKS = [("device tests", check_device_tests), ("smoke reproduce", check_smoke_reproduce),
          ("bit for bit", check_bit_for_bit), ("paper step", check_paper_step),
          ("precisions", check_precisions), ("packing", check_packing)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--allow-no-gpu", action="store_true", help="exit 0 where there is no GPU (after saying so)")
    p.add_argument("--budget", type=float, default=540, help="seconds: a check that would start later is skipped")
    p.add_argument("--row-timeout", type=float, default=150, help="seconds for each quick row of `precision`")
    p.add_argument("--only", default=None, help="comma-separated check names to run (default: all)")
    a = p.parse_args(argv)
    t0 = time.time()
    sys.path.insert(0, str(ROOT))
    import torch
    import ltsei
    say("setup", "ok", f"python {sys.version.split()[0]}, torch {torch.__version__}, ltsei from {Path(ltsei.__file__).parent.name}/")
    if not check_gpu(a): return 0 if a.allow_no_gpu else 1
    only = None if a.only is None else {s.strip() for s in a.only.split(",")}
    failed = []
    with tempfile.TemporaryDirectory(prefix="ltsei-gpu-check-") as tmp:
        work = Path(tmp)
        for name, fn in CHECKS:
            if only is not None and name not in only: continue
            if time.time() - t0 > a.budget:
                say(name, "skipped", f"past the budget of {a.budget:.0f} s"); continue
            try: ok = fn(a, work)
            except Exception as e:
                say(name, "FAIL", f"{type(e).__name__}: {str(e)[:200]}"); ok = False
            if not ok: failed.append(name)
    say("summary", "FAIL" if failed else "ok", (f"failed: {', '.join(failed)}" if failed else "every check passed"),
        time.time() - t0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
