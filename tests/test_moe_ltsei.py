"""Tests of ltsei.learn.moe_ltsei: frequency groups, the MoE head, the MoE-LTSEI loss and its ablation switches,
and the routing metrics. Expected values come from hand computation or explicit numpy, from the formulas of the
seed's code as the method contract writes them (nbs/methods.ipynb); the earlier paraphrase (EARLIER) stays tested
as the option set that reproduces it."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltsei.learn.losses import LOSSES, MoEOutput, create_loss
from ltsei.learn.losses import class_balanced_weights
from ltsei.learn.moe_ltsei import (MoEHead, MoELTSEILoss, adaptive_margins, difficulty_weights, frequency_groups,
                             gate_group_weights, routing_metrics)

DEFAULTS = dict(num_experts=3, scale=30.0, beta=0.999, margin_m0=0.35, margin_m1=0.2, margin_gamma=0.5,
                diff_gamma=2.0, diff_alpha=1.0, lambda_gate=1.0, lambda_lb=0.0, gate_weighting="none",
                margin_type="effective", margin_max=None, label_smoothing=0.0, gate_target_smoothing=0.0,
                difficulty="seed", grouping="auto", many_thresh=100, few_thresh=20)   # guide 5.1 on the seed's defaults
EARLIER = dict(margin_max=0.55, difficulty="additive", grouping="rank")   # ltsei's earlier paraphrase (plus init=small)
IR100 = np.floor(500 * 100.0 ** (-np.arange(60) / 59)).astype(int)       # the paper profile's counts
QUICK = np.floor(300 * 100.0 ** (-np.arange(20) / 19)).astype(int)       # the quick profile's counts


def rank_groups_of(counts, K):
    return frequency_groups(counts, K, "rank", 100, 20)


def head_for(C, K, d=16, normalize=True, seed=0, init="seed"):
    torch.manual_seed(seed)
    return MoEHead(feature_dim=d, num_classes=C, num_experts=K, gate_hidden=8, gate_dropout=0.1,
                   normalize_features=normalize, scale=30.0, detach_gate=False, init=init, gate_noise=0.0)


def moe_loss(counts, **over):
    return MoELTSEILoss(counts, **{**DEFAULTS, **over})


def random_output(B, C, K, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    cos = (torch.rand(B, C, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_(requires_grad)
    gl = torch.randn(B, K, generator=g, dtype=torch.float64).requires_grad_(requires_grad)
    return MoEOutput(logits=30 * cos, cosine=cos, gate_logits=gl, gate_probs=gl.softmax(1))


# ----- frequency groups -----

COUNTS7 = [5, 9, 9, 1, 3, 7, 2]   # ranking by n desc, ties by label: 1, 2, 5, 0, 4, 6, 3


def test_seed_groups_auto_absolute_quantile():
    # quick counts (300 ... 3): max >= 100, so auto = absolute: many n >= 100 (5), few n <= 20 (9: the class with 20 is few)
    g = frequency_groups(QUICK, 3, "auto", 100, 20)
    np.testing.assert_array_equal(g, [0] * 5 + [1] * 6 + [2] * 9)
    np.testing.assert_array_equal(frequency_groups(QUICK, 3, "absolute", 100, 20), g)
    # paper counts (500 ... 5): many 21 (n >= 100, the last is 104), few 19 (n <= 20)
    np.testing.assert_array_equal(np.bincount(frequency_groups(IR100, 3, "auto", 100, 20)), [21, 20, 19])
    # quantile rule on the quick counts: q(1/3) and q(2/3) of the 20 counts (numpy's linear interpolation)
    lo, hi = np.quantile(QUICK, 1 / 3), np.quantile(QUICK, 2 / 3)
    np.testing.assert_array_equal(frequency_groups(QUICK, 3, "quantile", 100, 20),
                                  np.where(QUICK >= hi, 0, np.where(QUICK <= lo, 2, 1)))
    # auto falls back to quantiles when no class reaches many_thresh: counts 90 ... 10 -> q = 26.67, 46.67
    np.testing.assert_array_equal(frequency_groups([90, 60, 40, 30, 20, 10], 3, "auto", 100, 20), [0, 0, 1, 1, 2, 2])
    # thresholds are the seed's keys: >= and <= at the boundary
    np.testing.assert_array_equal(frequency_groups([100, 99, 21, 20], 3, "absolute", 100, 20), [0, 1, 1, 2])
    # the seed's groups are three, whatever K
    for K in (2, 4): np.testing.assert_array_equal(frequency_groups(QUICK, K, "auto", 100, 20), g)


def test_frequency_groups_one_class_each():
    # K = 1 .. 4 on these counts: the notebook's teaching case (nbs/13_moe_ltsei.ipynb)
    np.testing.assert_array_equal(rank_groups_of(COUNTS7, 7), [3, 0, 1, 6, 4, 2, 5])   # in rank order


def test_frequency_groups_ties_by_label_and_sizes():
    # all equal: the ranking is the label order
    np.testing.assert_array_equal(rank_groups_of([4] * 6, 4), [0, 0, 1, 1, 2, 3])
    for K in (2, 3, 4):
        g = rank_groups_of(IR100, K)
        sizes = np.bincount(g, minlength=K)
        assert sizes.max() - sizes.min() <= 1 and np.all(np.diff(sizes) <= 0)
        # contiguous in the ranking: every class of group k is at least as frequent as every class of group k+1
        for k in range(K - 1):
            assert IR100[g == k].min() >= IR100[g == k + 1].max()
    np.testing.assert_array_equal(np.bincount(rank_groups_of(list(range(1, 11)), 3)), [4, 3, 3])
    np.testing.assert_array_equal(rank_groups_of(list(range(1, 11)), 3), [2, 2, 2, 1, 1, 1, 0, 0, 0, 0])


def test_frequency_groups_errors():
    with pytest.raises(ValueError, match="num_experts"):
        rank_groups_of(COUNTS7, 8)
    with pytest.raises(ValueError, match="num_experts"):
        rank_groups_of(COUNTS7, 0)
    with pytest.raises(ValueError, match="experiment.grouping"):
        frequency_groups(COUNTS7, 3, "thirds", 100, 20)
    with pytest.raises(ValueError, match="experiment.few_thresh"):
        frequency_groups(COUNTS7, 3, "auto", 20, 20)


# ----- head -----

@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
def test_head_shapes_and_mixing(K):
    head = head_for(C=6, K=K).eval()
    f = torch.randn(5, 16)
    out = head(f)
    assert isinstance(out, MoEOutput)
    assert [tuple(t.shape) for t in out] == [(5, 6), (5, 6), (5, K), (5, K)]
    torch.testing.assert_close(out.logits, 30 * out.cosine)
    torch.testing.assert_close(out.gate_probs, out.gate_logits.softmax(1))
    # c = sum_k g_k cos_k, with cos from unit vectors
    xn = f / f.norm(dim=1, keepdim=True)
    V = head.experts / head.experts.norm(dim=-1, keepdim=True)
    cos = torch.einsum("bd,kcd->bkc", xn, V)
    torch.testing.assert_close(out.cosine, (out.gate_probs[:, :, None] * cos).sum(1))
    assert out.cosine.abs().max() <= 1 + 1e-6


def test_gate_near_uniform_at_init():
    for K in (2, 3, 4):
        for init in ("seed", "small"):
            head = MoEHead(feature_dim=350, num_classes=60, num_experts=K, gate_hidden=128, gate_dropout=0.1,
                           normalize_features=True, scale=30.0, detach_gate=False, init=init, gate_noise=0.0).eval()
            g = head(torch.randn(64, 350).relu() * 5).gate_probs
            assert (g - 1 / K).abs().max() < 1e-2


def test_initial_statistics_seed_and_small():
    # seed: W1 Kaiming-normal (ReLU gain, fan-in: std sqrt(2/d)), b1 = 0, W2 ~ N(0, 0.01^2), b2 = 0, experts Kaiming-normal;
    # small (the earlier start): W1 PyTorch's uniform (std 1/sqrt(3 d)), W2 ~ N(0, 1e-6), unit-vector experts
    kw = dict(feature_dim=1000, num_classes=100, num_experts=3, gate_hidden=800, gate_dropout=0.1,
              normalize_features=True, scale=30.0, detach_gate=False, gate_noise=0.0)
    torch.manual_seed(0)
    s = MoEHead(**kw, init="seed")
    assert s.gate[0].weight.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    assert s.gate[0].weight.mean().abs().item() < 1e-3 and s.gate[0].bias.abs().max().item() == 0
    assert s.gate[3].weight.std().item() == pytest.approx(0.01, rel=0.05) and s.gate[3].bias.abs().max().item() == 0
    assert s.experts.std().item() == pytest.approx(math.sqrt(2 / 1000), rel=0.02)
    torch.manual_seed(0)
    e = MoEHead(**kw, init="small")
    assert e.gate[0].weight.std().item() == pytest.approx(1 / math.sqrt(3 * 1000), rel=0.02)
    assert e.gate[0].bias.abs().max().item() > 0
    assert e.gate[3].weight.std().item() == pytest.approx(1e-3, rel=0.05)
    torch.testing.assert_close(e.experts.norm(dim=-1), torch.ones(3, 100))
    # the earlier start is the earlier code's, draw for draw: nn.Linear defaults, then W2, then the experts
    torch.manual_seed(0)
    g = torch.nn.Sequential(torch.nn.Linear(1000, 800), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(800, 3))
    torch.nn.init.normal_(g[-1].weight, std=1e-3)
    v = F.normalize(torch.randn(3, 100, 1000), dim=-1)
    assert torch.equal(g[0].weight, e.gate[0].weight) and torch.equal(g[3].weight, e.gate[3].weight)
    assert torch.equal(v, e.experts.data)
    with pytest.raises(ValueError, match="stage2.moe.init"):
        MoEHead(**kw, init="xavier")


def test_gate_noise_in_training_only():
    torch.manual_seed(0)
    head = MoEHead(feature_dim=16, num_classes=5, num_experts=3, gate_hidden=8, gate_dropout=0.0,
                   normalize_features=True, scale=30.0, detach_gate=False, init="seed", gate_noise=1.0)
    assert head.noise is not None and head.noise.weight.std().item() < 0.03 and head.noise.bias.abs().max() == 0
    f = torch.randn(4, 16)
    with torch.no_grad():
        clean = head.gate(F.normalize(f, dim=1))
        head.train(); a, b = head(f).gate_logits, head(f).gate_logits
        head.eval(); c = head(f).gate_logits
    assert not torch.equal(a, b) and not torch.equal(a, clean)
    torch.testing.assert_close(c, clean)
    assert head_for(5, 3).noise is None                 # gate_noise = 0: no noise layer, no extra draws


def test_normalize_features_only_changes_gate_input():
    h1, h2 = head_for(C=4, K=2, normalize=True), head_for(C=4, K=2, normalize=False)
    h1.eval(); h2.eval()
    f = torch.randn(3, 16)
    # the gate of the unnormalised head on f/||f|| equals the normalised head on f (same init, same seed)
    o1, o2 = h1(f), h2(f / f.norm(dim=1, keepdim=True))
    torch.testing.assert_close(o1.cosine, o2.cosine)
    torch.testing.assert_close(o1.gate_probs, o2.gate_probs)


def test_head_bad_input():
    head = head_for(C=4, K=2)
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        head(torch.randn(3, 15))
    with pytest.raises(ValueError, match="normalize_features"):
        MoEHead(16, 4, 2, 8, 0.1, "yes", 30.0, False, "seed", 0.0)
    with pytest.raises(ValueError, match="num_experts"):
        MoEHead(16, 4, 0, 8, 0.1, True, 30.0, False, "seed", 0.0)


def test_gradients_reach_gate_and_experts():
    head = head_for(C=5, K=3)
    loss_fn = moe_loss([40, 20, 10, 5, 2], lambda_lb=0.01)
    f = torch.randn(12, 16)
    y = torch.arange(12) % 5
    loss_fn(head(f), y).backward()
    grads = {n: p.grad for n, p in head.named_parameters()}
    assert set(grads) == {"experts", "gate.0.weight", "gate.0.bias", "gate.3.weight", "gate.3.bias"}
    for n, g in grads.items():
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, n
    # every expert gets a gradient
    assert (grads["experts"].abs().sum(dim=(1, 2)) > 0).all()


# ----- loss: weights, margins -----

def test_seed_margins_at_the_profiles_counts():
    # m_c = 0.35 sqrt(E_max / E_c), no cap; by hand for the head and the rarest class of each profile
    E = lambda n: (1 - 0.999 ** n) / 0.001
    for counts, rarest in ((QUICK, 3), (IR100, 5)):
        m = adaptive_margins(counts, 0.999, 0.35, 0.2, 0.5, "effective", None)
        assert m[0] == pytest.approx(0.35)
        assert m[-1] == pytest.approx(0.35 * math.sqrt(E(counts[0]) / E(rarest)))
        assert np.all(np.diff(m) >= -1e-12)
        lf = moe_loss(counts)
        np.testing.assert_allclose(lf.margins.numpy(), m, rtol=1e-6)
    q = adaptive_margins(QUICK, 0.999, 0.35, 0.2, 0.5, "effective", None)
    assert q[-1] == pytest.approx(0.35 * math.sqrt(E(300) / E(3)))      # 3.256: above 2, never won
    assert q[-1] == pytest.approx(3.2555, abs=1e-3) and (q > 2).sum() == 5   # n = 7, 6, 4, 3, 3
    # the earlier cap gives 15 of the 20 quick classes the same 0.55
    assert (adaptive_margins(QUICK, 0.999, 0.35, 0.2, 0.5, "effective", 0.55) == 0.55).sum() == 15
    # log type: m0 + m1 (1 - log(1 + n) / log(1 + n_max))^gamma
    lg = adaptive_margins(QUICK, 0.999, 0.35, 0.2, 0.5, "log", None)
    np.testing.assert_allclose(lg, 0.35 + 0.2 * np.sqrt(1 - np.log(1 + QUICK) / np.log(301)))
    with pytest.raises(ValueError, match="margin_type"):
        adaptive_margins(QUICK, 0.999, 0.35, 0.2, 0.5, "effective_capped", None)


def test_class_weights_and_margins():
    beta = 0.999
    E = (1 - beta ** IR100.astype(float)) / (1 - beta)
    w = (1 / E) / (1 / E).mean()
    np.testing.assert_allclose(class_balanced_weights(IR100, beta), w)
    m = adaptive_margins(IR100, beta, 0.35, 0.2, 0.5, "effective", 0.55)   # the earlier cap m0 + m1
    np.testing.assert_allclose(m, np.minimum(0.35 * np.sqrt(E.max() / E), 0.55))
    assert m[0] == pytest.approx(0.35)                       # most frequent class: exactly m0
    assert np.all(m >= 0.35 - 1e-12) and np.all(m <= 0.55 + 1e-12)
    assert np.all(np.diff(m) >= -1e-12)                       # rarer -> larger
    assert m[-1] == pytest.approx(0.55)
    lf = moe_loss(IR100, **EARLIER)
    np.testing.assert_allclose(lf.margins.numpy(), m, rtol=1e-6)
    np.testing.assert_allclose(lf.class_weights.numpy(), w, rtol=1e-6)
    assert lf.class_weights.mean().item() == pytest.approx(1.0)
    np.testing.assert_array_equal(lf.groups.numpy(), rank_groups_of(IR100, 3))


def test_margin_bounds_random_profiles():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.integers(1, 1000, size=rng.integers(2, 30))
        m0, m1, gm = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, 2)
        m = adaptive_margins(n, 0.999, m0, m1, gm, "effective", m0 + m1)
        assert np.all(m >= m0 - 1e-12) and np.all(m <= m0 + m1 + 1e-12)
        u = adaptive_margins(n, 0.999, m0, m1, gm, "effective", None)
        assert np.all(u >= m0 - 1e-12) and u[np.argmax(n)] == pytest.approx(m0)
        assert m[np.argmax(n)] == pytest.approx(m0)


# ----- loss: hand computation -----

# The hand case of the loss (C = 3, K = 2, B = 2, every term written out) is the notebook's (nbs/13_moe_ltsei.ipynb).


def test_load_balance_unbalanced_case():
    # K = 2, B = 4, every sample's largest gate is expert 0: f = (1, 0); P_0 = mean g_0
    lf = moe_loss([10, 5, 3, 1], num_experts=2, lambda_lb=0.01, grouping="rank")
    g = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.8, 0.2]], dtype=torch.float64)
    out = MoEOutput(logits=torch.zeros(4, 4, dtype=torch.float64), cosine=torch.zeros(4, 4, dtype=torch.float64),
                    gate_logits=g.log(), gate_probs=g)
    assert lf.parts(out, torch.tensor([0, 1, 2, 3]))["lb"].item() == pytest.approx(2 * 0.75)


# ----- loss: ablation switches change only their own term -----

def _parts(lf, out, y):
    return {k: v.item() for k, v in lf.parts(out, y).items()}


def test_ablation_margin_m0_zero():
    counts = [200, 80, 30, 10, 4, 2]
    out, y = random_output(32, 6, 3), torch.arange(32) % 6
    base, abl = moe_loss(counts), moe_loss(counts, margin_m0=0.0)
    assert torch.count_nonzero(abl.margins) == 0
    torch.testing.assert_close(abl.class_weights, base.class_weights)
    pb, pa = _parts(base, out, y), _parts(abl, out, y)
    assert pa["gate"] == pb["gate"] and pa["lb"] == pb["lb"] and pa["cls"] != pb["cls"]
    # no margin: z~ = s c, numpy
    c, yy = out.cosine.detach().numpy(), y.numpy()
    z = 30 * c
    p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    py = p[np.arange(32), yy]; po = np.where(np.eye(6)[yy] > 0, -1, p).max(1)
    w = abl.class_weights.double().numpy()
    ref = np.mean(w[yy] * (1 - py) ** 2 * np.minimum(np.exp(np.minimum(po, 5)), 50) * -np.log(py))   # the seed's d
    assert pa["cls"] == pytest.approx(ref, rel=1e-5)


def test_ablation_lambda_gate_zero():
    counts = [200, 80, 30, 10, 4, 2]
    out, y = random_output(32, 6, 3), torch.arange(32) % 6
    pb, pa = _parts(moe_loss(counts), out, y), _parts(moe_loss(counts, lambda_gate=0.0), out, y)
    assert pa["cls"] == pb["cls"] and pa["gate"] == pb["gate"]   # the term is still reported
    assert pb["total"] == pytest.approx(pb["cls"] + pb["gate"])
    assert pa["total"] == pa["cls"]


def test_ablation_lambda_gate_zero_no_gradient_from_gate_term():
    counts = [200, 80, 30, 10, 4, 2]
    y = torch.arange(8) % 6
    out = random_output(8, 6, 3, requires_grad=True)
    # gate logits enter only through L_gate and (via the softmax) L_lb; with both off, no gradient reaches them
    moe_loss(counts, lambda_gate=0.0, lambda_lb=0.0)(out, y).backward()
    assert out.gate_logits.grad is None


def test_ablation_diff_gamma_zero():
    counts = [200, 80, 30, 10, 4, 2]
    out, y = random_output(32, 6, 3), torch.arange(32) % 6
    base, abl = moe_loss(counts), moe_loss(counts, diff_gamma=0.0)
    pb, pa = _parts(base, out, y), _parts(abl, out, y)
    assert pa["gate"] == pb["gate"] and pa["lb"] == pb["lb"] and pa["cls"] != pb["cls"]
    # the seed keeps the exp factor: d = min(e^{min(alpha o, 5)}, 50), L_cls = mean(w_y * d * CE(z~, y))
    c, yy = out.cosine.detach().numpy(), y.numpy()
    m, w = abl.margins.double().numpy(), abl.class_weights.double().numpy()
    z = 30 * (c - m[yy][:, None] * np.eye(6)[yy])
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    p = np.exp(z - lse[:, None]); po = np.where(np.eye(6)[yy] > 0, -1, p).max(1)
    ref = np.mean(w[yy] * np.exp(po) * (lse - z[np.arange(32), yy]))
    assert pa["cls"] == pytest.approx(ref, rel=1e-5)
    # and diff_alpha = 0 as well removes it: d = 1
    p0 = _parts(moe_loss(counts, diff_gamma=0.0, diff_alpha=0.0), out, y)
    ref = np.mean(w[yy] * (lse - z[np.arange(32), yy]))
    assert p0["cls"] == pytest.approx(ref, rel=1e-5)
    # the earlier additive form with diff_gamma = 0: d = 1
    pe = _parts(moe_loss(counts, diff_gamma=0.0, difficulty="additive"), out, y)
    assert pe["cls"] == pytest.approx(ref, rel=1e-5)


def test_ablation_lambda_lb():
    counts = [200, 80, 30, 10, 4, 2]
    out, y = random_output(32, 6, 3), torch.arange(32) % 6
    pb, pa = _parts(moe_loss(counts), out, y), _parts(moe_loss(counts, lambda_lb=0.01), out, y)
    assert pa["cls"] == pb["cls"] and pa["gate"] == pb["gate"] and pa["lb"] == pb["lb"]
    assert pb["total"] == pytest.approx(pb["cls"] + pb["gate"])
    assert pa["total"] == pytest.approx(pb["total"] + 0.01 * pb["lb"])


def test_seed_difficulty_weight_and_its_gradient():
    # L = w_y d(p) CE with d = (1 - p_y)^2 e^{o} not detached: the gradient wrt c includes d's own, checked against
    # a finite difference of the numpy formula
    lf = moe_loss([20, 10, 5], num_experts=1, lambda_gate=0.0)
    c = torch.tensor([[0.3, 0.1, -0.2]], dtype=torch.float64, requires_grad=True)
    gl = torch.zeros(1, 1, dtype=torch.float64)
    y = torch.tensor([1])
    lf(MoEOutput(30 * c, c, gl, gl.softmax(1)), y).backward()
    m, w = lf.margins.double()[1].item(), lf.class_weights.double()[1].item()

    def L(cv):
        z = 30 * (cv - m * np.eye(3)[1]); p = np.exp(z - z.max()); p /= p.sum()
        return w * (1 - p[1]) ** 2 * min(np.exp(min(max(p[0], p[2]), 5)), 50) * -np.log(p[1])
    c0 = c.detach().numpy()[0]
    num = np.array([(L(c0 + h) - L(c0 - h)) / 2e-6 for h in np.eye(3) * 1e-6])
    np.testing.assert_allclose(c.grad[0].numpy(), num, rtol=1e-5, atol=1e-8)
    # the weight itself, by hand, and its caps: e^{min(alpha o, 5)} <= e^5, then <= 50
    p = torch.tensor([[0.5, 0.3, 0.2], [0.0, 1.0, 0.0]], dtype=torch.float64)
    d = difficulty_weights(p, torch.tensor([0, 0]), 2.0, 1.0, "seed")
    torch.testing.assert_close(d, torch.tensor([0.25 * math.exp(0.3), math.e], dtype=torch.float64))
    d = difficulty_weights(p, torch.tensor([0, 0]), 2.0, 10.0, "seed")       # alpha o = 3 -> e^3; 10 -> e^5 -> 50
    torch.testing.assert_close(d, torch.tensor([0.25 * math.exp(3.0), 50.0], dtype=torch.float64))


def test_difficulty_weight_is_detached():
    # the earlier additive form: dL/dc for one sample is w_y * d * dCE/dc (d a constant)
    lf = moe_loss([20, 10, 5], num_experts=1, lambda_gate=0.0, difficulty="additive")
    c = torch.tensor([[0.3, 0.1, -0.2]], dtype=torch.float64, requires_grad=True)
    gl = torch.zeros(1, 1, dtype=torch.float64)
    y = torch.tensor([1])
    lf(MoEOutput(30 * c, c, gl, gl.softmax(1)), y).backward()
    m = lf.margins.double()[1].item()
    zt = 30 * (c.detach() - m * F.one_hot(y, 3))
    p = zt.softmax(1)[0]
    d = (1 - p[1] + max(p[0], p[2])) ** 2
    expected = lf.class_weights.double()[1] * d * 30 * (p - F.one_hot(y, 3)[0])
    torch.testing.assert_close(c.grad[0], expected)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 6])
def test_any_number_of_experts(K):
    counts = [300, 150, 80, 40, 20, 10, 5, 2]
    head = head_for(C=8, K=K)
    f, y = torch.randn(16, 16), torch.arange(16) % 8
    for grouping in ("auto", "rank"):
        lf = moe_loss(counts, num_experts=K, lambda_lb=0.01, grouping=grouping)
        parts = lf(head(f), y, return_parts=True)
        assert all(torch.isfinite(v) for v in parts.values())
        parts["total"].backward()
    assert np.bincount(lf.groups.numpy()).max() - np.bincount(lf.groups.numpy()).min() <= 1   # rank: equal groups
    seed = moe_loss(counts, num_experts=K, lambda_lb=0.01)
    np.testing.assert_array_equal(seed.groups.numpy(), [0, 0, 1, 1, 2, 2, 2, 2])   # >= 100 many, <= 20 few
    parts = seed(head(f), y, return_parts=True)
    if K == 3:
        torch.testing.assert_close(parts["total"], parts["cls"] + parts["gate"] + 0.01 * parts["lb"])
        assert parts["gate"].item() > 0
    else:   # three groups, K experts: no gate loss (the seed trains the gate through L_cls and L_lb alone)
        assert parts["gate"].item() == 0 and not seed.gate_supervised
        torch.testing.assert_close(parts["total"], parts["cls"] + 0.01 * parts["lb"])


def test_loss_input_errors():
    lf = moe_loss([20, 10, 5, 2])
    with pytest.raises(ValueError, match="MoEOutput"):
        lf(torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="gate"):
        lf(random_output(2, 4, 2), torch.tensor([0, 1]))     # K = 3 expected
    with pytest.raises(ValueError, match="beta"):
        moe_loss([20, 10], beta=1.0)
    with pytest.raises(ValueError, match="margin_m1"):
        moe_loss([20, 10], margin_m1=-0.1)


def test_create_loss_moe():
    assert "MoELTSEILoss" in LOSSES
    lf = create_loss("MoELTSEILoss", IR100, **DEFAULTS)
    assert isinstance(lf, MoELTSEILoss)
    with pytest.raises(ValueError, match=r"missing parameter\(s\) \['lambda_lb'\]"):
        create_loss("MoELTSEILoss", IR100, **{k: v for k, v in DEFAULTS.items() if k != "lambda_lb"})
    lf.set_epoch(3)   # no schedule: a no-op


# ----- routing metrics -----

def test_routing_metrics_hand():
    gp = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    y = np.array([0, 1, 2, 3, 0])
    groups = np.array([0, 1, 1, 2])
    rm = routing_metrics(gp, y, groups, 3, 3)
    # group(y) = (0, 1, 1, 2, 0); argmax = (0, 1, 0, 2, 1): hits 1, 1, 0, 1, 0
    assert rm["routing_acc"] == pytest.approx(0.6)
    assert rm["routing_acc_per_group"] == pytest.approx([0.5, 0.5, 1.0])
    assert rm["group_samples"] == [2, 2, 1]
    np.testing.assert_allclose(rm["usage_by_group"], [[0.5, 0.3, 0.2], [0.3, 0.55, 0.15], [0.2, 0.2, 0.6]])
    np.testing.assert_allclose(rm["usage_argmax_frac"], [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    json.dumps(rm)
    # tensors work too and an empty group gives None
    rm2 = routing_metrics(torch.tensor(gp[:2]), torch.tensor([0, 1]), torch.tensor([0, 1, 1, 2]), 3, 3)
    assert rm2["usage_by_group"][2] is None and rm2["routing_acc_per_group"][2] is None
    json.dumps(rm2)
    # two experts, the seed's three groups: no routing accuracy, usage 3 x 2
    rm3 = routing_metrics(gp[:, :2] / gp[:, :2].sum(1, keepdims=True), y, groups, 2, 3)
    assert rm3["routing_acc"] is None and rm3["routing_acc_per_group"] == [None] * 3
    assert [len(u) for u in rm3["usage_by_group"]] == [2, 2, 2]


def test_routing_metrics_errors():
    with pytest.raises(ValueError, match="gate_probs"):
        routing_metrics(np.ones((2, 2)) / 2, np.array([0, 1]), np.array([0, 1, 2]), 3, 3)
    with pytest.raises(ValueError, match="groups"):
        routing_metrics(np.ones((2, 3)) / 3, np.array([0, 1]), np.array([0, 5]), 3, 3)
    with pytest.raises(ValueError, match="y"):
        routing_metrics(np.ones((2, 3)) / 3, np.array([0, 9]), np.array([0, 1, 2]), 3, 3)


# ----- the gate options (off by default = the guide's method) -----

def test_gate_weighting_default_is_the_guides_loss():
    out = random_output(16, 60, 3, seed=4)
    y = torch.randint(0, 60, (16,), generator=torch.Generator().manual_seed(4))
    none = moe_loss(IR100, gate_weighting="none")(out, y, return_parts=True)
    groups = torch.as_tensor(frequency_groups(IR100, 3, "auto", 100, 20))
    torch.testing.assert_close(none["gate"], F.cross_entropy(out.gate_logits, groups[y]))
    assert np.array_equal(gate_group_weights(groups.numpy(), IR100, 3, "none"), np.ones(3))
    # gate target smoothing eps: KL(q || g) with q = (1 - eps) onehot + eps / 3
    sm = moe_loss(IR100, gate_target_smoothing=0.3)(out, y, return_parts=True)
    q = F.one_hot(groups[y], 3).double() * 0.7 + 0.1
    torch.testing.assert_close(sm["gate"], (q * (q.log() - out.gate_logits.log_softmax(1))).sum(1).mean())
    for k in ("cls", "lb"): torch.testing.assert_close(sm[k], none[k])
    # label smoothing of the classification CE changes L_cls only
    ls = moe_loss(IR100, label_smoothing=0.1)(out, y, return_parts=True)
    assert not torch.isclose(ls["cls"], none["cls"]) and torch.equal(ls["gate"], none["gate"])


def test_gate_weighting_balanced_formula():
    K = 3
    g = frequency_groups(IR100, K, "auto", 100, 20)
    N_r = np.array([IR100[g == r].sum() for r in range(K)], dtype=np.float64)
    u = gate_group_weights(g, IR100, K, "balanced")
    np.testing.assert_allclose(u, IR100.sum() / (K * N_r))
    assert u[0] < u[1] < u[2]                                  # rarer groups weigh more
    np.testing.assert_allclose((u * N_r).sum(), IR100.sum())   # every frame weighs 1 on average
    out = random_output(40, 60, K, seed=5)
    y = torch.arange(40) + 10                                  # classes of all three groups
    bal = moe_loss(IR100, gate_weighting="balanced")(out, y, return_parts=True)
    base = moe_loss(IR100)(out, y, return_parts=True)
    t = torch.as_tensor(g)[y]
    ce = F.cross_entropy(out.gate_logits, t, reduction="none")
    w = torch.as_tensor(u, dtype=ce.dtype)[t]
    expected = (w * ce).sum() / w.sum()
    torch.testing.assert_close(bal["gate"], expected)
    assert not torch.isclose(bal["gate"], base["gate"])        # the option changes the gate term ...
    for k in ("cls", "lb"): torch.testing.assert_close(bal[k], base[k])   # ... and nothing else
    torch.testing.assert_close(bal["total"], bal["cls"] + bal["gate"])


def test_gate_weighting_equal_groups_is_plain_mean():
    counts = [5] * 6                                           # 3 rank groups of equal size: u = 1
    np.testing.assert_allclose(gate_group_weights(rank_groups_of(counts, 3), counts, 3, "balanced"), np.ones(3))
    out = random_output(9, 6, 3, seed=6); y = torch.arange(9) % 6
    a = moe_loss(counts, gate_weighting="balanced", grouping="rank")(out, y, return_parts=True)
    b = moe_loss(counts, grouping="rank")(out, y, return_parts=True)
    torch.testing.assert_close(a["gate"], b["gate"])


def test_gate_weighting_bad_value():
    with pytest.raises(ValueError, match="gate_weighting.*none, balanced"):
        moe_loss(IR100, gate_weighting="inverse")


def test_create_loss_requires_gate_weighting():  # noqa: the config passes every parameter
    lf = create_loss("MoELTSEILoss", IR100, **{**DEFAULTS, "gate_weighting": "balanced"})
    assert lf.gate_weighting == "balanced"


def test_detach_gate_stops_only_the_classification_gradient():
    torch.manual_seed(1)
    f = torch.randn(12, 16).relu(); y = torch.randint(0, 6, (12,))
    heads = {}
    for det in (False, True):
        torch.manual_seed(0)
        heads[det] = MoEHead(feature_dim=16, num_classes=6, num_experts=3, gate_hidden=8, gate_dropout=0.0,
                             normalize_features=True, scale=30.0, detach_gate=det, init="seed", gate_noise=0.0)
    assert heads[False].detach_gate is False
    o0, o1 = heads[False](f), heads[True](f)
    for a, b in zip(o0, o1): assert torch.equal(a.detach(), b.detach())       # same forward values
    cls_only = moe_loss([20, 10, 8, 5, 3, 2], lambda_gate=0.0)
    cls_only(o0, y).backward(); cls_only(o1, y).backward()
    assert heads[False].gate[0].weight.grad.abs().sum() > 0                    # guide: L_cls reaches the gate
    assert heads[True].gate[0].weight.grad is None                             # detached: it does not
    torch.testing.assert_close(heads[True].experts.grad, heads[False].experts.grad)
    # with the gate term on, the detached gate's gradient is exactly that of lambda_gate * L_gate
    for h in heads.values(): h.zero_grad(set_to_none=True)
    full = moe_loss([20, 10, 8, 5, 3, 2], lambda_gate=0.7)
    full(heads[True](f), y).backward()
    g_full = heads[True].gate[0].weight.grad.clone()
    heads[True].zero_grad(set_to_none=True)
    (0.7 * full(heads[True](f), y, return_parts=True)["gate"]).backward()
    torch.testing.assert_close(g_full, heads[True].gate[0].weight.grad)


def test_detach_gate_bad_value():
    with pytest.raises(ValueError, match="detach_gate"):
        MoEHead(feature_dim=4, num_classes=3, num_experts=2, gate_hidden=4, gate_dropout=0.0,
                normalize_features=True, scale=30.0, detach_gate="yes", init="seed", gate_noise=0.0)


def test_earlier_form_is_one_override_set():
    # the four overrides that reproduce the earlier paraphrase, kept equal in the torch-free row registry
    from ltsei.experiments.config import EARLIER_MOE_LTSEI, compose_config
    from ltsei.rows import EARLIER_MOE_LTSEI as ROWS_EARLIER, EARLIER_POINTS, ROWS_BY_ID
    assert set(EARLIER_MOE_LTSEI.split()) == set(ROWS_EARLIER.split()) == set(EARLIER_POINTS.values())
    cfg = compose_config(["profile=smoke", *EARLIER_MOE_LTSEI.split()])
    assert (cfg.experiment.grouping, cfg.stage2.moe.init, cfg.stage2.moe_loss.difficulty, cfg.stage2.moe_loss.margin_max) \
        == ("rank", "small", "additive", 0.55)
    short = set(ROWS_BY_ID["s5_2_short"].run_args)
    for k, ov in EARLIER_POINTS.items():   # each before/after row is 5.2 plus its one point
        assert set(ROWS_BY_ID[f"x5_earlier_{k.split()[0]}"].run_args) - short == {ov}
