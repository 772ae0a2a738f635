"""Gate study, step 2: MoE-LTSEI stage-2 variants (100 epochs, the guide's settings otherwise) on cached
frozen stage-1 features, with routing metrics per epoch, a linear probe of frequency-group separability,
and cRT as the reference.

Run from the repository root (after prepare.py):
    OMP_NUM_THREADS=1 python scripts/gate_study/gate_study.py [--work runs/gate_study] [--seeds 0 1 2] [--only NAME ...]
Writes WORK/results.json and prints Markdown tables."""
import argparse, json, math, time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ltsei.losses import MoEOutput, CrossEntropy
from ltsei.metrics import compute_metrics
from ltsei.moe_ltsei import MoEHead, MoELTSEILoss, frequency_groups, routing_metrics
from ltsei.samplers import create_sampler
from ltsei.train import Runtime, fit, make_optimizer, evaluate

RT = Runtime(torch.device("cpu"), None, False)
# guide 5.1 with the quick profile's stage-2 batch (32); stage2 weight decay / momentum = training.*
GUIDE = dict(epochs=100, lr=0.1, warmup=5, batch=32, momentum=0.9, wd=5e-4, K=3, gate_hidden=128, gate_dropout=0.1,
             loss=dict(scale=30.0, beta=0.999, margin_m0=0.35, margin_m1=0.2, margin_gamma=0.5, diff_gamma=2.0,
                       diff_alpha=1.0, lambda_gate=1.0, lambda_lb=0.0))


class StudyHead(MoEHead):
    """MoEHead with study switches: gate_detach (the classification loss does not train the gate),
    oracle (the mixture uses the one-hot true group, passed as an extra last feature column)."""
    def __init__(self, *a, gate_detach=False, oracle=False, gate_init_std=None, **kw):
        super().__init__(*a, **kw)
        self.gate_detach, self.oracle = gate_detach, oracle
        if gate_init_std is not None:
            nn.init.normal_(self.gate[-1].weight, std=gate_init_std)

    def forward(self, f):
        grp = None
        if self.oracle: f, grp = f[:, :-1], f[:, -1].long()
        x = F.normalize(f, dim=1)
        gate_logits = self.gate(x)
        gate_probs = gate_logits.softmax(dim=1)
        mix = gate_probs.detach() if self.gate_detach else gate_probs
        if grp is not None and (grp >= 0).all(): mix = F.one_hot(grp, self.num_experts).to(f.dtype)
        cosine = torch.einsum("bk,bkc->bc", mix, self.expert_cosines(x))
        return MoEOutput(logits=self.scale * cosine, cosine=cosine, gate_logits=gate_logits, gate_probs=gate_probs)


