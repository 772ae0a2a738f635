"""Training throughput: ltsei's training path against a plain PyTorch loop, same model and data, and the
roofline of this CPU for each precision it offers.

The project's path is `ltsei.learn.train.fit` (tensor batches by index_select, a class sampler, channels-last
Conv2d(1, k) layers, and the precision `training.precision=auto` resolves to on this CPU: bf16 with AMX,
fp32 without). The plain loop is what most public code does: a DataLoader over a TensorDataset and an
fp32 Conv1d model. Both train ConvNetADSB with SGD for the same number of steps on the same data.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 128] [--lengths 768 4800] [--threads 1]

Target on the 2-core CPU: the project's path at least 2.5x the plain loop at both lengths.

First the instruction set: the CPU model (lscpu), the flags that decide the precision (AVX-512, its
bf16 dot products, AMX tiles), torch's CPU capability, and what `auto` resolves to. Then the roofline:
the peak rate in fp32 and in bf16 (the better of a square matrix multiply and a wide channels-last
convolution, since oneDNN's convolutions beat torch's matrix multiply on some CPUs), measured in the same run with the same
thread count as the training steps (timed in CPU seconds of this process by default, so that other
jobs on a shared machine do not count; `--clock wall` for elapsed time), and the convolution and linear arithmetic of one training step
(forward multiply-adds x 2 flops x 3 for forward + backward). ltsei's stage-1 step is timed in each
precision and given as a fraction of the GEMM peak of that precision: the precision `auto` uses is
marked. A path cannot run the same arithmetic faster than that GEMM rate, so `GEMM peak / plain loop
rate` bounds the ratio any implementation of the same arithmetic can reach here.
"""
import argparse, platform, shutil, subprocess, time

import numpy as np
import torch
from torch import nn

from ltsei.learn.losses import create_loss
from ltsei.learn.models import ModelConfig, create_model
from ltsei.learn.samplers import create_sampler
from ltsei.experiments.config import TrainingConfig
from ltsei.learn.train import (PRECISIONS, cpu_flags, cpu_has_amx, fit, make_optimizer, make_runtime,
                         resolve_precision, torch_cpu_flags)

TARGET = 2.5
CLOCK = time.process_time   # CPU seconds of this process: other jobs on a shared machine do not count (--clock wall)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def cpu_model() -> str:
    "The CPU's model name: lscpu's, else /proc/cpuinfo's, else the platform's."
    if shutil.which("lscpu"):
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={"LC_ALL": "C"}).stdout
            for line in out.splitlines():
                if line.startswith("Model name:"): return line.split(":", 1)[1].strip()
        except (OSError, subprocess.SubprocessError): pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or "unknown"


