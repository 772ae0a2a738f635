"""Training throughput: ltsei's training path against a plain PyTorch loop, same model and data.

The project's path is `ltsei.train.fit` (tensor batches by index_select, a class sampler, bf16
autocast with channels-last Conv2d(1, k) layers, chosen by `training.precision=auto` on the CPU).
The plain loop is what most public code does: a DataLoader over a TensorDataset and an fp32
Conv1d model. Both train ConvNetADSB with SGD for the same number of steps on the same data.

    .venv/bin/python benchmarks/bench_train.py [--steps 12] [--batch 128] [--lengths 960 4800]

Target on the 2-core CPU: the project's path at least 2.5x the plain loop at both lengths.
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
    print("overall:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