class StudyLoss(nn.Module):
    """cls term of MoELTSEILoss (unchanged) + a gate term of one of these kinds:
    ce        guide: mean_i CE(gate_i, group(y_i))
    cb        class-balanced: CE weighted by w_g = N / (K N_g) (training group counts), weighted mean
    batchbal  every group present in the batch gets equal weight: mean over groups of the group-mean CE
    la        logit-adjusted: CE(gate_i + log pi_g, group) with pi_g the training group prior
    balbatch  CE on a separate class-uniform batch of training features (same size as the batch)
    """
    def __init__(self, counts, K, kind="ce", lambda_gate=1.0, cls_weight=1.0, head=None, x_train=None, y_train=None,
                 seed=0, lambda_lb=0.0, **loss_kw):
        super().__init__()
        self.base = MoELTSEILoss(counts, num_experts=K, **{**loss_kw, "lambda_gate": 0.0, "lambda_lb": 0.0})
        self.kind, self.lambda_gate, self.cls_weight, self.K, self.lambda_lb = kind, lambda_gate, cls_weight, K, lambda_lb
        self.groups = self.base.groups
        n = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        Ng = torch.zeros(K, dtype=torch.float64).index_add_(0, self.groups, n)
        self.register_buffer("gw", (n.sum() / (K * Ng)).float())
        self.register_buffer("logpi", (Ng / Ng.sum()).log().float())
        self.head, self.xtr, self.ytr = head, x_train, y_train
        if kind == "balbatch":
            self.by_class = [torch.nonzero(y_train == c).squeeze(1) for c in range(len(counts))]
            self.g = torch.Generator().manual_seed(1000 + seed)

    def set_epoch(self, e): self.base.set_epoch(e)

    def gate_term(self, out, y):
        t = self.groups[y]
        if self.kind == "ce": return F.cross_entropy(out.gate_logits, t)
        if self.kind == "cb": return F.cross_entropy(out.gate_logits, t, weight=self.gw)
        if self.kind == "la": return F.cross_entropy(out.gate_logits + self.logpi, t)
        if self.kind == "batchbal":
            ce = F.cross_entropy(out.gate_logits, t, reduction="none")
            return torch.stack([ce[t == k].mean() for k in range(self.K) if (t == k).any()]).mean()
        if self.kind == "balbatch":
            B = len(y)
            cls = torch.randint(0, len(self.by_class), (B,), generator=self.g)
            idx = torch.stack([self.by_class[c][torch.randint(0, len(self.by_class[c]), (1,), generator=self.g)][0] for c in cls.tolist()])
            xb = self.xtr[idx]
            if self.head.oracle: xb = xb[:, :-1]
            gl = self.head.gate(F.normalize(xb, dim=1))
            return F.cross_entropy(gl, self.groups[self.ytr[idx]])
        raise ValueError(self.kind)

    def forward(self, out, y, return_parts=False):
        p = self.base.parts(out, y)
        gate = self.gate_term(out, y)
        total = self.cls_weight * p["cls"] + self.lambda_gate * gate + self.lambda_lb * p["lb"]
        if return_parts: return dict(cls=p["cls"], gate=gate, total=total)
        return total


def load(work):
    path = Path((Path(work) / "latest.txt").read_text().strip())
    d = torch.load(path, map_location="cpu", weights_only=True)
    d["groups"] = json.loads(d.pop("groups_json"))
    return d


def sampler_for(name, y, epochs, seed):
    g = torch.Generator().manual_seed(seed)
    return create_sampler(name, y, epochs, None, 1.0, 0.0, g)


