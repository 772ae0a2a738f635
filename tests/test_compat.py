"""`compat=seed` (docs/seed-differences.md): one test per row of the differences table, each showing that the seed's code
path changes that behaviour and nothing else, and that `compat=paper` (the default) keeps today's behaviour. Unit-level
(milliseconds) except one smoke run that checks the wiring: the header line, metrics.json, the stage-1 key."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from ltsei.experiments.config import ConfigError, compose_config, seed_patience, stage1_key, stage1_settings, stage2_key
from ltsei.signals.data import long_tail_counts, to_split, zscore_frames
from ltsei.learn.losses import LDAMLoss, SeedLDAMLoss, compat_loss, create_loss, ldam_margins
from ltsei.learn.metrics import compute_metrics, seed_shot_groups
from ltsei.experiments.run import run_experiment
from ltsei.learn.samplers import compat_sampler, create_sampler
from ltsei.learn.stage2 import tau_normalize, train_stage2
from ltsei.learn.train import Runtime, fit, lr_at, make_optimizer, seed_fit_options, seed_lr_at
from conftest import SMALL

RT = Runtime(torch.device("cpu"), None, False)
COUNTS = np.array([300, 120, 100, 40, 20, 5])


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def labels_of(counts):
    return torch.repeat_interleave(torch.arange(len(counts)), torch.as_tensor(counts))


# --- the config key ---------------------------------------------------------------------------------------------------

def test_key_default_choices_and_stage1_key():
    paper, seed = compose_config(["profile=quick"]), compose_config(["profile=quick", "compat=seed"])
    assert (paper.compat, seed.compat) == ("paper", "seed")
    with pytest.raises(ConfigError, match="compat='Seed' is not valid; expected one of: paper, seed"):
        compose_config(["compat=Seed"])
    # paper: no trace in either key (today's keys and cached stage-1 entries stay valid); seed: its own stage-1 key
    assert "compat" not in stage1_settings(paper) and stage1_settings(seed)["compat"] == "seed"
    assert "compat" not in json.dumps(stage1_settings(paper))
    assert stage1_key(seed) != stage1_key(paper) and stage2_key(seed) != stage2_key(paper)
    # the seed ignores the stage-1 sampler: every sampling row shares CE's stage 1
    assert stage1_key(seed) == stage1_key(compose_config(["profile=quick", "compat=seed", "sampling.name=inv_freq"]))
    assert stage1_key(paper) != stage1_key(compose_config(["profile=quick", "sampling.name=inv_freq"]))
    # the seed's defaults that ltsei does not share, and nothing else of the tree
    diff = {k for k in ("loss.ldam_reweight_power", "data.normalize")
            if OmegaConf.select(paper, k) != OmegaConf.select(seed, k)}
    assert diff == {"loss.ldam_reweight_power", "data.normalize"}
    p, s = OmegaConf.to_container(paper), OmegaConf.to_container(seed)
    s["compat"], s["loss"]["ldam_reweight_power"], s["data"]["normalize"] = "paper", 0.0, "power"
    assert p == s
    given = compose_config(["compat=seed", "loss.ldam_reweight_power=0", "data.normalize=power"])
    assert (given.loss.ldam_reweight_power, given.data.normalize) == (0.0, "power")   # the command line wins


# --- stage-1 sampler ignored; inv_freq = class-uniform ------------------------------------------------------------------

def test_stage1_sampler_ignored():
    y = labels_of(COUNTS)
    for name in ("sqrt", "class_uniform", "inv_freq", "progressive_power"):
        used = compat_sampler(name, 1, "seed")
        assert used == "none" and compat_sampler(name, 1, "paper") == name
        a = create_sampler(used, y, 3, None, 1.0, 0.0, gen(7)).epoch_indices(1)
        b = create_sampler("none", y, 3, None, 1.0, 0.0, gen(7)).epoch_indices(1)
        assert torch.equal(a, b)                       # exactly CE's shuffled epoch
    assert compat_sampler("sqrt", 2, "seed") == "sqrt"   # stage 2 honours its sampler in the seed


def test_inv_freq_is_class_uniform():
    y = labels_of(COUNTS)
    q = lambda name: create_sampler(name, y, 2, None, None, None, gen()).class_probabilities(0)
    seed, paper = q(compat_sampler("inv_freq", 2, "seed")), q(compat_sampler("inv_freq", 2, "paper"))
    torch.testing.assert_close(seed, torch.full((6,), 1 / 6, dtype=torch.float64))
    n = torch.as_tensor(COUNTS, dtype=torch.float64)
    torch.testing.assert_close(paper, (1 / n) / (1 / n).sum())
    for name in ("none", "sqrt", "class_uniform", "progressive_power"):
        assert compat_sampler(name, 2, "seed") == name


# --- stage 2: BN and dropout in train mode, features recomputed -----------------------------------------------------------

class TinyBackbone(nn.Module):
    def __init__(self, C=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5))
        self.feature_dim, self.classifier = 8, nn.Linear(8, C)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def tiny_data(C=3):
    g = gen(1)
    counts = np.array([30, 10, 4])
    y = labels_of(counts)
    x = torch.randn(len(y), 4, generator=g) + y[:, None].float()
    split = SimpleNamespace(x=x, y=y)
    groups = {"many": [0], "medium": [1], "few": [2], "rule": "thresholds"}
    return SimpleNamespace(train=split, val=split, test=split, num_classes=C, class_counts=counts, groups=groups)


def stage2(compat, patience=None):
    torch.manual_seed(0)
    model, data = TinyBackbone(), tiny_data()
    model.eval()
    s2 = OmegaConf.create({"mode": "crt", "freeze_bn": True, "cache_features": True, "optimizer": "SGD", "lr": 0.1,
                           "epochs": 3, "warmup_epochs": 1})
    bn = model.body[1]
    before = bn.running_mean.clone()
    sampler = create_sampler("class_uniform", data.train.y, 3, None, None, None, gen(2))
    res = train_stage2(model, data, s2, loss_fn=create_loss("CrossEntropy", data.class_counts, label_smoothing=0.0),
                       sampler=sampler, rt=RT, batch_size=8, eval_batch_size=64, momentum=0.9, weight_decay=5e-4,
                       progress=False, seed=0, experiment=None, compat=compat, patience=patience)   # crt: no gate groups
    return res, not torch.equal(before, bn.running_mean)


def test_stage2_bn_dropout_and_no_cache():
    paper, moved_paper = stage2("paper")
    seed, moved_seed = stage2("seed", patience=30)
    assert paper.cached and not moved_paper and not paper.model.train().backbone.training
    assert not seed.cached and moved_seed and seed.model.train().backbone.training   # BN statistics move, dropout on
    # the backbone's weights (not its BN statistics) stay frozen in both
    for r in (paper, seed):
        assert not any(p.requires_grad for p in r.model.backbone.parameters())


# --- model selection on overall accuracy; early stopping ---------------------------------------------------------------

def scripted_fit(options, vals, epochs=8):
    torch.manual_seed(0)
    x, y = torch.randn(16, 4), torch.arange(16) % 2
    model = nn.Linear(4, 2)
    it = iter(vals)
    return fit(model, x, y, loss_fn=create_loss("CrossEntropy", np.array([8, 8]), label_smoothing=0.0),
               sampler=create_sampler("none", y, epochs, None, None, None, gen()), epochs=epochs, lr=0.1,
               optimizer=make_optimizer(model.parameters(), "SGD", 0.1, 0.9, 5e-4), warmup_epochs=2, batch_size=8,
               rt=RT, validate=lambda m: next(it), progress=False, **options)


def test_selection_and_early_stopping():
    # overall accuracy peaks at epoch 1, balanced accuracy at epoch 2; nothing improves after epoch 2
    vals = [{"acc": a, "balanced_acc": b} for a, b in [(.5, .5), (.9, .6), (.8, .7)] + [(.1, .1)] * 5]
    paper = scripted_fit({}, vals)
    assert (paper.best_epoch, paper.epochs_run, len(paper.history)) == (2, 8, 8)
    seed = scripted_fit(seed_fit_options(patience=3), vals)
    assert seed.best_epoch == 1 and seed.epochs_run == 5 == len(seed.history)      # epochs 2, 3, 4 without a better one
    only_select = scripted_fit({"select": "acc"}, vals)
    assert (only_select.best_epoch, only_select.epochs_run) == (1, 8)


def test_patience_not_scaled():
    for prof in ("quick", "smoke", "paper"):                                    # the seed's 30 epochs in every profile
        q = compose_config([f"profile={prof}", "compat=seed"])
        assert seed_patience(q, 1) == seed_patience(q, 2) == 30
        assert seed_patience(compose_config([f"profile={prof}"]), 1) is None


# --- LR schedule per epoch ---------------------------------------------------------------------------------------------

def test_lr_schedule_per_epoch():
    assert seed_lr_at(0, 300, 5, 0.1) == 0.0                                    # the first epoch at lr 0
    assert abs(seed_lr_at(299, 300, 5, 0.1) - 1.35e-4) < 1e-6                    # the ends the issue measured
    assert abs(seed_lr_at(99, 100, 5, 0.1) - 1.2e-3) < 1e-5
    vals = [{"acc": .5, "balanced_acc": .5}] * 8
    seed = scripted_fit({"lr_schedule": "seed"}, vals)
    assert [r["lr"] for r in seed.history] == [seed_lr_at(e, 8, 2, 0.1) for e in range(8)]
    paper = scripted_fit({}, vals)                                              # per step: the epoch's last step
    assert [r["lr"] for r in paper.history] == [lr_at(2 * e + 1, 16, 4, 0.1) for e in range(8)]


# --- LDAM: margins not rescaled; re-weighting power 0.25 --------------------------------------------------------------

def test_ldam_margins_and_power():
    n = np.array([256, 16])
    seed, paper = compose_config(["compat=seed", "loss.name=LDAMLoss"]), compose_config(["loss.name=LDAMLoss"])
    ps, pp = LDAMLoss.config_params(seed, 1), LDAMLoss.config_params(paper, 1)
    assert (ps["reweight_power"], pp["reweight_power"]) == (0.25, 0.0)                   # the seed's default power
    assert {k: v for k, v in ps.items() if k != "reweight_power"} == {k: v for k, v in pp.items() if k != "reweight_power"}
    ls, lp = compat_loss("LDAMLoss", n, "seed", **ps), compat_loss("LDAMLoss", n, "paper", **pp)
    assert isinstance(ls, SeedLDAMLoss) and type(lp) is LDAMLoss
    np.testing.assert_allclose(ls.margins.numpy(), [0.125, 0.25])                       # 0.5 n^-1/4, not rescaled
    np.testing.assert_allclose(lp.margins.numpy(), ldam_margins(n, 0.5))                 # rescaled: max 0.5, as before
    np.testing.assert_allclose(lp.margins.numpy(), [0.25, 0.5])
    assert not torch.equal(ls.weight, torch.ones(2, dtype=ls.weight.dtype))             # DRW weights from epoch 0
    assert torch.equal(lp.weight, torch.ones(2, dtype=lp.weight.dtype))
    same = compat_loss("LDAMLoss", n, "seed", **pp)                                      # the margin change alone
    assert torch.equal(same.weight, lp.weight) and same.scale == lp.scale
    assert type(compat_loss("CrossEntropy", n, "seed", label_smoothing=0.0)) is type(create_loss("CrossEntropy", n, label_smoothing=0.0))


# --- tau-norm keeps the bias -------------------------------------------------------------------------------------------

def test_tau_norm_bias():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    paper, seed = tau_normalize(lin, 1.0), tau_normalize(lin, 1.0, keep_bias=True)
    assert paper.bias is None and torch.equal(seed.bias, lin.bias) and torch.equal(paper.weight, seed.weight)


# --- I/Q input: per-channel z-score ------------------------------------------------------------------------------------

def test_iq_zscore():
    g = gen(3)
    x = (torch.randn(5, 2, 64, generator=g) * torch.tensor([3.0, 0.2])[None, :, None] + 1.5).numpy()
    z = to_split(x, np.zeros(5), "zscore").x
    torch.testing.assert_close(z.mean(2), torch.zeros(5, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(2, unbiased=False), torch.ones(5, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(z, zscore_frames(torch.from_numpy(x)))
    p = to_split(x, np.zeros(5), "power").x                               # paper: unit mean power per frame, as before
    torch.testing.assert_close(p.pow(2).sum(1).mean(1), torch.ones(5), atol=1e-5, rtol=0)


# --- shot groups and H-mean --------------------------------------------------------------------------------------------

def test_shot_groups_and_hmean():
    from ltsei.signals.data import shot_groups
    s, p = seed_shot_groups(COUNTS), shot_groups(COUNTS)
    assert (s["many"], s["medium"], s["few"]) == ([0, 1, 2], [3], [4, 5])          # n >= 100, n <= 20
    assert (p["many"], p["medium"], p["few"]) == ([0, 1], [2, 3, 4], [5])           # n > 100, n < 20
    y = np.repeat(np.arange(6), 4)
    pred = y.copy(); pred[y == 3] = 0                                               # medium all wrong
    ms, mp = compute_metrics(y, pred, 6, s), compute_metrics(y, pred, 6, p)
    assert ms["hmean"] == 1.0 and ms["medium_acc"] == 0.0                          # H-mean of many and few only
    assert mp["hmean"] == pytest.approx(3 / (1 + 1 / (2 / 3) + 1))                 # paper: three groups
    assert {k: v for k, v in ms.items() if k not in ("hmean", "many_acc", "medium_acc", "few_acc")} == \
        {k: v for k, v in mp.items() if k not in ("hmean", "many_acc", "medium_acc", "few_acc")}


# --- the wiring: one smoke run ----------------------------------------------------------------------------------------

def test_seed_run_wiring(in_scratch, capsys):
    cfg = compose_config(["profile=smoke", *SMALL, "compat=seed", "seed=11", "sampling.name=sqrt", "stage2.mode=crt",
                          "stage2.loss=CrossEntropy", "stage2.sampler=inv_freq", "stage2.epochs=3", "stage2.warmup_epochs=1"])
    m = run_experiment(cfg, in_scratch / "compat_seed", progress=False)
    out = capsys.readouterr().out
    assert "[ltsei] compat=seed" in out and m["compat"] == "seed"
    assert m["stage2"]["cached_features"] is False and m["groups"]["rule"] == "seed"
    assert m["stage1"]["key"] == stage1_key(cfg)
    counts = m["class_counts"]
    assert counts == sorted(counts, reverse=True) and counts == [int(c) for c in long_tail_counts(max(counts), len(counts),
                                                                                                  cfg.data.imbalance_ratio)]
    assert m["data"]["normalize"] == "zscore"
    assert json.loads((in_scratch / "compat_seed" / "metrics.json").read_text())["compat"] == "seed"


# --- the backbones: ResNet1D / DilatedTCN attention and start; the seed's MixtureOfExpertsConvNet; FrequencyDomainExpert ---

def test_models():
    import math
    from ltsei.experiments.config import compat_notes
    from ltsei.learn.models import ChannelAttention, ModelConfig, create_model

    def both(name, cfg=ModelConfig()):
        torch.manual_seed(0); s = create_model(name, 5, 960, cfg, compat="seed")
        torch.manual_seed(0); p = create_model(name, 5, 960, cfg)
        return s, p

    for name in ("ResNet1D", "DilatedTCN"):
        s, p = both(name)
        assert isinstance(s.body.attention, ChannelAttention) and p.body.attention is None
        assert not any("attention" in k for k in p.state_dict())                       # paper: the same parameters as before
        extra = set(s.state_dict()) - set(p.state_dict())
        assert extra and all(k.startswith("body.attention.") for k in extra) and set(p.state_dict()) <= set(s.state_dict())
        conv = [m for m in s.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))][-1]   # Kaiming-normal, fan-out
        fan_out = conv.out_channels * conv.weight[0, 0].numel()
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1
        assert both(name, ModelConfig(use_attention=False))[0].body.attention is None
    for name in ("ConvNetADSB", "FrequencyDomainExpert"):                                 # the same in both modes
        s, p = both(name)
        assert type(s) is type(p) and s.state_dict().keys() == p.state_dict().keys()
        assert all(torch.equal(s.state_dict()[k], v) for k, v in p.state_dict().items())
    s, p = both("MixtureOfExpertsConvNet", ModelConfig(conv_impl="conv1d"))
    assert type(s).__name__ == type(p).__name__ == "MixtureOfExpertsConvNet"            # checkpoints name the configured backbone
    assert s.gate.out.in_features == 64 and not hasattr(s, "aux_loss") and hasattr(p, "aux_loss")
    s.eval()
    with torch.no_grad():
        x = torch.randn(2, 2, 960)
        z = s(x)
        mixed = (s.last_gates.unsqueeze(-1) * torch.stack([e(x) for e in s.experts], 1)).sum(1)   # mixed logits
    torch.testing.assert_close(z, mixed)
    assert [type(e).__name__ for e in s.experts] == ["ConvNetADSB", "DilatedTCN", "FrequencyDomainExpert"]
    notes = compat_notes(compose_config(["compat=seed", "model.name=FrequencyDomainExpert"]))
    assert "crashes in the seed" in notes[-1] and compat_notes(compose_config(["model.name=FrequencyDomainExpert"])) == []
