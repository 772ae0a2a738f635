"""The multi-expert rivals RIDE, SADE and BalPoE (issue 17): each loss and SADE's test-time aggregation against a
hand computation (plain `math`, never the code under test), the config's refusals, the registry rows, and each row
run once at the smoke profile."""
import math

import numpy as np
import pytest
import torch

from ltsei.cli import guide_main
from ltsei.experiments.config import ConfigError, compose_config
from ltsei.learn.losses import ExpertsOutput, create_loss, reversed_prior
from ltsei.rows import ROWS_BY_ID, select_rows
from ltsei.learn.stage2 import sade_agreement_loss
from ltsei.experiments.tables import table_rows
from conftest import SMALL
from test_run import check_metrics

RIVALS = ["x2_ride", "x2_sade", "x2_balpoe"]
N2 = [3, 1]                                                     # pi = (3/4, 1/4)
ZE = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]],        # (B=2, K=3, C=2) expert logits
                   [[0.5, -1.0], [2.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
Y = torch.tensor([0, 1])
OUT = ExpertsOutput(logits=ZE.mean(1), expert_logits=ZE)
LP = [math.log(.75), math.log(.25)]


def ce(z, y):
    "Cross-entropy of one sample, by hand."
    return math.log(sum(math.exp(v) for v in z)) - z[y]


def softmax(z, T=(1.0, 1.0)):
    e = [math.exp(v / t) for v, t in zip(z, T)]
    return [v / sum(e) for v in e]


def test_balpoe_loss_by_hand():
    taus = [0.0, 1.0, 2.0]
    want = np.mean([np.mean([ce([ZE[i, k, c].item() + taus[k] * LP[c] for c in range(2)], Y[i].item()) for k in range(3)])
                    for i in range(2)])
    got = create_loss("BalPoELoss", N2, tau_min=0.0, tau_max=2.0)(OUT, Y).item()
    assert abs(got - want) < 1e-6


def test_sade_loss_by_hand():
    rev = [math.log(.25), math.log(.75)]                       # the prior reversed by rank
    adj = [lambda c: 0.0, lambda c: LP[c], lambda c: LP[c] - 2.0 * rev[c]]
    want = sum(np.mean([ce([ZE[i, k, c].item() + adj[k](c) for c in range(2)], Y[i].item()) for i in range(2)])
               for k in range(3))
    got = create_loss("SADELoss", N2, tau=2.0)(OUT, Y).item()
    assert abs(got - want) < 1e-6
    assert np.allclose(reversed_prior([10, 40, 20, 5]), np.array([20, 5, 10, 40]) / 75)


@pytest.mark.parametrize("epoch", [0, 1])
def test_ride_loss_by_hand(epoch):
    "Before the DRW epoch: unweighted LDAM per expert, T = 1; from it: class-balanced weights and per-class T."
    s, alpha, beta, r = 2.0, -0.2, 0.9999, 0.05
    f = create_loss("RIDELoss", N2, max_margin=0.5, scale=s, drw_start=1, cb_beta=beta, diversity_factor=alpha,
                    diversity_temperature=1.0, reweight_factor=r)
    f.set_epoch(epoch)
    D = [0.5 * 3 ** -0.25, 0.5]                                # n^(-1/4) rescaled to max 0.5
    if epoch >= 1:
        w = [(1 - beta) / (1 - beta ** n) for n in N2]; w = [2 * v / sum(w) for v in w]
        t = [2 * p * r + 1 - r for p in (.75, .25)]; T = [v / max(t) for v in t]
    else:
        w, T = [1.0, 1.0], [1.0, 1.0]
    Tm = sum(T) / 2
    total = 0.0
    for k in range(3):
        num = den = kl = 0.0
        for i in range(2):
            y = Y[i].item()
            z = [ZE[i, k, c].item() - (s * D[y] if c == y else 0.0) for c in range(2)]
            num += w[y] * ce(z, y); den += w[y]
            p = softmax([ZE[i, :, c].mean().item() for c in range(2)], T)
            q = softmax([ZE[i, k, c].item() for c in range(2)], T)
            kl += sum(a * math.log(a / b) for a, b in zip(p, q)) / 2
        total += num / den + alpha * Tm ** 2 * kl
    assert abs(f(OUT, Y).item() - total) < 1e-6


def test_sade_aggregation_loss_by_hand():
    w = torch.tensor([0.2, -0.1, 0.4], dtype=torch.float64)
    e1 = ZE.flip(2)                                            # the second view
    a = [math.exp(v) / sum(math.exp(u) for u in w.tolist()) for v in w.tolist()]   # softmax of the weights
    cos = []
    for i in range(2):
        p = softmax([sum(a[k] * ZE[i, k, c].item() for k in range(3)) for c in range(2)])
        q = softmax([sum(a[k] * e1[i, k, c].item() for k in range(3)) for c in range(2)])
        cos.append(sum(u * v for u, v in zip(p, q)) / math.sqrt(sum(u * u for u in p) * sum(v * v for v in q)))
    assert abs(sade_agreement_loss(w, ZE, e1).item() + sum(cos) / 2) < 1e-6


def test_losses_refuse_a_plain_output_and_a_wrong_expert_count():
    with pytest.raises(ValueError, match="ConvNetADSBExperts"):
        create_loss("BalPoELoss", N2, tau_min=0.0, tau_max=2.0)(ZE.mean(1), Y)
    with pytest.raises(ValueError, match="exactly 3 experts"):
        create_loss("SADELoss", N2, tau=2.0)(ExpertsOutput(ZE[:, :2].mean(1), ZE[:, :2]), Y)


# The multi-expert network itself (shapes, s * cosine, the mean aggregate, no aggregation in the state dict,
# aggregation_weights restored) is checked where it is defined: nbs/09_models.ipynb and nbs/14_stage2.ipynb.


@pytest.mark.parametrize("overrides,needle", [
    (["loss.name=RIDELoss"], "needs model.name=ConvNetADSBExperts"),
    (["model.name=ConvNetADSBExperts", "loss.name=BalPoELoss"], "expected stage2.enabled=false"),
    (["stage2.enabled=false", "stage3.mode=sade_aggregation"], "sade_aggregation"),
    (["model.name=ConvNetADSBExperts", "stage2.enabled=false", "loss.name=SADELoss", "model.num_experts=2"], "model.num_experts=3"),
    (["model.name=ConvNetADSBExperts", "stage2.enabled=false", "stage3.mode=tau_norm"], "one linear classifier"),
    (["model.name=ConvNetADSBExperts", "stage2.enabled=false", "model.expert_blocks=14"], "model.expert_blocks"),
])
def test_config_refuses(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        compose_config(["profile=smoke", *overrides])


def test_rival_rows_are_registered_in_the_extra_table():
    assert [r.id for r in select_rows("2.4")] == RIVALS
    assert set(RIVALS) <= set(table_rows("extra")) and not set(RIVALS) & set(table_rows("main"))
    assert set(RIVALS) <= {r.id for r in select_rows("main")}            # `--rows main` runs them
    for rid in RIVALS:
        r = ROWS_BY_ID[rid]
        assert not r.guide and r.note and "model.name=ConvNetADSBExperts" in r.run_args and "stage2.enabled=false" in r.run_args
        cfg = compose_config(["profile=quick", *r.run_args])                 # the guide's epochs, scaled like every row
        assert cfg.training.epochs == compose_config(["profile=quick", "stage2.enabled=false"]).training.epochs
    assert compose_config(["profile=quick", *ROWS_BY_ID["x2_ride"].run_args]).loss.ldam_drw_start == 8   # 160 x 0.05


@pytest.mark.parametrize("rid", RIVALS)
def test_rival_row_runs_at_smoke(in_scratch, rid):
    out = in_scratch / "rivals" / rid
    assert guide_main([*ROWS_BY_ID[rid].run_args, "profile=smoke", *SMALL, f"hydra.run.dir={out}"]) == 0
    m = check_metrics(out / "metrics.json")
    assert m["stage2"] is None
    a = m["test"].get("aggregation_weights")
    if rid == "x2_sade":
        assert len(a) == 3 and abs(sum(a) - 1) < 1e-4 and len(m["val"]["aggregation_weights"]) == 3
    else:
        assert a is None


def test_five_seeds_plan_the_main_and_extra_rows(tmp_path, capsys):
    """`ltsei reproduce --seeds 5` plans every main and extra row (rivals included) for seeds 0..4 (dry run: nothing runs;
    `--demo` composes the configs the fast way, the plan is the same)."""
    from ltsei.orchestration.reproduce import reproduce_main
    for spec, n_rows in (("main", 27), ("x*", 9)):
        assert reproduce_main(["--profile", "quick", "--rows", spec, "--seeds", "5", "--runs-dir", str(tmp_path), "--dry-run", "--demo"]) == 0
        out = capsys.readouterr().out
        assert f"{n_rows} rows x 5 seed(s) = {5 * n_rows} runs" in out
        for rid in RIVALS:
            assert all(f"{rid}/seed{k}" in out for k in range(5)), rid
    assert not any((tmp_path / "quick").glob("*/*/seed*/metrics.json"))
