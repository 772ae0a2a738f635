"""The config tree: defaults from the methods overview (nbs/methods.ipynb), profiles, and failures before any work."""
import pytest

import torch

from ltsei.experiments.config import (ConfigError, EPOCH_SCALES, all_keys, compose_config, scale_epochs, stage1_key, stage1_settings,
                          stage2_key)


def test_defaults_make_5_1_equal_5_2():
    full = ("model.name=ConvNetADSB model.dropout=0.1 model.use_attention=true loss.name=CrossEntropy "
            "sampling.name=none training.epochs=300 training.lr=0.1 training.optimizer=SGD stage2.enabled=true "
            "stage2.mode=moe_ltsei stage2.epochs=100 stage2.lr=0.1 stage2.optimizer=SGD stage2.loss=MoELTSEILoss "
            "stage2.moe.num_experts=3 stage2.moe.gate_hidden=128 stage2.moe.gate_dropout=0.1 "
            "stage2.moe.normalize_features=true stage2.moe_loss.scale=30.0 stage2.moe_loss.beta=0.999 "
            "stage2.moe_loss.margin_m0=0.35 stage2.moe_loss.margin_m1=0.2 stage2.moe_loss.margin_gamma=0.5 "
            "stage2.moe_loss.diff_gamma=2.0 stage2.moe_loss.diff_alpha=1.0 stage2.moe_loss.lambda_gate=1.0 "
            "stage2.moe_loss.lambda_lb=0.0 stage2.sampler=progressive_power stage2.alpha_start=1.0 "
            "stage2.alpha_end=0.0 stage2.freeze_bn=true stage2.warmup_epochs=5 data.imbalance_ratio=100").split()
    short = ("loss.name=CrossEntropy sampling.name=none stage2.enabled=true stage2.mode=moe_ltsei stage2.epochs=100 "
             "stage2.lr=0.1 stage2.loss=MoELTSEILoss stage2.moe.num_experts=3 stage2.moe_loss.scale=30.0 "
             "stage2.moe_loss.margin_m0=0.35 stage2.moe_loss.lambda_gate=1.0 stage2.freeze_bn=true").split()
    assert compose_config(full) == compose_config(short) == compose_config([])


def test_paper_defaults():
    c = compose_config([])
    assert c.scale.profile == "paper" and c.training.epochs == 300 and c.data.batch_size == 256
    assert c.data.synth.num_emitters == 60 and c.data.synth.sample_rate == 50e6 and c.data.synth.length == 4800
    assert c.training.optimizer == "SGD" and c.training.momentum == 0.9 and c.training.weight_decay == 5e-4


@pytest.mark.parametrize("profile", ["quick", "smoke"])
def test_profile_scales_every_epoch_setting(profile):
    "Stage 1 and a stage 2 that runs the backbone (finetune) are scaled; a warm-up asked for stays >= 1 epoch."
    s = EPOCH_SCALES[profile]
    c = compose_config([f"profile={profile}", "loss.ldam_drw_start=160", "training.epochs=200",
                        "stage2.mode=finetune", "stage2.loss=CrossEntropy"])
    assert c.training.epochs == scale_epochs(200, s, 1)
    assert c.stage2.epochs == scale_epochs(100, s, 1)
    assert c.loss.ldam_drw_start == min(scale_epochs(160, s, 0), c.training.epochs - 1)
    assert c.training.warmup_epochs == scale_epochs(5, s, 1) >= 1 and c.stage2.warmup_epochs == scale_epochs(5, s, 1) >= 1
    assert c.loss.ldam_drw_start < c.training.epochs
    assert compose_config([f"profile={profile}", "training.warmup_epochs=0"]).training.warmup_epochs == 0


GUIDE_S5_1_FULL = ("model.name=ConvNetADSB model.dropout=0.1 model.use_attention=true loss.name=CrossEntropy "
                   "sampling.name=none training.epochs=300 training.lr=0.1 training.optimizer=SGD stage2.enabled=true "
                   "stage2.mode=moe_ltsei stage2.epochs=100 stage2.lr=0.1 stage2.optimizer=SGD stage2.loss=MoELTSEILoss "
                   "stage2.moe.num_experts=3 stage2.freeze_bn=true stage2.warmup_epochs=5 data.imbalance_ratio=100").split()


@pytest.mark.parametrize("profile", ["quick", "smoke"])
def test_stage2_on_cached_features_keeps_the_guide_epochs(profile):
    "Issue 12: a head trained on cached features gets the guide's 100 epochs; stage 1 is scaled."
    c = compose_config([f"profile={profile}", *GUIDE_S5_1_FULL])
    assert c.stage2.epochs == 100 and c.stage2.warmup_epochs == 5
    assert c.training.epochs == scale_epochs(300, EPOCH_SCALES[profile], 1) < 300
    assert c.training.warmup_epochs == 1                 # 5 x 0.05 (or 0.007) rounds to 0: kept at one epoch
    for mode, loss in [("crt", "CrossEntropy"), ("lws", "CrossEntropy")]:
        c = compose_config([f"profile={profile}", f"stage2.mode={mode}", f"stage2.loss={loss}"])
        assert c.stage2.epochs == 100, mode
    c = compose_config([f"profile={profile}", "stage2.cache_features=false"])
    assert c.stage2.epochs == scale_epochs(100, EPOCH_SCALES[profile], 1)


