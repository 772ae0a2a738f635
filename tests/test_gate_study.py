"""The gate study (nbs/18_gate_study.ipynb): a bad variant name fails before any work, and a variant at
stage-2 seed 0 is exactly the pipeline's stage 2 of seed 0 (the notebook's claim, checked end to end, on the smaller
pool of conftest.SMALL: the claim holds at any size)."""
import pytest

from ltsei.experiments.gate_study import GATE_VARIANTS, gate_study, run_variant, study_config, study_stage1
from ltsei.experiments.run import run_experiment
from ltsei.learn.train import make_runtime
from conftest import SMALL


def test_unknown_variant_is_one_clear_message(in_scratch):
    with pytest.raises(ValueError, match="unknown gate-study variant 'routed'; expected one of cRT"):
        gate_study(variants=["routed"], work="never-made")
    assert not (in_scratch / "never-made").exists()


def test_variant_at_seed_0_is_the_pipelines_stage2(in_scratch):
    routed = GATE_VARIANTS["sampler none + detach_gate + balanced gate loss"]
    cfg = study_config(" ".join([routed, *SMALL]), "smoke", "runs/cache", stage2_epochs=6)   # a variant's overrides, SMALL's after
    assert cfg.data.synth.pool_per_class == 200 and cfg.stage2.moe.detach_gate
    m = run_experiment(cfg, in_scratch / "gate_pipeline", progress=False)
    rt = make_runtime(None, "auto", "auto")   # the precision the gate study and the pipeline use (their stage-1 key)
    data, model = study_stage1(cfg, rt)
    row = run_variant(cfg, data, model, rt, seed=0)
    for k in ("balanced_acc", "many_acc", "medium_acc", "few_acc"):
        assert row[k] == m["test"][k], k
    assert row["routing_acc"] == m["routing"]["routing_acc"]
    assert row["routing_per_group"] == m["routing"]["routing_acc_per_group"]