def detect_isa() -> dict:
    "What decides the precision here: CPU model, the ISA flags present, torch's capability, AMX, and `auto`'s choice."
    flags = cpu_flags() | torch_cpu_flags()
    auto, reason = resolve_precision("auto", torch.device("cpu"))
    return {"model": cpu_model(), "flags": [f for f in ISA_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "amx": cpu_has_amx(flags),
            "auto": auto, "reason": reason}


def cpu_precisions(isa: dict) -> dict:
    "The precisions ltsei can train in on the CPU (fp32; bf16 autocast, natively with AMX or AVX-512-BF16), with how."
    bf16 = ("AMX tiles" if isa["amx"] else "AVX-512-BF16 dot products" if "avx512_bf16" in isa["flags"]
            else "emulated (no bf16 instructions)")
    return {"fp32": "FMA" + (" (AVX-512)" if "avx512f" in isa["flags"] else " (AVX2)"), "bf16": bf16}


def train_flops_per_sample(L, classes):
    """Multiply-adds of ConvNetADSB's convolution and linear layers for one sample, x 2 flops x 3 (forward
    and backward). Taps that fall on the zero padding are not counted: a path may skip them."""
    model = create_model("ConvNetADSB", classes, L, ModelConfig(conv_impl="conv1d")).eval()
    macs = []
    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            macs.append(mod.in_features * mod.out_features); return
        assert mod.stride == (1,) and mod.dilation == (1,), "the tap count below assumes stride 1, dilation 1"
        (k,), (p,), n = mod.kernel_size, mod.padding, inp[0].shape[-1]
        taps = sum(min(n, t - p + k) - max(0, t - p) for t in range(n))     # stride 1, dilation 1
        macs.append(mod.in_channels * mod.out_channels * taps)
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    with torch.no_grad(): model(torch.zeros(1, 2, L))
    for h in hs: h.remove()
    return 2 * 3 * sum(macs)


def gemm_peak(dtype, n=2048, reps=5):
    "Best of `reps` square matrix multiplies of size n, in flop/s (at torch's current thread count)."
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = CLOCK(); a @ b; best = min(best, CLOCK() - t)
    return 2 * n ** 3 / best


def conv_peak(dtype, reps=5, L=64, C=256, k=5, batch=128):
    """Best of `reps` forward passes of a wide channels-last Conv2d(1, k) (C -> C channels), in flop/s of its
    useful multiply-adds: oneDNN's direct convolution, which on some CPUs runs well above torch's matrix
    multiply (fp32 on the AMD development CPU: about 190 against 94 GF/s per core)."""
    conv = nn.Conv2d(C, C, (1, k), padding=(0, k // 2), bias=False).to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(batch, C, 1, L).to(dtype).to(memory_format=torch.channels_last)
    p = k // 2
    taps = sum(min(L, t - p + k) - max(0, t - p) for t in range(L))
    best = float("inf")
    with torch.no_grad():
        conv(x)
        for _ in range(reps):
            t = CLOCK(); conv(x); best = min(best, CLOCK() - t)
    return 2 * batch * C * C * taps / best


def layer_rates(L, precision, batch=128, classes=20, reps=3):
    """Each channels-last Conv2d(1, k) of ConvNetADSB alone, forward + backward on a batch: (in, out, k, length,
    useful GFLOP/s, seconds), timed like the steps. Shows which layers hold a step below the peak."""
    model = create_model("ConvNetADSB", classes, L, ModelConfig()).to(memory_format=torch.channels_last)
    shapes = []
    hs = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape))) for m in model.modules()
          if isinstance(m, nn.Conv2d)]
    with torch.no_grad(): model(torch.zeros(2, 2, L))
    for h in hs: h.remove()
    rows = []
    for conv, shape in shapes:
        x = torch.randn(batch, *shape[1:]).to(memory_format=torch.channels_last).requires_grad_()
        (k,), (p,), n = conv.kernel_size[1:], conv.padding[1:], shape[-1]
        taps = sum(min(n, t - p + k) - max(0, t - p) for t in range(n))
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"): y = conv(x)
            y.float().sum().backward()
        step(); best = float("inf")
        for _ in range(reps):
            t = CLOCK(); step(); best = min(best, CLOCK() - t)
        rows.append((conv.in_channels, conv.out_channels, k, n, 2 * 3 * batch * conv.in_channels * conv.out_channels * taps / best, best))
    return rows