def test_summary(head, state, ev, y_test, groups, K) -> dict:
    "Test accuracies and routing of `head` with `state` loaded (`ev(\"test\")` evaluates it)."
    head.load_state_dict(state)
    t = ev("test")
    r = routing_metrics(t["_gate_probs"], y_test, groups, K)
    return {**{k: t[k] for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")},
            "route": r["routing_acc"], "route_group": r["routing_acc_per_group"], "usage": r["usage_argmax_frac"]}


def run_moe(D, name, seed=0, sampler="progressive_power", gate_kind="ce", lambda_gate=1.0, cls_weight=1.0,
            gate_detach=False, oracle=False, gate_init_std=None, gate_lr_mult=1.0, lr=None, epochs=None, track=True,
            lambda_lb=0.0):
    G = GUIDE
    epochs = epochs or G["epochs"]; lr = lr or G["lr"]
    counts = D["counts"].numpy(); C = len(counts); K = G["K"]
    groups = frequency_groups(counts, K)
    xs = {k: D[f"x_{k}"] for k in ("train", "val", "test")}
    ys = {k: D[f"y_{k}"] for k in ("train", "val", "test")}
    if oracle:   # extra column: true group at train time; -1 (use the gate) at val/test unless oracle_eval
        xs = {k: torch.cat([v, torch.as_tensor(groups[ys[k].numpy()], dtype=v.dtype)[:, None] if k == "train"
                            else -torch.ones(len(v), 1)], 1) for k, v in xs.items()}
    torch.manual_seed(seed)
    d = D["x_train"].shape[1]
    head = StudyHead(d, C, K, G["gate_hidden"], G["gate_dropout"], True, G["loss"]["scale"],
                     gate_detach=gate_detach, oracle=oracle, gate_init_std=gate_init_std)
    if oracle: head.feature_dim = d + 1
    loss = StudyLoss(counts, K, kind=gate_kind, lambda_gate=lambda_gate, cls_weight=cls_weight, head=head,
                     x_train=xs["train"], y_train=ys["train"], seed=seed, lambda_lb=lambda_lb,
                     **{k: v for k, v in G["loss"].items() if k not in ("lambda_gate", "lambda_lb")})
    if gate_lr_mult != 1.0:
        for p in head.gate.parameters(): p.register_hook(lambda g, m=gate_lr_mult: g * m)
    opt = make_optimizer(head.parameters(), "SGD", lr, G["momentum"], G["wd"])
    smp = sampler_for(sampler, ys["train"], epochs, 1 + seed)
    trace = []

    def ev(k, m=None):
        return evaluate(m or head, xs[k], ys[k], 1024, RT, C, D["groups"])

    def validate(m):
        v = ev("val", m)
        if track:
            t = ev("test", m)
            r = routing_metrics(t["_gate_probs"], ys["test"], groups, K)
            with torch.no_grad():
                m.eval(); otr = m(xs["train"][:, :] if not oracle else torch.cat([xs["train"][:, :-1], -torch.ones(len(xs["train"]), 1)], 1)); m.train()
            rtr = routing_metrics(otr.gate_probs, ys["train"], groups, K)
            trace.append(dict(val_bacc=v["balanced_acc"], test_bacc=t["balanced_acc"], test_few=t["few_acc"],
                              route_test=r["routing_acc"], route_test_group=r["routing_acc_per_group"],
                              usage_test=r["usage_argmax_frac"], route_train=rtr["routing_acc"],
                              route_train_group=rtr["routing_acc_per_group"]))
        return v

    t0 = time.time()
    res = fit(head, xs["train"], ys["train"], loss_fn=loss, sampler=smp, optimizer=opt, epochs=epochs, lr=lr,
              warmup_epochs=G["warmup"], batch_size=G["batch"], rt=RT, validate=validate, progress=False)
    out = {"name": name, "seed": seed, "best_epoch": res.best_epoch, "seconds": time.time() - t0, "trace": trace}
    for state_name, state in (("best", res.best_state), ("last", res.last_state)):
        out[state_name] = test_summary(head, state, ev, ys["test"], groups, K)
        if oracle:   # the same experts with the true group as the route
            xo = torch.cat([D["x_test"], torch.as_tensor(groups[ys["test"].numpy()], dtype=torch.float32)[:, None]], 1)
            to = evaluate(head, xo, ys["test"], 1024, RT, C, D["groups"])
            out[state_name]["oracle_route"] = {k: to[k] for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")}
    return out


def run_lib(D, name, seed=0, sampler="progressive_power", detach_gate=False, gate_weighting="none", track=True):
    "The library's MoEHead / MoELTSEILoss with their options, as stage 2 runs them."
    from ltsei.losses import create_loss
    G = GUIDE
    counts = D["counts"].numpy(); C = len(counts); K = G["K"]
    groups = frequency_groups(counts, K)
    torch.manual_seed(seed)
    head = MoEHead(D["x_train"].shape[1], C, K, G["gate_hidden"], G["gate_dropout"], True, G["loss"]["scale"], detach_gate=detach_gate)
    loss = create_loss("MoELTSEILoss", counts, num_experts=K, **G["loss"], gate_weighting=gate_weighting)
    opt = make_optimizer(head.parameters(), "SGD", G["lr"], G["momentum"], G["wd"])
    smp = sampler_for(sampler, D["y_train"], G["epochs"], 1 + seed)
    ev = lambda k, m=None: evaluate(m or head, D[f"x_{k}"], D[f"y_{k}"], 1024, RT, C, D["groups"])
    t0 = time.time()
    res = fit(head, D["x_train"], D["y_train"], loss_fn=loss, sampler=smp, optimizer=opt, epochs=G["epochs"], lr=G["lr"],
              warmup_epochs=G["warmup"], batch_size=G["batch"], rt=RT, validate=lambda m: ev("val", m), progress=False)
    out = {"name": name, "seed": seed, "best_epoch": res.best_epoch, "seconds": time.time() - t0, "trace": []}
    for state_name, state in (("best", res.best_state), ("last", res.last_state)):
        out[state_name] = test_summary(head, state, ev, D["y_test"], groups, K)
    return out


LIB_VARIANTS = {
    "lib: guide": dict(),
    "lib: sampler none": dict(sampler="none"),
    "lib: sampler none + detach_gate + gate_weighting=balanced": dict(sampler="none", detach_gate=True, gate_weighting="balanced"),
    "lib: detach_gate + gate_weighting=balanced (progressive)": dict(detach_gate=True, gate_weighting="balanced"),
}


def run_crt(D, seed=0):
    G = GUIDE
    counts = D["counts"].numpy(); C = len(counts)
    torch.manual_seed(seed)
    head = nn.Linear(D["x_train"].shape[1], C)
    opt = make_optimizer(head.parameters(), "SGD", G["lr"], G["momentum"], G["wd"])
    smp = sampler_for("class_uniform", D["y_train"], G["epochs"], 1 + seed)
    ev = lambda k, m=None: evaluate(m or head, D[f"x_{k}"], D[f"y_{k}"], 1024, RT, C, D["groups"])
    res = fit(head, D["x_train"], D["y_train"], loss_fn=CrossEntropy(counts, label_smoothing=0.0), sampler=smp,
              optimizer=opt, epochs=G["epochs"], lr=G["lr"], warmup_epochs=G["warmup"], batch_size=G["batch"], rt=RT,
              validate=lambda m: ev("val", m), progress=False)
    out = {"name": "cRT (class_uniform, CE)", "seed": seed, "best_epoch": res.best_epoch}
    for s, st in (("best", res.best_state), ("last", res.last_state)):
        head.load_state_dict(st); t = ev("test")
        out[s] = {k: t[k] for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc")}
    return out


def probe(D):
    "Linear probe of the frequency group (and of 'few-shot vs not') on the frozen features: train vs test."
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, recall_score
    counts = D["counts"].numpy(); K = GUIDE["K"]
    groups = frequency_groups(counts, K)
    X = {k: F.normalize(D[f"x_{k}"], dim=1).numpy() for k in ("train", "test")}
    T = {k: groups[D[f"y_{k}"].numpy()] for k in ("train", "test")}
    out = {}
    for cw in (None, "balanced"):
        for Creg in (0.1, 1.0, 10.0):
            clf = LogisticRegression(C=Creg, class_weight=cw, max_iter=5000).fit(X["train"], T["train"])
            r = {}
            for k in ("train", "test"):
                p = clf.predict(X[k])
                r[k] = {"bacc": balanced_accuracy_score(T[k], p), "recall_per_group": recall_score(T[k], p, average=None).tolist()}
            out[f"logreg C={Creg} class_weight={cw}"] = r
    # the stage-1 representation itself: nearest class mean (train means) -> group of the predicted class
    mu = torch.stack([F.normalize(D["x_train"][D["y_train"] == c], dim=1).mean(0) for c in range(len(counts))])
    for k in ("train", "test"):
        pred_c = (F.normalize(D[f"x_{k}"], dim=1) @ F.normalize(mu, dim=1).T).argmax(1).numpy()
        out.setdefault("nearest class mean -> group", {})[k] = {
            "bacc": balanced_accuracy_score(T[k], groups[pred_c]),
            "recall_per_group": recall_score(T[k], groups[pred_c], average=None).tolist(),
            "class_bacc": balanced_accuracy_score(D[f"y_{k}"].numpy(), pred_c)}
    return out


VARIANTS = {
    "guide (progressive, gate CE)": dict(),
    "sampler none (instance-balanced)": dict(sampler="none"),
    "sampler class_uniform": dict(sampler="class_uniform"),
    "gate CE class-balanced (cb)": dict(gate_kind="cb"),
    "gate CE batch-group-balanced": dict(gate_kind="batchbal"),
    "gate CE logit-adjusted": dict(gate_kind="la"),
    "gate on class-uniform side batch": dict(gate_kind="balbatch"),
    "lambda_gate=0 (no gate loss)": dict(lambda_gate=0.0),
    "lambda_gate=10": dict(lambda_gate=10.0),
    "gate detached from cls loss": dict(gate_detach=True),
    "gate detached + cb": dict(gate_detach=True, gate_kind="cb"),
    "gate init std 0.1": dict(gate_init_std=0.1),
    "gate lr x10": dict(gate_lr_mult=10.0),
    "gate lr x0.1": dict(gate_lr_mult=0.1),
    "gate only (cls weight 0), progressive": dict(cls_weight=0.0),
    "gate only (cls weight 0), class_uniform": dict(cls_weight=0.0, sampler="class_uniform"),
    "oracle route in training": dict(oracle=True),
    "sampler class_uniform + cb": dict(sampler="class_uniform", gate_kind="cb"),
    "sampler none + cb": dict(sampler="none", gate_kind="cb"),
    "sampler none + batch-group-balanced": dict(sampler="none", gate_kind="batchbal"),
    "sampler none + gate on class-uniform side batch": dict(sampler="none", gate_kind="balbatch"),
    "sampler none + detached + cb": dict(sampler="none", gate_detach=True, gate_kind="cb"),
    "sampler none + detached": dict(sampler="none", gate_detach=True),
    "sampler none + detached + lambda_lb=0.1": dict(sampler="none", gate_detach=True, lambda_lb=0.1),
    "sampler none + detached + lambda_lb=1": dict(sampler="none", gate_detach=True, lambda_lb=1.0),
    "sampler none + lambda_lb=0.1": dict(sampler="none", lambda_lb=0.1),
}


def summarize(rows, key="best"):
    by = {}
    for r in rows: by.setdefault(r["name"], []).append(r)
    lines = ["| variant | seeds | bal. acc | many | medium | few | routing acc | routing per group (0/1/2) | expert-0 share of group-2 frames |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rs in by.items():
        f = lambda k: np.array([r[key][k] for r in rs]) * 100
        ms = lambda a: f"{a.mean():.1f} ± {a.std():.1f}" if len(a) > 1 else f"{a.mean():.1f}"
        if "route" in rs[0][key]:
            rg = np.array([r[key]["route_group"] for r in rs]).mean(0) * 100
            u = np.mean([r[key]["usage"][2][0] for r in rs]) * 100
            extra = [ms(f("route")), "/".join(f"{v:.0f}" for v in rg), f"{u:.0f} %"]
        else:
            extra = ["-", "-", "-"]
        lines.append("| " + " | ".join([name, str(len(rs)), ms(f("balanced_acc")), ms(f("many_acc")), ms(f("medium_acc")),
                                         ms(f("few_acc"))] + extra) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/gate_study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    D = load(a.work)
    res = {"probe": probe(D), "runs": []}
    print(json.dumps(res["probe"], indent=1))
    if not a.only or "cRT" in a.only:
        for s in a.seeds: res["runs"].append(run_crt(D, s))
    names = [n for n in a.only if n != "cRT"] if a.only else list(VARIANTS)
    for name in names:
        for s in a.seeds:
            r = run_lib(D, name, seed=s, **LIB_VARIANTS[name]) if name in LIB_VARIANTS else run_moe(D, name, seed=s, **VARIANTS[name])
            res["runs"].append(r)
            b = r["best"]
            print(f"{name:45s} seed {s} best ep {r['best_epoch']:3d} bacc {b['balanced_acc']:.3f} few {b['few_acc']:.3f} "
                  f"route {b['route']:.3f} {np.round(b['route_group'], 2).tolist()} ({r['seconds']:.0f}s)", flush=True)
    out = Path(a.out or Path(a.work) / "results.json")
    out.write_text(json.dumps(res))
    print("\nbest-val state:\n" + summarize(res["runs"], "best"))
    print("\nlast state:\n" + summarize(res["runs"], "last"))


if __name__ == "__main__":
    main()
