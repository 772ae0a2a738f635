"""End-to-end runs at the smoke scale (on the smaller pool of conftest.SMALL): files of a run, reuse of stage 1, checkpoints, stage 2
with and without cached features, stage 3, determinism and bad input, and the precision a run trains in
(forced bf16 on the CPU; `auto` following the CPU's AMX into metrics.json and the stage-1 key)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ltsei.cli import guide_main
from ltsei.experiments.config import compose_config
from ltsei.experiments.run import CheckpointError, run_experiment
from ltsei.learn.stage2 import Stage3Error
from conftest import SMALL

METRIC_KEYS = {"acc", "balanced_acc", "macro_f1", "gmean", "many_acc", "medium_acc", "few_acc", "per_class_recall"}


def check_metrics(path: Path) -> dict:
    m = json.loads(Path(path).read_text())
    for split in ("test", "val"):
        assert METRIC_KEYS <= set(m[split])
        for k in METRIC_KEYS - {"per_class_recall"}:
            v = m[split][k]
            assert v is None or 0.0 <= v <= 1.0, (split, k, v)
        assert all(0.0 <= r <= 1.0 for r in m[split]["per_class_recall"])
    assert len(m["class_counts"]) == len(m["test"]["per_class_recall"])
    assert {"many", "medium", "few"} <= set(m["groups"])
    assert m["epochs_run"] >= 1 and m["seconds"] > 0 and m["best_epoch"] is not None
    return m


def run(overrides, out):
    return run_experiment(compose_config(["profile=smoke", *SMALL, *overrides]), out, progress=False)


def test_main_writes_a_complete_run_dir(in_scratch):
    out = in_scratch / "r_ce"
    rc = guide_main(["loss.name=CrossEntropy", "sampling.name=none", "stage2.enabled=false", "profile=smoke",
                     *SMALL, f"hydra.run.dir={out}"])
    assert rc == 0
    m = check_metrics(out / "metrics.json")
    for f in ["config.yaml", "log.csv", "class_counts.json", "checkpoints/stage1_best.pt", "checkpoints/stage1_last.pt"]:
        assert (out / f).is_file(), f
    assert "stage2: null" not in (out / "config.yaml").read_text() and m["stage2"] is None
    lines = (out / "log.csv").read_text().splitlines()
    assert lines[0].startswith("stage,epoch") and len(lines) == 1 + m["epochs_run"]
    # Hydra's record of the run, from the one composition (compose_with_hydra, run_job): as @hydra.main wrote it
    hydra_dir = out / ".hydra"
    assert (out / "cli.log").is_file() and {p.name for p in hydra_dir.iterdir()} == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    from omegaconf import OmegaConf
    h = OmegaConf.load(hydra_dir / "hydra.yaml").hydra
    assert h.mode == "RUN" and h.job.name == "cli" and h.runtime.output_dir == str(out)
    assert OmegaConf.load(hydra_dir / "overrides.yaml")[:5] == ["loss.name=CrossEntropy", "sampling.name=none",
                                                                 "stage2.enabled=false", "profile=smoke", *SMALL]
    assert OmegaConf.load(hydra_dir / "config.yaml").model == OmegaConf.load(out / "config.yaml").model   # (before the epoch scale)


def test_same_seed_same_metrics(in_scratch):
    a = run(["stage2.enabled=false", "stage1.reuse=false", "seed=3"], in_scratch / "det_a")
    b = run(["stage2.enabled=false", "stage1.reuse=false", "seed=3"], in_scratch / "det_b")
    assert a["test"] == b["test"] and a["val"] == b["val"]


def test_stage1_trained_once_and_reused(in_scratch, capsys):
    a = run(["stage2.enabled=false", "seed=5"], in_scratch / "reuse_a")
    b = run(["stage2.mode=crt", "stage2.loss=CrossEntropy", "stage2.sampler=class_uniform", "seed=5"], in_scratch / "reuse_b")
    assert b["stage1"]["key"] == a["stage1"]["key"] and b["stage1"]["reused"] and b["stage1"]["source"] == "cache"
    assert "reusing" in capsys.readouterr().out


def test_given_checkpoint_checked(in_scratch):
    a = run(["stage2.enabled=false", "seed=5"], in_scratch / "ck_a")
    ck = in_scratch / "ck_a" / "checkpoints" / "stage1_best.pt"
    b = run(["stage2.enabled=false", f"stage1.checkpoint={ck}"], in_scratch / "ck_b")
    assert b["stage1"]["source"] == "checkpoint" and b["test"] == a["test"]
    with pytest.raises(ValueError, match="no such file"):                 # refused with the config, before any folder
        run([f"stage1.checkpoint={in_scratch / 'nope.pt'}"], in_scratch / "ck_c")
    assert not (in_scratch / "ck_c").exists()
    bad = in_scratch / "half.pt"
    payload = torch.load(ck, weights_only=True); payload["complete"] = False; torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="not a complete"):
        run([f"stage1.checkpoint={bad}"], in_scratch / "ck_d")
    with pytest.raises(CheckpointError, match="ResNet1D"):
        run(["model.name=ResNet1D", f"stage1.checkpoint={ck}"], in_scratch / "ck_e")
    assert not (in_scratch / "ck_e" / "metrics.json").exists()


@pytest.mark.parametrize("mode,loss,stage3", [("crt", "CrossEntropy", "none"), ("moe_ltsei", "MoELTSEILoss", "none"),
                                              ("lws", "CrossEntropy", "none"), ("crt", "CrossEntropy", "tau_norm"),
                                              ("crt", "CrossEntropy", "logit_adjust")])
def test_cached_features_equal_uncached(in_scratch, mode, loss, stage3):
    "Stage 2 (and stage 3 after it, evaluated on the cached features) gives the same head and metrics either way."
    common = [f"stage2.mode={mode}", f"stage2.loss={loss}", "stage2.sampler=class_uniform", "seed=5",
              "stage2.epochs=3", "training.precision=fp32", "training.channels_last=false", f"stage3.mode={stage3}",
              # unscaled, so that both paths train 3 stage-2 epochs (the smoke profile scales only the uncached one)
              "scale.epoch_scale=1.0", "training.epochs=2", "training.warmup_epochs=1", "stage2.warmup_epochs=1"]
    mode = f"{mode}_{stage3}"
    a = run(common, in_scratch / f"cache_{mode}_a")
    b = run(common + ["stage2.cache_features=false"], in_scratch / f"cache_{mode}_b")
    assert a["stage2"]["cached_features"] and not b["stage2"]["cached_features"]
    ha = torch.load(in_scratch / f"cache_{mode}_a" / "checkpoints" / "stage2_best.pt", weights_only=True)["state_dict"]
    hb = torch.load(in_scratch / f"cache_{mode}_b" / "checkpoints" / "stage2_best.pt", weights_only=True)["state_dict"]
    hb = {k.removeprefix("head."): v for k, v in hb.items() if k.startswith("head.")}
    assert ha.keys() == hb.keys()
    for k in ha: torch.testing.assert_close(ha[k], hb[k], atol=1e-4, rtol=1e-4)
    assert a["test"]["balanced_acc"] == pytest.approx(b["test"]["balanced_acc"], abs=1e-9)
    assert a["test"]["per_class_recall"] == pytest.approx(b["test"]["per_class_recall"], abs=1e-9)


def test_freeze_bn_keeps_backbone_in_eval_mode(in_scratch):
    from ltsei.learn.stage2 import Stage2Model
    from ltsei.learn.models import create_model
    from ltsei.learn.models import ModelConfig
    m = create_model("ConvNetADSB", 4, 960, ModelConfig())
    s2 = Stage2Model(m, torch.nn.Linear(m.feature_dim, 4), train_backbone=False, freeze_bn=True)
    s2.train()
    assert not any(mod.training for mod in m.modules()) and s2.head.training
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    s2(torch.randn(8, 2, 960)).sum().backward()
    assert all(torch.equal(before[k], m.state_dict()[k]) for k in before)
    assert all(p.grad is None for p in m.parameters())


def test_stage3(in_scratch):
    t = run(["stage2.enabled=false", "stage3.mode=tau_norm", "stage3.tau_norm=1.0", "seed=5"], in_scratch / "s3_tau")
    la = run(["stage2.enabled=false", "stage3.mode=logit_adjust", "seed=5"], in_scratch / "s3_la")
    assert t["stage1"]["reused"] and la["stage1"]["reused"]
    for mode in ("lws", "moe_ltsei"):
        with pytest.raises(Stage3Error, match="one linear classifier"):
            run([f"stage2.mode={mode}", "stage2.loss=CrossEntropy", "stage3.mode=tau_norm", "seed=5"], in_scratch / f"s3_{mode}")


def test_nan_loss_is_reported_and_leaves_no_metrics(in_scratch, capsys):
    out = in_scratch / "nan"
    rc = guide_main(["stage2.enabled=false", "training.lr=1e30", "training.warmup_epochs=0", "stage1.reuse=false",
                     "training.precision=fp32", "profile=smoke", *SMALL, f"hydra.run.dir={out}"])
    assert rc == 2 and not (out / "metrics.json").exists()
    err = capsys.readouterr().err
    assert "became" in err and "expected a finite loss" in err


def test_bad_input_from_the_command_line(in_scratch, capsys):
    assert guide_main(["loss.name=Nope", "profile=smoke"]) == 2
    assert "CrossEntropy" in capsys.readouterr().err
    out = in_scratch / "missing"
    rc = guide_main(["data.source=files", f"data.train_path={in_scratch / 'nope.npy'}",
                     f"data.test_path={in_scratch / 'nope2.npy'}", "profile=smoke", f"hydra.run.dir={out}"])
    assert rc == 2 and "nope.npy" in capsys.readouterr().err and not (out / "metrics.json").exists()


def test_samplers_are_honoured_in_both_stages(in_scratch, monkeypatch):
    import ltsei.experiments.run as R
    used = []
    real = R.sampler_from_config
    def spy(cfg, stage, labels, seed):
        s = real(cfg, stage, labels, seed)
        used.append((type(s).__name__, s.epoch_indices(0)))
        return s
    monkeypatch.setattr(R, "sampler_from_config", spy)
    m = run(["sampling.name=inv_freq", "stage2.mode=crt", "stage2.loss=CrossEntropy", "stage2.sampler=sqrt",
             "stage1.reuse=false", "seed=7"], in_scratch / "samplers")
    assert [n for n, _ in used] == ["InverseFrequencySampler", "SqrtSampler"]
    counts = np.asarray(m["class_counts"])
    idx = used[0][1]
    # inv_freq draws the rarest class more often than its share of the data, the head class less
    from ltsei.signals.data import load_data
    data = load_data(compose_config(["profile=smoke", *SMALL]).data, 0)
    drawn = np.bincount(data.train.y[idx].numpy(), minlength=len(counts))
    rare, head = counts.argmin(), counts.argmax()
    assert drawn[rare] / len(idx) > counts[rare] / counts.sum() and drawn[head] / len(idx) < counts[head] / counts.sum()


def test_ltsei_command(in_scratch, capsys):
    from ltsei.cli import main
    assert main(["--help"]) == 0 and "reproduce" in capsys.readouterr().out
    assert main(["nosuch"]) == 2
    out = in_scratch / "synth_cli"
    assert main(["synth", "--out", str(out), "--preset", "smoke", "--pool-per-class", "200", "--quiet"]) == 0   # SMALL's pool
    x = np.load(out / "X_train.npy")
    assert x.ndim == 3 and x.shape[2] == 2
    assert main(["run", "stage2.enabled=false", "profile=smoke", *SMALL, f"hydra.run.dir={in_scratch / 'cli_run'}"]) == 0
    check_metrics(in_scratch / "cli_run" / "metrics.json")


def test_predictions_and_tensorboard_agree_with_metrics(in_scratch):
    "predictions.npz holds what metrics.json was computed from; TensorBoard gets every epoch of both stages."
    from ltsei.learn.metrics import compute_metrics
    from ltsei.learn.moe_ltsei import frequency_groups, routing_metrics, adaptive_margins
    out = in_scratch / "pred_moe"
    m = run(["stage2.epochs=8", "seed=5"], out)
    p = np.load(out / "predictions.npz")
    for split in ("test", "val"):
        assert (p[f"{split}_logits"].argmax(1) == p[f"{split}_pred"]).all()
        again = compute_metrics(p[f"{split}_labels"], p[f"{split}_pred"], len(m["class_counts"]), m["groups"])
        assert json.loads(json.dumps(again)) == m[split]
        assert p[f"{split}_gate_probs"].shape == (len(p[f"{split}_labels"]), 3)
    K = 3
    groups = frequency_groups(m["class_counts"], K, "auto", 100, 20)
    r = routing_metrics(p["test_gate_probs"], p["test_labels"], groups, K, 3)
    assert r["routing_acc"] == pytest.approx(m["routing"]["routing_acc"])
    # metrics.json records the margins, groups and gate start the run used (the seed's defaults)
    rec = m["moe_ltsei"]
    assert rec["groups"] == groups.tolist() and rec["grouping"] == "auto"
    assert rec["grouping_rule"] == ("absolute" if max(m["class_counts"]) >= 100 else "quantile")
    np.testing.assert_allclose(rec["margins"], adaptive_margins(m["class_counts"], 0.999, 0.35, 0.2, 0.5, "effective", None), atol=1e-6)
    assert (rec["init"], rec["difficulty"], rec["margin_max"], rec["gate_supervised"]) == ("seed", "seed", None, True)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(out / "tensorboard")); ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"stage1/train_loss", "stage1/lr", "stage1/val_balanced_acc", "stage2/train_loss", "stage2/routing_acc",
            "stage2/gate_group2_expert0", "test/balanced_acc"} <= tags
    assert len(ea.Scalars("stage2/train_loss")) == 8 and len(ea.Scalars("stage2/gate_group0_expert1")) == 8
    assert ea.Scalars("test/balanced_acc")[0].value == pytest.approx(m["test"]["balanced_acc"])


def test_forced_bf16_takes_the_bf16_path(in_scratch, capsys):
    "training.precision=bf16 on any CPU: the convolutions run under bf16 autocast, the loss stays finite, metrics.json says bf16."
    seen = []
    def spy(mod, inp, out):
        if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d)) and mod.training:
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), out.dtype))
    h = torch.nn.modules.module.register_module_forward_hook(spy)
    try:
        m = run(["stage2.enabled=false", "training.precision=bf16", "stage1.reuse=false", "seed=11", "gpus=cpu"],
                in_scratch / "bf16")                            # gpus=cpu: the CPU's autocast on a GPU box too
    finally:
        h.remove()
    assert seen and all(s == (True, torch.bfloat16, torch.bfloat16) for s in seen)
    assert m["precision"] == {"requested": "bf16", "resolved": "bf16", "reason": "asked for (training.precision)"}
    assert "bf16" in m["runtime"] and "[ltsei] precision: bf16" in capsys.readouterr().out
    losses = [float(r.split(",")[2]) for r in (in_scratch / "bf16" / "log_stage1.csv").read_text().splitlines()[1:]]
    assert losses and all(np.isfinite(losses))
    check_metrics(in_scratch / "bf16" / "metrics.json")


def test_auto_precision_follows_the_cpu_and_keys_stage1(monkeypatch):
    "auto: fp32 on a CPU without AMX, bf16 on one with AMX (mocked), and the resolved precision is in the stage-1 key."
    import ltsei.learn.train as T
    from ltsei.experiments.config import stage1_key, stage1_settings
    cfg = compose_config(["profile=smoke", "gpus=cpu"])
    monkeypatch.setattr(T, "cpu_has_amx", lambda flags=None: False)
    rt, key32 = T.make_runtime("cpu", "auto", "auto"), stage1_key(cfg)
    assert (rt.precision, rt.reason, stage1_settings(cfg)["numerics"]["precision"]) == ("fp32", "CPU without AMX", "fp32")
    monkeypatch.setattr(T, "cpu_has_amx", lambda flags=None: True)
    rt, key16 = T.make_runtime("cpu", "auto", "auto"), stage1_key(cfg)
    assert rt.amp_dtype is torch.bfloat16 and rt.precision_record() == {
        "requested": "auto", "resolved": "bf16", "reason": "CPU with AMX (amx_bf16, amx_tile)"}
    assert stage1_settings(cfg)["numerics"]["precision"] == "bf16" and key16 != key32
