"""Samplers (ltsei.learn.samplers): empirical class frequencies match q_c ~ n_c^a; `none` is a permutation."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from ltsei.learn.samplers import SAMPLERS, create_sampler, power_probabilities

C, IR, N_MAX = 60, 100, 20000
COUNTS = torch.tensor([max(1, int(N_MAX * IR ** (-i / (C - 1)))) for i in range(C)])   # IR-100 profile
# shuffle which class gets which rank, as the data layer does
PERM = torch.randperm(C, generator=torch.Generator().manual_seed(0))
LABELS = torch.repeat_interleave(PERM, COUNTS)[torch.randperm(int(COUNTS.sum()), generator=torch.Generator().manual_seed(1))]
EXPONENTS = {"sqrt": 0.5, "class_uniform": 0.0, "inv_freq": -1.0}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def n_c():
    return torch.bincount(LABELS, minlength=C)


def check_frequencies(sampler, epoch, a):
    idx = sampler.epoch_indices(epoch)
    assert idx.dtype == torch.int64 and idx.shape == (len(LABELS),)
    assert int(idx.min()) >= 0 and int(idx.max()) < len(LABELS)
    q = power_probabilities(n_c(), a)
    torch.testing.assert_close(q, (n_c().double() ** a) / (n_c().double() ** a).sum())
    torch.testing.assert_close(sampler.class_probabilities(epoch), q)
    obs = torch.bincount(LABELS[idx], minlength=C)
    tv = 0.5 * float((obs.double() / len(idx) - q).abs().sum())
    assert tv < 0.02, tv
    p = chisquare(obs.numpy(), (q * len(idx)).numpy()).pvalue
    assert p > 1e-4, p
    return idx


def test_registry():
    assert sorted(SAMPLERS) == sorted(["none", "sqrt", "class_uniform", "inv_freq", "power", "progressive_power"])


@pytest.mark.parametrize("name", ["sqrt", "class_uniform", "inv_freq"])
def test_fixed_exponent_frequencies(name):
    s = create_sampler(name, LABELS, 3, None, None, None, gen())
    assert s.exponent(0) == EXPONENTS[name] and s.exponent(2) == EXPONENTS[name]
    idx = check_frequencies(s, 1, EXPONENTS[name])
    assert len(torch.unique(idx)) < len(idx)                    # with replacement


@pytest.mark.parametrize("alpha", [2.0, 0.3, -0.5])
def test_power_frequencies(alpha):
    s = create_sampler("power", LABELS, 1, alpha, None, None, gen())
    assert s.exponent(0) == alpha
    check_frequencies(s, 0, alpha)


def test_none_is_permutation():
    s = create_sampler("none", LABELS, 2, 0.5, 0.0, 1.0, gen())   # alphas are ignored by `none`
    assert s.exponent(0) is None and s.exponent(1) is None
    idx = s.epoch_indices(0)
    assert torch.equal(idx.sort().values, torch.arange(len(LABELS)))
    assert not torch.equal(idx, torch.arange(len(LABELS)))
    assert not torch.equal(idx, s.epoch_indices(1))
    torch.testing.assert_close(s.class_probabilities(0), n_c().double() / len(LABELS))


def test_progressive_power():
    E = 11
    s = create_sampler("progressive_power", LABELS, E, None, 1.0, 0.0, gen())
    assert s.exponent(0) == 1.0 and s.exponent(E - 1) == 0.0
    assert s.exponent(5) == pytest.approx(0.5) and s.exponent(1) == pytest.approx(0.9)
    for e in (0, 5, E - 1):
        check_frequencies(s, e, s.exponent(e))
    s1 = create_sampler("progressive_power", LABELS, 1, None, 0.7, -0.3, gen())
    assert s1.exponent(0) == 0.7


def test_within_class_uniform():
    "A class's samples are drawn uniformly: the head class's indices under class_uniform."
    s = create_sampler("class_uniform", LABELS, 1, None, None, None, gen(3))
    idx = s.epoch_indices(0)
    head = int(PERM[0])
    members = torch.nonzero(LABELS == head).squeeze(1)
    drawn = idx[LABELS[idx] == head]
    assert torch.isin(drawn, members).all()
    # bin the head's members into 20 groups of positions; each group drawn about equally often
    pos = torch.searchsorted(members, drawn)
    obs = torch.bincount(pos * 20 // len(members), minlength=20).numpy()
    assert chisquare(obs).pvalue > 1e-4


def test_determinism_and_seed():
    a = create_sampler("sqrt", LABELS, 4, None, None, None, gen(5))
    b = create_sampler("sqrt", LABELS, 4, None, None, None, gen(5))
    c = create_sampler("sqrt", LABELS, 4, None, None, None, gen(6))
    assert torch.equal(a.epoch_indices(2), b.epoch_indices(2))
    assert torch.equal(a.epoch_indices(2), a.epoch_indices(2))          # pure function of the epoch
    assert not torch.equal(a.epoch_indices(2), a.epoch_indices(3))
    assert not torch.equal(a.epoch_indices(2), c.epoch_indices(2))
    a.set_epoch(3)
    assert list(iter(a)) == a.epoch_indices(3).tolist() and len(a) == len(LABELS)


def test_empty_class_never_drawn():
    labels = torch.tensor([0] * 50 + [2] * 5)                       # class 1 has no samples
    for name in ("inv_freq", "class_uniform"):
        s = create_sampler(name, labels, 1, None, None, None, gen())
        assert s.class_probabilities(0)[1] == 0
        assert (labels[s.epoch_indices(0)] != 1).all()


def test_errors():
    with pytest.raises(ValueError, match="inv_freq"):
        create_sampler("reverse", LABELS, 1, None, None, None, gen())
    with pytest.raises(ValueError, match="alpha"):
        create_sampler("power", LABELS, 1, None, None, None, gen())
    with pytest.raises(ValueError, match="alpha_start"):
        create_sampler("progressive_power", LABELS, 5, None, None, 0.0, gen())
    with pytest.raises(ValueError, match="alpha_end"):
        create_sampler("progressive_power", LABELS, 5, None, 1.0, None, gen())
    with pytest.raises(ValueError, match="labels"):
        create_sampler("sqrt", torch.tensor([]), 1, None, None, None, gen())
    with pytest.raises(ValueError, match="integers"):
        create_sampler("sqrt", torch.tensor([0.0, 1.0]), 1, None, None, None, gen())
    with pytest.raises(ValueError, match="num_epochs"):
        create_sampler("sqrt", LABELS, 0, None, None, None, gen())
    s = create_sampler("sqrt", LABELS, 2, None, None, None, gen())
    with pytest.raises(ValueError, match="epoch"):
        s.epoch_indices(2)


def test_numpy_labels_accepted():
    s = create_sampler("sqrt", np.array([0, 0, 1, 1, 1, 2]), 1, None, None, None, gen())
    assert len(s.epoch_indices(0)) == 6


def test_every_sampler_builds_itself_from_the_config_tree():
    # the sampler of each stage comes from its own section: sampling.* over training.epochs, stage2.* over stage2.epochs
    from omegaconf import OmegaConf
    from ltsei.experiments.config import config_template
    from ltsei.learn.samplers import sampler_from_config
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([6, 3, 1]))
    for name in SAMPLERS.names():
        cfg = OmegaConf.merge(config_template(), OmegaConf.from_dotlist(
            [f"sampling.name={name}", "sampling.alpha=0.25", "training.epochs=4", f"stage2.sampler={name}", "stage2.alpha=0.25", "stage2.epochs=2"]))
        s1, s2 = sampler_from_config(cfg, 1, labels, 3), sampler_from_config(cfg, 2, labels, 4)
        assert (s1.num_epochs, s2.num_epochs) == (4, 2)
        want = create_sampler(name, labels, 4, 0.25, 1.0, 0.0, torch.Generator().manual_seed(3))
        assert torch.equal(s1.epoch_indices(2), want.epoch_indices(2)), name
    seed = OmegaConf.merge(config_template(), OmegaConf.from_dotlist(["compat=seed", "sampling.name=sqrt"]))
    assert type(sampler_from_config(seed, 1, labels, 0)).__name__ == "ShuffleSampler"   # the seed's stage 1 ignores it
