"""Tests of ltsei.learn.losses: the registry and every stage-1 / stage-2 loss against its formula.
The small hand cases of each loss are the notebook's (nbs/08_losses.ipynb); here: faults, random-logit numpy
references and sweeps.

Expected values are worked out by hand (see the comments) or with explicit numpy written from
the methods overview (nbs/methods.ipynb), never by calling the code under test.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ltsei.learn.moe_ltsei  # noqa: F401  (registers MoELTSEILoss, listed by the stage-2 names below)
from ltsei.learn.losses import (LOSSES, MoEOutput, as_class_counts, class_balanced_weights,
                          cost_weights, create_loss, drw_weights, ldam_margins, logits_of, loss_names,
                          loss_params)

# all parameters of every stage-1/2 loss but MoE-LTSEI (tested in test_moe_ltsei.py)
PARAMS = {
    "CrossEntropy": dict(label_smoothing=0.0),
    "FocalLoss": dict(gamma=2.0, alpha=None),
    "ClassBalancedLoss": dict(beta=0.9999),
    "LDAMLoss": dict(max_margin=0.5, scale=1.0, drw_start=0, reweight_power=0.0),
    "BalancedSoftmaxLoss": {},
    "LogitAdjustmentLoss": dict(tau=1.0),
    "CostSensitiveCE": dict(strategy="auto"),
    "LOS": dict(smoothing=0.98),
}


def np_log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def np_ce(z, y):
    "per-sample softmax cross-entropy, numpy"
    return -np_log_softmax(z)[np.arange(len(y)), y]


def rand_case(B=16, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, generator=g, dtype=torch.float64) * 2, torch.randint(0, C, (B,), generator=g)


COUNTS = [500, 120, 30, 8, 2]


# ----- registry -----

def test_registry_names():
    # the lists the config checks are derived from the registration metadata (stages, experts)
    assert loss_names(stage=1) == tuple(sorted(["CrossEntropy", "FocalLoss", "ClassBalancedLoss", "LDAMLoss",
                                                "BalancedSoftmaxLoss", "LogitAdjustmentLoss", "RIDELoss", "SADELoss",
                                                "BalPoELoss"]))
    assert loss_names(stage=2) == tuple(sorted(["CrossEntropy", "FocalLoss", "ClassBalancedLoss", "BalancedSoftmaxLoss",
                                                "LogitAdjustmentLoss", "CostSensitiveCE", "LOS", "MoELTSEILoss"]))
    assert loss_names(experts=True) == ("BalPoELoss", "RIDELoss", "SADELoss")
    assert loss_names() == LOSSES.names() and len(LOSSES) == 12
    for name in PARAMS:
        assert sorted(loss_params(name)) == sorted(PARAMS[name])


def test_moe_loss_joins_the_registry_from_its_own_module():
    # ltsei.learn.losses never imports upward: MoELTSEILoss is registered by ltsei.learn.moe_ltsei when that module is imported
    code = ("import sys; from ltsei.learn.losses import create_loss, LOSSES; "
            "assert 'ltsei.learn.moe_ltsei' not in sys.modules and 'MoELTSEILoss' not in LOSSES; "
            "import ltsei.learn.moe_ltsei; "
            "f = create_loss('MoELTSEILoss', [50, 20, 5, 1], num_experts=2, scale=30.0, beta=0.999, margin_m0=0.35, "
            "margin_m1=0.2, margin_gamma=0.5, diff_gamma=2.0, diff_alpha=1.0, lambda_gate=1.0, lambda_lb=0.0, gate_weighting='none', "
            "margin_type='effective', margin_max=None, label_smoothing=0.0, gate_target_smoothing=0.0, difficulty='seed', "
            "grouping='auto', many_thresh=100, few_thresh=20); "
            "print(type(f).__module__, type(f).__name__)")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ltsei.learn.moe_ltsei", "MoELTSEILoss"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="^loss 'Focal': no loss of that name; expected one of .*FocalLoss.*MoELTSEILoss.*did you mean 'FocalLoss'"):
        create_loss("Focal", COUNTS, gamma=2.0, alpha=None)


def test_missing_and_extra_params_are_named():
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['alpha'\]"):
        create_loss("FocalLoss", COUNTS, gamma=2.0)
    with pytest.raises(ValueError, match=r"unexpected parameter\(s\) \['beta'\]"):
        create_loss("FocalLoss", COUNTS, gamma=2.0, alpha=None, beta=0.9)
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['tau'\].*unexpected parameter\(s\) \['logit_tau'\]"):
        create_loss("LogitAdjustmentLoss", COUNTS, logit_tau=1.0)


@pytest.mark.parametrize("counts,msg", [([3, 0, 1], "classes \\[1\\]"), ([[1, 2]], "1-D"), ([], "non-empty"),
                                        ([1.5, 2], "integer"), ("abc", "class_counts")])
def test_bad_class_counts(counts, msg):
    with pytest.raises(ValueError, match=msg):
        as_class_counts(counts)


@pytest.mark.parametrize("name,params,msg", [
    ("CrossEntropy", dict(label_smoothing=1.5), "label_smoothing"),
    ("FocalLoss", dict(gamma=-1.0, alpha=None), "gamma"),
    ("FocalLoss", dict(gamma=2.0, alpha=[0.5, 0.5]), "alpha"),
    ("ClassBalancedLoss", dict(beta=1.0), "beta"),
    ("LDAMLoss", dict(max_margin=0.5, scale=0.0, drw_start=0, reweight_power=0.0), "scale"),
    ("LDAMLoss", dict(max_margin=0.5, scale=1.0, drw_start=-1, reweight_power=0.0), "drw_start"),
    ("CostSensitiveCE", dict(strategy="inverse"), "auto"),
    ("LOS", dict(smoothing=2.0), "smoothing"),
])
def test_bad_params(name, params, msg):
    with pytest.raises(ValueError, match=msg):
        create_loss(name, COUNTS, **params)


def test_bad_shapes():
    f = create_loss("CrossEntropy", COUNTS, label_smoothing=0.0)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        f(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        f(torch.zeros(2, 5), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="MoEOutput"):
        f([[0.0] * 5], torch.tensor([0]))


# ----- every loss: both output kinds, finite gradients, set_epoch -----

@pytest.mark.parametrize("name", list(PARAMS))
def test_every_loss_output_kinds_gradients_set_epoch(name):
    f = create_loss(name, COUNTS, **PARAMS[name])
    z, y = rand_case()
    z = (z * 50).requires_grad_()   # large logits: still finite
    moe = MoEOutput(logits=z, cosine=z / 50, gate_logits=torch.zeros(16, 3), gate_probs=torch.full((16, 3), 1 / 3))
    a = f(z, y)
    assert a.ndim == 0 and torch.isfinite(a)
    assert torch.equal(a, f(moe, y))
    (g,) = torch.autograd.grad(a, z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    f.set_epoch(7)
    assert torch.equal(a, f(z, y))   # no schedule here (LDAM with drw_start 0, rho 0 has w = 1 throughout)
    with pytest.raises(ValueError, match="epoch"):
        f.set_epoch(-1)


def test_logits_of_refuses_other_outputs():
    with pytest.raises(ValueError, match="MoEOutput"):
        logits_of([1, 2])


# ----- FocalLoss -----

def test_focal_hand():
    # z = (log 3, 0), y = 0: p_t = 3/4, CE = log(4/3), gamma 1: (1/4) log(4/3)
    f = create_loss("FocalLoss", [3, 1], gamma=1.0, alpha=None)
    assert f(torch.tensor([[math.log(3), 0.0]]), torch.tensor([0])).item() == pytest.approx(0.25 * math.log(4 / 3))


def test_focal_alpha_plain_mean_and_unweighted_pt():
    # numpy reference on random logits, p_t from the UNWEIGHTED softmax
    alpha = np.array([0.1, 0.2, 0.3, 0.9, 2.0])
    gamma = 1.5
    f = create_loss("FocalLoss", COUNTS, gamma=gamma, alpha=alpha.tolist())
    z, y = rand_case()
    ce = np_ce(z.numpy(), y.numpy())
    pt = np.exp(np_log_softmax(z.numpy()))[np.arange(16), y.numpy()]
    ref = np.mean(alpha[y.numpy()] * (1 - pt) ** gamma * ce)
    assert f(z, y).item() == pytest.approx(ref, rel=1e-5)
    # the pitfall (p_t = exp(-weighted CE)) gives something else
    wrong = np.mean(alpha[y.numpy()] * (1 - np.exp(-alpha[y.numpy()] * ce)) ** gamma * ce)
    assert abs(ref - wrong) > 1e-3


# ----- ClassBalancedLoss -----

def test_cb_weights_hand_and_sum():
    for beta in (0.9, 0.999, 0.9999):
        assert class_balanced_weights(COUNTS, beta).sum() == pytest.approx(len(COUNTS))
    np.testing.assert_allclose(class_balanced_weights(COUNTS, 0.0), np.ones(5))


def test_cb_weighted_mean():
    # numpy: weighted mean sum w_y l / sum w_y
    n = np.array(COUNTS, float); w = (1 - 0.999) / (1 - 0.999 ** n); w = w * 5 / w.sum()
    f = create_loss("ClassBalancedLoss", COUNTS, beta=0.999)
    z, y = rand_case()
    ce = np_ce(z.numpy(), y.numpy())
    assert f(z, y).item() == pytest.approx((w[y] * ce).sum() / w[y].sum(), rel=1e-5)


# ----- LDAMLoss -----

def test_ldam_margins_rescaled():
    m = ldam_margins(COUNTS, 0.5)
    assert m.max() == pytest.approx(0.5) and np.argmax(m) == 4
    np.testing.assert_allclose(m, 0.5 * (np.array(COUNTS, float) / 2) ** -0.25)
    f = create_loss("LDAMLoss", COUNTS, max_margin=0.3, scale=1.0, drw_start=0, reweight_power=0.0)
    assert f.margins.max().item() == pytest.approx(0.3)


def test_ldam_loss_hand():
    f = create_loss("LDAMLoss", [16, 1], max_margin=0.5, scale=1.0, drw_start=0, reweight_power=0.0)
    # z = (0, 0), y = 0: z' = (-0.25, 0): CE = log(1 + e^0.25) (y = 1: nbs/08_losses.ipynb)
    assert f(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(1 + math.exp(0.25)))
    # scale s = 30 multiplies the margin logits: y = 1: z' * 30 = (0, -15)
    f = create_loss("LDAMLoss", [16, 1], max_margin=0.5, scale=30.0, drw_start=0, reweight_power=0.0)
    assert f(torch.zeros(1, 2), torch.tensor([1])).item() == pytest.approx(math.log(1 + math.exp(15)), rel=1e-6)


def test_ldam_drw_switch():
    # n = (16, 1), rho = 1/4: n^-rho = (1/2, 1), mean 3/4 -> (2/3, 4/3)
    np.testing.assert_allclose(drw_weights([16, 1], 0.25), [2 / 3, 4 / 3])
    f = create_loss("LDAMLoss", [16, 1], max_margin=0.5, scale=1.0, drw_start=3, reweight_power=0.25)
    z = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64); y = torch.tensor([0, 1])
    l0 = math.log(1 + math.exp(0.25))            # sample 0: z' = (-0.25, 0), y = 0
    l1 = math.log(1 + math.exp(1.5))             # sample 1: z' = (1, -0.5), y = 1
    for epoch in (0, 1, 2):
        f.set_epoch(epoch)
        np.testing.assert_allclose(f.weight.numpy(), [1, 1])
        assert f(z, y).item() == pytest.approx((l0 + l1) / 2)
    for epoch in (3, 4, 100):
        f.set_epoch(epoch)
        np.testing.assert_allclose(f.weight.numpy(), [2 / 3, 4 / 3], rtol=1e-6)
        assert f(z, y).item() == pytest.approx((2 / 3 * l0 + 4 / 3 * l1) / 2, rel=1e-6)


def test_ldam_rho_zero_means_no_reweighting():
    f = create_loss("LDAMLoss", COUNTS, max_margin=0.5, scale=1.0, drw_start=0, reweight_power=0.0)
    f.set_epoch(5)
    np.testing.assert_allclose(f.weight.numpy(), np.ones(5))
    # guide's DRW row: rho = 0.25 normalised to mean 1
    w = drw_weights(COUNTS, 0.25)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w / w[0], (np.array(COUNTS, float) / 500) ** -0.25)


# ----- BalancedSoftmax / LogitAdjustment -----

def test_balanced_softmax_and_la_hand():
    # n = (3, 1), pi = (3/4, 1/4); z = 0: softmax(log pi) = pi, loss = -log pi_y (y = 1 and tau = 2: the notebook)
    bs = create_loss("BalancedSoftmaxLoss", [3, 1])
    assert bs(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(math.log(4 / 3))
    # tau = 0 is plain CE
    la0 = create_loss("LogitAdjustmentLoss", COUNTS, tau=0.0)
    z, y = rand_case()
    assert la0(z, y).item() == pytest.approx(np_ce(z.numpy(), y.numpy()).mean(), rel=1e-6)


def test_la_numpy():
    z, y = rand_case()
    logpi = np.log(np.array(COUNTS, float) / sum(COUNTS))
    for tau in (0.5, 1.0, 1.5):
        f = create_loss("LogitAdjustmentLoss", COUNTS, tau=tau)
        assert f(z, y).item() == pytest.approx(np_ce(z.numpy() + tau * logpi, y.numpy()).mean(), rel=1e-6)
    f = create_loss("BalancedSoftmaxLoss", COUNTS)
    assert f(z, y).item() == pytest.approx(np_ce(z.numpy() + logpi, y.numpy()).mean(), rel=1e-6)


# ----- CostSensitiveCE -----

def test_cost_weights_strategies():
    lw = np.array([1 / math.log(2), 1 / math.log(5)]); np.testing.assert_allclose(cost_weights([1, 4], "log"), lw / lw.mean())
    for s in ("auto", "sqrt", "log"):
        assert cost_weights(COUNTS, s).mean() == pytest.approx(1.0)


def test_cost_sensitive_weighted_mean():
    f = create_loss("CostSensitiveCE", [1, 4], strategy="auto")
    # w = (1.6, 0.4); CE log 2 (y=0), log 4 (y=1, z = (log 3, 0))
    v = f(torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]), torch.tensor([0, 1])).item()
    assert v == pytest.approx((1.6 * math.log(2) + 0.4 * math.log(4)) / 2.0)


# ----- LOS -----

def test_los_target():
    # numpy with eps = 0.98, C = 5
    z, y = rand_case()
    t = 0.02 * np.eye(5)[y.numpy()] + 0.98 / 5
    ref = -(t * np_log_softmax(z.numpy())).sum(1).mean()
    assert create_loss("LOS", COUNTS, smoothing=0.98)(z, y).item() == pytest.approx(ref, rel=1e-6)
    assert create_loss("LOS", COUNTS, smoothing=0.0)(z, y).item() == pytest.approx(np_ce(z.numpy(), y.numpy()).mean())


def test_buffers_follow_module_dtype_and_device():
    f = create_loss("ClassBalancedLoss", COUNTS, beta=0.999).to(torch.float64)
    assert f.weight.dtype == torch.float64
    f = create_loss("LDAMLoss", COUNTS, max_margin=0.5, scale=1.0, drw_start=0, reweight_power=0.25)
    assert {k for k, _ in f.named_buffers()} == {"margins", "drw_weight"}


def test_every_registered_loss_builds_itself_from_the_config_tree():
    # adding a loss is one notebook: its class reads its own fields (config_params); no table elsewhere names them
    from omegaconf import OmegaConf
    from ltsei.experiments.config import config_template
    from ltsei.learn.moe_ltsei import loss_from_config
    for stage, key in ((1, "loss.name"), (2, "stage2.loss")):
        for name in loss_names(stage=stage):
            cfg = OmegaConf.merge(config_template(), OmegaConf.from_dotlist([f"{key}={name}"]))
            assert sorted(LOSSES[name].config_params(cfg, stage)) == sorted(loss_params(name)), name
            assert type(loss_from_config(COUNTS, cfg, stage)).__name__ == name
    cfg = OmegaConf.merge(config_template(), OmegaConf.from_dotlist(["stage2.loss=LDAMLoss"]))
    with pytest.raises(ValueError, match="stage2.loss='LDAMLoss' cannot be used in stage 2; expected one of"):
        loss_from_config(COUNTS, cfg, 2)
