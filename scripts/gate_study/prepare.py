"""Gate study, step 1: data + stage 1 (trained once, cached) + frozen features of train/val/test.

Run from the repository root:  python scripts/gate_study/prepare.py [--work runs/gate_study] [extra overrides ...]
Writes WORK/features_<stage1key>.pt (tensors only; read back with weights_only=True) and WORK/latest.txt."""
import argparse, json, sys, time
from pathlib import Path
import torch
from omegaconf import OmegaConf

GUIDE_MOE = ("loss.name=CrossEntropy sampling.name=none stage2.enabled=true stage2.mode=moe_ltsei stage2.epochs=100 "
             "stage2.lr=0.1 stage2.loss=MoELTSEILoss stage2.moe.num_experts=3 stage2.moe_loss.scale=30.0 "
             "stage2.moe_loss.margin_m0=0.35 stage2.moe_loss.lambda_gate=1.0 stage2.freeze_bn=true profile=quick").split()

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/gate_study")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from ltsei.config import compose_config, stage1_key
    from ltsei.data import load_data
    from ltsei.train import make_runtime
    from ltsei.run import get_stage1
    from ltsei.stage2 import compute_features
    work = Path(a.work); work.mkdir(parents=True, exist_ok=True)
    cfg = compose_config(GUIDE_MOE + [f"data.cache_dir={work}/data", f"stage1.cache_dir={work}/stage1"] + a.overrides)
    key = stage1_key(cfg)
    out = work / f"features_{key}.pt"
    if out.is_file():
        print("exists:", out); (work / "latest.txt").write_text(str(out)); return
    rt = make_runtime(None, "fp32", "auto")
    data = load_data(cfg.data, cfg.seed)
    print(data.summary())
    t0 = time.time()
    model, info = get_stage1(cfg, data, rt, work / "stage1_out", progress=False)
    print(f"stage 1: {info['source']} in {time.time() - t0:.0f}s, best epoch {info.get('best_epoch')}")
    feats = {k: compute_features(model, getattr(data, k).x, 1024, rt) for k in ("train", "val", "test")}
    payload = {"stage1_key": key, "config": OmegaConf.to_yaml(cfg), "counts": torch.as_tensor([int(c) for c in data.class_counts]),
               **{f"x_{k}": v for k, v in feats.items()}, **{f"y_{k}": getattr(data, k).y.clone() for k in feats},
               "groups_json": json.dumps({k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in data.groups.items()})}
    tmp = out.with_suffix(".tmp"); torch.save(payload, tmp); tmp.replace(out)
    (work / "latest.txt").write_text(str(out))
    print("wrote", out, {k: tuple(v.shape) for k, v in feats.items()})

if __name__ == "__main__":
    main()