@pytest.mark.parametrize("override,needle", [
    ("loss.name=Nope", "CrossEntropy"),               # lists the valid choices
    ("model.name=VGG", "ConvNetADSB"),
    ("sampling.name=weird", "class_uniform"),
    ("stage2.mode=lws2", "moe_ltsei"),
    ("stage2.sampler=abc", "progressive_power"),
    ("stage3.mode=x", "tau_norm"),
    ("training.optimizer=RMSprop", "AdamW"),
    ("training.lr=-0.1", "training.lr"),
    ("stage2.lr=0", "stage2.lr"),
    ("data.imbalance_ratio=0.5", ">= 1"),
    ("data.target_length=0", "data.target_length"),
    ("training.epochs=abc", "training.epochs"),
    ("loss.focal_gama=2", "loss.focal_gamma"),         # typo: nearest key suggested
    ("stage2.moe.experts=3", "stage2.moe.num_experts"),
    ("nosuchsection.x=1", "Valid top-level sections"),
    ("profile=huge", "quick"),
    ("sampling.name=power", "sampling.alpha"),
    ("model.conv_impl=conv3d", "conv1d"),
    ("data.synth.num_emitters=1", "data.synth.num_emitters=1: expected an integer >= 2"),
    ("data.synth.sample_rate=1e6", "data.synth.sample_rate"),
    ("model.dropout=1.0", "[0, 1)"),
    # issue 10, item 9: refused before any work
    ("data.imbalance_ratio=inf", "data.imbalance_ratio=inf must be a finite number"),
    ("training.lr=inf", "training.lr=inf must be a finite number"),
    ("stage2.lr=nan", "stage2.lr=nan must be a finite number"),
    ("training.momentum=5", "training.momentum=5.0 must be in [0, 1]"),
    ("training.momentum=-0.1", "[0, 1]"),
    ("training.warmup_epochs=301", "training.warmup_epochs=301 is longer than training.epochs=300"),
    ("stage2.warmup_epochs=101", "stage2.warmup_epochs=101 is longer than stage2.epochs=100"),
    ("stage2.moe.num_experts=61", "stage2.moe.num_experts=61 is more than the 60 classes"),
    ("training.num_threads=0", "training.num_threads"),
])
def test_bad_config_fails_before_work(override, needle):
    with pytest.raises(ConfigError) as e:
        compose_config([override])
    assert needle in str(e.value)


def test_every_guide_appendix_key_exists():
    keys = set(all_keys())
    for k in ["data.imbalance_ratio", "data.batch_size", "training.epochs", "training.lr", "training.optimizer",
              "gpus", "stage2.enabled", "stage2.mode", "stage2.epochs", "stage2.lr", "stage2.freeze_bn",
              "stage2.moe.num_experts", "stage2.moe.gate_hidden", "stage2.moe_loss.scale", "stage2.moe_loss.beta",
              "stage2.moe_loss.margin_m0", "stage2.moe_loss.diff_gamma", "stage2.moe_loss.lambda_gate",
              "stage2.moe_loss.lambda_lb", "stage3.mode", "stage3.tau_norm", "stage1.checkpoint",
              "stage2.cost_strategy", "stage2.los_smoothing", "stage2.alpha_start", "stage2.alpha_end"]:
        assert k in keys, k


def test_stage1_key_ignores_stage2_and_stage3():
    a = compose_config(["profile=smoke", "stage2.mode=crt", "stage2.loss=CrossEntropy"])
    b = compose_config(["profile=smoke", "stage2.enabled=false", "stage3.mode=tau_norm"])
    assert stage1_key(a) == stage1_key(b)
    for o in ["loss.name=FocalLoss", "data.imbalance_ratio=10", "model.name=ResNet1D", "seed=1",
              "sampling.name=sqrt", "training.lr=0.05"]:
        assert stage1_key(compose_config(["profile=smoke", o])) != stage1_key(a), o
    assert stage1_key(compose_config(["profile=quick", "stage2.mode=crt", "stage2.loss=CrossEntropy"])) != stage1_key(a)


def test_stage1_key_covers_numerics_and_data():
    "Issue 10, item 7: the thread count (on the CPU), the torch version and the data identity are in the key."
    a = compose_config(["profile=smoke"])
    st = stage1_settings(a)
    cpu = not torch.cuda.is_available()
    from ltsei.learn.train import cpu_has_amx, gpu_identity, resolve_precision
    assert st["numerics"] == {"cpu_amx": cpu_has_amx() if cpu else None, "torch": torch.__version__, "device": "cpu" if cpu else "cuda", "num_threads": 1 if cpu else None,
                              "cpu_capability": torch.backends.cpu.get_cpu_capability() if cpu else None,
                              "precision": resolve_precision("auto", torch.device("cpu" if cpu else "cuda"))[0],
                              **({} if cpu else gpu_identity(torch.device("cuda", 0)))}
    assert "synth_key" in st["data_identity"] and "num_threads" not in st["training"]
    assert a.training.num_threads == 1
    if not torch.cuda.is_available():
        assert stage1_key(compose_config(["profile=smoke", "training.num_threads=2"])) != stage1_key(a)
    assert stage1_key(compose_config(["profile=smoke", "data.synth.seed=1"])) != stage1_key(a)
    assert stage1_key(compose_config(["profile=smoke", "training.eval_batch_size=7"])) != stage1_key(a)
    assert stage1_key(compose_config(["profile=smoke", "data.cache_dir=elsewhere"])) == stage1_key(a)


def test_stage2_key():
    a = compose_config(["profile=smoke"])
    assert stage2_key(a) == stage2_key(compose_config(["profile=smoke", "stage3.mode=none", "stage1.cache_dir=x"]))
    assert stage2_key(a) != stage2_key(compose_config(["profile=smoke", "stage2.lr=0.05"]))
    assert stage2_key(a) != stage2_key(compose_config(["profile=smoke", "loss.name=FocalLoss"]))
