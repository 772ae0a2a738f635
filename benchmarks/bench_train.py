"""Training throughput: ltsei's training path against a plain PyTorch loop, same model and data.

The project's path is `ltsei.train.fit` (tensor batches by index_select, a class sampler, and the
set-up `training.precision=auto` picks on the CPU: fp32 with channels-last Conv2d(1, k) layers).
The plain loop is what most public code does: a DataLoader over a TensorDataset and an fp32
Conv1d model. Both train ConvNetADSB with SGD for the same number of steps on the same data.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 128] [--lengths 768 4800]

Target on the 2-core CPU: the project's path at least 2.5x the plain loop at both lengths.

The script also prints a roofline: the convolution and linear arithmetic of one training step
(forward multiply-adds x 2 flops x 3 for forward + backward), the rate each path reaches, and the
best square-matrix-multiply rate of this machine in fp32, bf16 and fp16. A path cannot run the
same arithmetic faster than that GEMM rate, so `GEMM peak / plain loop rate` bounds the ratio any
implementation of the same arithmetic can reach here.
"""
import argparse, time

import numpy as np
import torch
from torch import nn

from ltsei.losses import create_loss
from ltsei.models import ModelConfig, create_model
from ltsei.samplers import create_sampler
from ltsei.train import fit, make_optimizer, make_runtime

TARGET = 2.5


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
    "Best of `reps` square matrix multiplies of size n, in flop/s."
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter(); a @ b; best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def plain_loop(x, y, steps, batch, classes):
    model = create_model("ConvNetADSB", classes, x.shape[-1], ModelConfig(conv_impl="conv1d"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=True)
    lossf = nn.CrossEntropyLoss()
    model.train()
    done, t0 = 0, None
    while done < steps + 2:
        for xb, yb in dl:
            if done == 2: t0 = time.perf_counter()     # two warm-up steps
            loss = lossf(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
            done += 1
            if done == steps + 2: break
    return steps * batch / (time.perf_counter() - t0)


def project_path(x, y, steps, batch, classes):
    rt = make_runtime(None, "auto", "auto")
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
        marks.append(time.perf_counter()); return orig(out, yb)
    loss.forward = timed
    fit(model, xs, ys, loss_fn=loss, sampler=sampler, optimizer=opt, epochs=1, lr=0.01, warmup_epochs=0,
        batch_size=batch, rt=rt, validate=lambda m: {"acc": 0.0, "balanced_acc": 0.0}, progress=False)
    # time from the 3rd to the last loss call covers `steps - 1` full steps; extrapolate per step
    per_step = (marks[-1] - marks[2]) / (len(marks) - 3)
    return batch / per_step, rt.describe()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lengths", type=int, nargs="+", default=[768, 4800])
    ap.add_argument("--classes", type=int, default=20)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ConvNetADSB, batch {a.batch}, {a.steps} timed steps")
    peaks = {str(dt).removeprefix("torch."): gemm_peak(dt) for dt in (torch.float32, torch.bfloat16, torch.float16)}
    peak = max(peaks.values())
    print("GEMM peak of this machine: " + ", ".join(f"{k} {v / 1e9:.0f} GF/s" for k, v in peaks.items()))
    ok = True
    for L in a.lengths:
        g = torch.Generator().manual_seed(0)
        n = a.batch * (a.steps + 3)
        x = torch.randn(n, 2, L, generator=g)
        y = torch.randint(0, a.classes, (n,), generator=g)
        plain = plain_loop(x, y, a.steps, a.batch, a.classes)
        proj, desc = project_path(x, y, a.steps, a.batch, a.classes)
        ratio = proj / plain
        ok &= ratio >= TARGET
        print(f"L={L:5d}  plain DataLoader+fp32 Conv1d: {plain:8.1f} samples/s   ltsei ({desc}): {proj:8.1f} samples/s   "
              f"ratio {ratio:4.2f}x  (target >= {TARGET}x: {'PASS' if ratio >= TARGET else 'FAIL'})")
        fl = train_flops_per_sample(L, a.classes)
        print(f"         roofline: {fl / 1e9:.2f} GFLOP per sample; plain {plain * fl / 1e9:.0f} GF/s, ltsei {proj * fl / 1e9:.0f} GF/s; "
              f"best GEMM {peak / 1e9:.0f} GF/s caps any path doing these multiply-adds at {peak / (plain * fl):.2f}x the plain loop")
    print("overall:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
