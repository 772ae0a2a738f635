"""Stage-2 time per epoch: the head trained on cached features against the uncached path.

With `stage2.freeze_bn=true` the frozen backbone is a fixed function of the input, so ltsei
computes its features once and trains the head on them (`stage2.cache_features=true`, the
default). The uncached path runs the backbone in every step. Both are timed on the quick
profile's data and a ConvNetADSB backbone (its weights do not change the cost), for the cRT and
MoE-LTSEI heads, over the same number of epochs.

    .venv/bin/python benchmarks/bench_stage2.py [--epochs 3] [--profile quick]

Target: the cached path at least 20x faster per stage-2 epoch at the quick scale.
"""
import argparse, time

import torch

from ltsei.experiments.config import compose_config
from ltsei.signals.data import load_data
from ltsei.learn.models import create_model
from ltsei.learn.moe_ltsei import loss_from_config
from ltsei.learn.samplers import sampler_from_config
from ltsei.learn.stage2 import train_stage2
from ltsei.learn.train import make_runtime

TARGET = 20.0


def time_mode(cfg, data, rt, cached: bool):
    model = create_model(cfg.model.name, data.num_classes, data.length, cfg.model).to(rt.device)
    if rt.channels_last: model = model.to(memory_format=torch.channels_last)
    s2 = cfg.stage2
    loss = loss_from_config(data.class_counts, cfg, 2)
    sampler = sampler_from_config(cfg, 2, data.train.y, 0)
    from omegaconf import OmegaConf
    s2 = OmegaConf.merge(s2, {"cache_features": cached})
    res = train_stage2(model, data, s2, loss_fn=loss, sampler=sampler, rt=rt, batch_size=cfg.data.batch_size,
                       eval_batch_size=cfg.training.eval_batch_size, momentum=0.9, weight_decay=5e-4,
                       progress=False, seed=0, experiment=cfg.experiment)
    assert res.cached == cached
    return res.fit.seconds / res.fit.epochs_run, res.feature_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--profile", default="quick")
    a = ap.parse_args()
    rows = {"crt": ["stage2.mode=crt", "stage2.loss=CrossEntropy", "stage2.sampler=class_uniform"],
            "moe_ltsei": ["stage2.mode=moe_ltsei", "stage2.loss=MoELTSEILoss"]}
    ok = True
    for mode, ov in rows.items():
        cfg = compose_config([f"profile={a.profile}", *ov, f"stage2.epochs={a.epochs}",
                              f"stage2.warmup_epochs={min(5, a.epochs)}", "scale.epoch_scale=1.0"])
        data = load_data(cfg.data, cfg.seed)
        rt = make_runtime(cfg.gpus, cfg.training.precision, cfg.training.channels_last)
        unc, _ = time_mode(cfg, data, rt, cached=False)
        cac, feat = time_mode(cfg, data, rt, cached=True)
        ratio = unc / cac
        ok &= ratio >= TARGET
        print(f"{a.profile} {mode:9s} train {len(data.train.y)} val {len(data.val.y)}: uncached {unc:7.3f} s/epoch   "
              f"cached {cac:7.4f} s/epoch (+ {feat:.2f} s once for the features of all splits)   "
              f"ratio {ratio:6.1f}x  (target >= {TARGET:.0f}x: {'PASS' if ratio >= TARGET else 'FAIL'})")
    print("overall:", "PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
