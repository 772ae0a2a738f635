"""Training-step throughput of a backbone for the four convolution set-ups (conv_impl x precision).

    python benchmarks/bench_conv.py                        # ConvNetADSB, L = 960 and 4800, batch 256, CPU
    python benchmarks/bench_conv.py --lengths 960 --batch 128 --steps 5
    python benchmarks/bench_conv.py --device cuda --models all

One step = forward, cross-entropy (+ aux_loss), backward, SGD (momentum 0.9, weight decay 5e-4) on a fixed
random batch. A few warm-up steps, then `--steps` timed steps, the four set-ups taking turns step by step;
the table gives samples/s and the ratio to fp32 conv1d, from the median step time. On a shared CPU the
numbers are noisy: run it when the machine is otherwise idle (two torch threads on two cores that other
processes also use slow down badly).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ltsei.learn.models import MODELS, ModelConfig, copy_between_impls, create_model, log_spectrum

SETUPS = [  # (label, conv_impl, channels_last, bf16 autocast)
    ("fp32 conv1d", "conv1d", False, False),
    ("fp32 conv2d channels_last", "conv2d", True, False),
    ("bf16 conv2d channels_last", "conv2d", True, True),
    ("bf16 conv1d", "conv1d", False, True),
]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(name: str, length: int, batch: int, impl: str, channels_last: bool, bf16: bool,
              device: torch.device, num_classes: int):
    "A closure doing one training step of a fresh model on a fixed random batch."
    torch.manual_seed(0)
    model = create_model(name, num_classes, length, ModelConfig(name=name, conv_impl=impl)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 2, length, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    model.train()

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y) + model.aux_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def throughputs(name: str, length: int, batch: int, device: torch.device, warmup: int, steps: int,
                num_classes: int) -> list[float]:
    """samples/s of each set-up in SETUPS from its median step time. The set-ups take turns step by step,
    so that load from other processes hits them all alike."""
    fns = [make_step(name, length, batch, impl, cl, bf, device, num_classes) for _, impl, cl, bf in SETUPS]
    for fn in fns:
        for _ in range(warmup):
            fn()
    times = [[] for _ in fns]
    for _ in range(steps):
        for fn, ts in zip(fns, times):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t0)
    return [batch / sorted(ts)[len(ts) // 2] for ts in times]


def check(names: list[str], length: int, device: torch.device) -> None:
    "On `device`: conv1d == conv2d (fp32, TF32 off), channels_last + bf16 close to fp32, FFT kept in fp32."
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(8, 2, length, device=device)
    for name in names:
        torch.manual_seed(0)
        m1 = create_model(name, 10, length, ModelConfig(conv_impl="conv1d")).to(device).eval()
        m2 = copy_between_impls(m1, create_model(name, 10, length, ModelConfig(conv_impl="conv2d"))).to(device).eval()
        with torch.no_grad():
            y1, y2 = m1(x), m2(x)
            m2 = m2.to(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                yb = m2(x)
                spec = log_spectrum(x)
        d = float((y1 - y2).abs().max() / y1.abs().max())
        rel = float((yb.float() - y1).norm() / y1.norm())
        ok = d < 1e-4 and rel < 0.05 and spec.dtype == torch.float32 and yb.dtype == torch.bfloat16
        print(f"  check {name:24s} L={length}: conv1d vs conv2d max rel diff {d:.1e}, bf16+channels_last "
              f"rel err {rel:.1e}: {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            raise SystemExit(f"check failed for {name}")
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ConvNetADSB"], help="backbone names, or 'all'")
    ap.add_argument("--lengths", nargs="+", type=int, default=[960, 4800])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-classes", type=int, default=60)
    ap.add_argument("--check", action="store_true", help="first check conv1d == conv2d and bf16 on --device")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    names = sorted(MODELS) if args.models == ["all"] else args.models
    desc = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {desc}, batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps")
    if args.check:
        check(names, max(args.lengths), device)
    rows = []
    for name in names:
        for length in args.lengths:
            sps = throughputs(name, length, args.batch, device, args.warmup, args.steps, args.num_classes)
            for (label, *_), v in zip(SETUPS, sps):
                rows.append((name, length, label, v, v / sps[0]))
                print(f"  {name:24s} L={length:5d} {label:27s} {v:9.1f} samples/s  x{v / sps[0]:.2f}", flush=True)
    print()
    print(f"| model | L | set-up | samples/s | vs fp32 conv1d |")
    print(f"|---|---|---|---|---|")
    for name, length, label, sps, ratio in rows:
        print(f"| {name} | {length} | {label} | {sps:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