def plain_loop(x, y, steps, batch, classes):
    model = create_model("ConvNetADSB", classes, x.shape[-1], ModelConfig(conv_impl="conv1d"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    lossf = nn.CrossEntropyLoss()
    model.train()
    done, t0 = 0, None
    while done < steps + 2:
        for xb, yb in dl:
            if done == 2: t0 = CLOCK()     # two warm-up steps
            loss = lossf(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
            done += 1
            if done == steps + 2: break
    return steps * batch / (CLOCK() - t0)


def project_path(x, y, steps, batch, classes, precision="auto"):
    "samples/s of `fit` on ConvNetADSB in `precision` (a `training.precision` value), and the runtime it used."
    rt = make_runtime(None, precision, "auto")
    model = create_model("ConvNetADSB", classes, x.shape[-1], ModelConfig())
    if rt.channels_last: model = model.to(memory_format=torch.channels_last)
    counts = np.bincount(y.numpy(), minlength=classes)
    n = batch * (steps + 2)
    xs, ys = x[:n], y[:n]           # one epoch of steps+2 batches
    sampler = create_sampler("none", ys, 1, None, None, None, torch.Generator().manual_seed(0))
    opt = make_optimizer(model.parameters(), "SGD", 0.01, 0.9, 5e-4)
    marks = []
    loss = create_loss("CrossEntropy", counts, label_smoothing=0.0)
    orig = loss.forward
    def timed(out, yb):
        marks.append(CLOCK()); return orig(out, yb)
    loss.forward = timed
    fit(model, xs, ys, loss_fn=loss, sampler=sampler, optimizer=opt, epochs=1, lr=0.01, warmup_epochs=0,
        batch_size=batch, rt=rt, validate=lambda m: {"acc": 0.0, "balanced_acc": 0.0}, progress=False)
    # time from the 3rd to the last loss call covers `steps - 1` full steps; extrapolate per step
    per_step = (marks[-1] - marks[2]) / (len(marks) - 3)
    return batch / per_step, rt


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lengths", type=int, nargs="+", default=[768, 4800])
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--threads", type=int, default=TrainingConfig().num_threads,
                    help="torch threads for the GEMM peaks and the steps (default: training.num_threads)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain DataLoader loop")
    ap.add_argument("--layers", action="store_true", help="also time each convolution alone in the precision auto uses")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="cpu: CPU seconds of this process (default; other jobs on the machine do not count), wall: elapsed")
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    torch.set_num_threads(a.threads)
    isa = detect_isa()
    offered = cpu_precisions(isa)
    print(f"CPU: {isa['model']}; flags: {' '.join(isa['flags']) or 'none of ' + ', '.join(ISA_FLAGS)}; "
          f"torch capability {isa['torch_capability']}; AMX: {'yes' if isa['amx'] else 'no'}")
    print(f"training.precision=auto -> {isa['auto']} ({isa['reason']})")
    print(f"torch {torch.__version__}, {a.threads} thread(s); ConvNetADSB, batch {a.batch}, {a.steps} timed steps; "
          f"{'rates per CPU second of this process' if a.clock == 'cpu' else 'rates per elapsed second'}")
    gemm = {p: gemm_peak(PRECISIONS[p] or torch.float32) for p in offered}
    conv = {p: conv_peak(PRECISIONS[p] or torch.float32) for p in offered}
    peaks = {p: max(gemm[p], conv[p]) for p in offered}
    print("roofline: the peak of each precision is the better of a 2048^3 matrix multiply and a 256-channel Conv2d(1, 5)")
    for p, how in offered.items():
        print(f"  {p:5s} peak {peaks[p] / 1e9:5.0f} GF/s (GEMM {gemm[p] / 1e9:4.0f}, conv {conv[p] / 1e9:4.0f})   "
              f"{how}{'   <- auto' if p == isa['auto'] else ''}")
    ok = True
    for L in a.lengths:
        g = torch.Generator().manual_seed(0)
        n = a.batch * (a.steps + 3)
        x = torch.randn(n, 2, L, generator=g)
        y = torch.randint(0, a.classes, (n,), generator=g)
        fl = train_flops_per_sample(L, a.classes)
        print(f"L={L:5d}: {fl / 1e9:.2f} GFLOP per sample (convolutions and linear layers, forward + backward)")
        rates = {}
        for p in offered:
            rates[p], rt = project_path(x, y, a.steps, a.batch, a.classes, p)
            gf = rates[p] * fl
            print(f"  ltsei stage-1 step ({rt.describe()}): {rates[p]:8.1f} samples/s = {gf / 1e9:5.0f} GF/s = "
                  f"{100 * gf / peaks[p]:3.0f} % of the {p} peak{'   <- auto' if p == isa['auto'] else ''}")
        if a.layers:
            rows = layer_rates(L, isa["auto"], a.batch, a.classes)
            total = sum(r[-1] for r in rows)
            for cin, cout, k, n, rate, sec in rows:
                print(f"    conv {cin:3d}->{cout:3d} k={k:2d} on {n:4d} samples: {rate / 1e9:5.0f} GF/s "
                      f"({100 * rate / peaks[isa['auto']]:3.0f} % of peak), {100 * sec / total:4.1f} % of the convolution time")
        if a.no_plain: continue
        plain = plain_loop(x, y, a.steps, a.batch, a.classes)
        ratio = rates[isa["auto"]] / plain
        ok &= ratio >= TARGET
        print(f"  plain DataLoader+fp32 Conv1d: {plain:8.1f} samples/s = {plain * fl / 1e9:5.0f} GF/s; ltsei (auto) / plain "
              f"{ratio:4.2f}x (target >= {TARGET}x: {'PASS' if ratio >= TARGET else 'FAIL'}); the peak caps any path "
              f"doing these multiply-adds at {max(peaks.values()) / (plain * fl):.2f}x the plain loop")
    if not a.no_plain: print("overall:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
