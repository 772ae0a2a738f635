"""Per-frame costs for the time estimates (`ltsei.experiments.estimate`): writes benchmarks/epoch_costs.json.

    .venv/bin/python benchmarks/bench_epochs.py [--out benchmarks/epoch_costs.json] [--steps 3]

With one CPU thread (a run's default `training.num_threads=1`) and the run's own set-up
(`training.precision=auto`, channels-last), for every backbone at the frame lengths of the three
profiles (384, 768, 4800 samples): a training step (forward, backward, SGD) per frame, and an
evaluation pass per frame; then the synthetic generator per sample, one MoE-LTSEI head step on
cached features, and this CPU's fp32 matrix-multiply rate (`ltsei.experiments.estimate.gemm_rate`, measured
before and after every measurement: each cost is stored as if measured at the mean rate, so that a
busy moment while measuring does not inflate it) to scale the costs by on another machine, or on this
one under another load. The file records the CPU,
torch and the date. A fixed per-run overhead (kernel, imports, data loading, writing results) is
kept from the last file (`--overhead` to set it), and so is the time of the tables and the report
(`report_s`), a kernel's start (`kernel_start_s`) and the stage-2 heads' cost per sample (`stage2_s_per_sample`):
they come from whole `ltsei reproduce` runs (benchmarks/bench_estimate.py), not from this script. `probe_s_per_frame`:
the estimates' training-step probe (`ltsei.experiments.estimate.step_probe`) at the costs' scale, what a machine is compared by.
"""
import argparse, datetime, json, time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ltsei.experiments.estimate import COSTS_FILE, cpu_name, gemm_rate, step_probe
from ltsei.learn.models import MODELS, ModelConfig, create_model
from ltsei.learn.moe_ltsei import MoEHead
from ltsei.signals.synth import SYNTH_PRESETS, make_fingerprints, synth_frames
from ltsei.learn.train import make_optimizer, make_runtime

LENGTHS = {384: 128, 768: 128, 4800: 32}      # frame length: timed batch (per-frame cost, so a smaller batch at 4800)


def train_cost(name, L, batch, steps, classes=20):
    rt = make_runtime(None, "auto", "auto")
    model = create_model(name, classes, L, ModelConfig())
    if rt.channels_last: model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), "SGD", 0.01, 0.9, 5e-4)
    x, y = torch.randn(batch, 2, L), torch.randint(0, classes, (batch,))
    lossf = nn.CrossEntropyLoss()
    model.train()
    def step():
        with rt.autocast():
            out = model(x)
            out = out[0] if isinstance(out, tuple) else getattr(out, "logits", out)
            loss = lossf(out, y)
            if hasattr(model, "aux_loss"): loss = loss + model.aux_loss()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    step()
    t = time.perf_counter()
    for _ in range(steps): step()
    tr = (time.perf_counter() - t) / (steps * batch)
    model.eval()
    xe = torch.randn(4 * batch, 2, L)
    with torch.no_grad():
        model(xe[:batch])
        t = time.perf_counter(); model(xe); ev = (time.perf_counter() - t) / len(xe)
    return tr, ev


def synth_cost(preset, n=48):
    cfg = SYNTH_PRESETS[preset]
    fp = make_fingerprints(cfg).iloc[0].to_dict()
    synth_frames(cfg, fp, 4, np.random.default_rng(0))
    t = time.perf_counter(); synth_frames(cfg, fp, n, np.random.default_rng(1))
    return (time.perf_counter() - t) / (n * cfg.length)


def head_cost(steps=200, dim=256, classes=60, batch=32):
    head = MoEHead(dim, classes, 3, 128, 0.1, True, 30.0, detach_gate=False, init="seed", gate_noise=0.0)
    opt = make_optimizer(head.parameters(), "SGD", 0.1, 0.9, 5e-4)
    f, y = torch.randn(batch, dim), torch.randint(0, classes, (batch,))
    def step():
        out = head(f)
        loss = nn.functional.cross_entropy(out.logits, y) if hasattr(out, "logits") else nn.functional.cross_entropy(out[0], y)
        opt.zero_grad(); loss.backward(); opt.step()
    step()
    t = time.perf_counter()
    for _ in range(steps): step()
    return (time.perf_counter() - t) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / COSTS_FILE))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--overhead", type=float, default=None, help="seconds per run outside training at this rate (default: keep the file's)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    old = json.loads(Path(a.out).read_text()) if Path(a.out).exists() else {}
    rates = []
    train, evals = {}, {}
    for name in sorted(MODELS):
        for L, batch in LENGTHS.items():
            r0 = gemm_rate(1, seconds=0.3)
            tr, ev = train_cost(name, L, batch, a.steps if L < 4800 else max(1, a.steps - 1))
            rates.append((r0 + gemm_rate(1, seconds=0.3)) / 2)           # the machine's rate while this was measured
            train.setdefault(name, {})[str(L)] = (tr, rates[-1]); evals.setdefault(name, {})[str(L)] = (ev, rates[-1])
            print(f"{name:26s} L={L:5d}  train {tr * 1e3:8.3f} ms/frame  eval {ev * 1e3:7.3f} ms/frame  (GEMM {rates[-1]:.1f} GF/s)", flush=True)
    probes = [(step_probe(1), (gemm_rate(1, seconds=0.3) + gemm_rate(1, seconds=0.3)) / 2) for _ in range(3)]   # the estimates' probe
    r0 = gemm_rate(1, seconds=0.3)
    synth = {p: synth_cost(p) for p in ("paper", "quick")}
    head = head_cost()
    rates.append((r0 + gemm_rate(1, seconds=0.3)) / 2); r_last = rates[-1]
    ref = float(np.mean(rates))
    # every cost as if measured at the mean rate: a cost measured while the machine was busier (a lower rate) shrinks
    norm = lambda table: {m: {L: c * r / ref for L, (c, r) in per.items()} for m, per in table.items()}
    train, evals = norm(train), norm(evals)
    synth = {p: c * r_last / ref for p, c in synth.items()}; head *= r_last / ref
    out = dict(cpu=cpu_name(), threads=1, torch=torch.__version__, cpu_capability=torch.backends.cpu.get_cpu_capability(),
               measured=datetime.date.today().isoformat(), gemm_gflops=round(ref, 2),
               note="measured by benchmarks/bench_epochs.py; seconds per frame (train: one training step's share; eval: forward only)",
               train_s_per_frame=train, eval_s_per_frame=evals,
               synth_s_per_sample=float(np.mean(list(synth.values()))), stage2_s_per_step=head,
               probe_s_per_frame=float(np.mean([p * r / ref for p, r in probes])),   # the step probe at the costs' scale
               run_overhead_s=a.overhead if a.overhead is not None else old.get("run_overhead_s", 5.0),
               report_s=old.get("report_s", 20.0))
    for k in ("kernel_start_s", "stage2_s_per_sample"):      # fitted to whole runs (benchmarks/bench_estimate.py): kept
        if k in old: out[k] = old[k]
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"GEMM {min(rates):.1f}-{max(rates):.1f} GF/s (mean {np.mean(rates):.1f}); synth {synth}; MoE head step {head * 1e3:.2f} ms; written {a.out}")


if __name__ == "__main__":
    main()
