"""Backbones (ltsei.learn.models): shapes, gradients, aux losses, conv1d/conv2d equivalence, channels_last + bf16."""
import pytest
import torch
from omegaconf import OmegaConf

from ltsei.learn.models import (ModelConfig, copy_between_impls, convert_conv_state_dict, create_model,
                          load_balance_loss, log_spectrum)

NAMES = ["ConvNetADSB", "ResNet1D", "DilatedTCN", "FrequencyDomainExpert", "MixtureOfExpertsConvNet"]
FEATURE_DIMS = {"ConvNetADSB": 350, "ResNet1D": 256, "DilatedTCN": 64, "FrequencyDomainExpert": 350,
                "MixtureOfExpertsConvNet": 256}
C = 7
SHORT = 480   # >= 384, the shortest input ConvNetADSB accepts: keeps the per-model checks fast


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_defaults():   # the registered names: nbs/09_models.ipynb
    cfg = ModelConfig()
    assert (cfg.name, cfg.dropout, cfg.use_attention, cfg.moe_lb_weight, cfg.moe_feature_dim, cfg.conv_impl) == \
        ("ConvNetADSB", 0.1, True, 0.01, 256, "conv2d")


def test_errors():
    with pytest.raises(ValueError, match="ResNet1D"):
        create_model("ResNet50", C, 960, ModelConfig())
    with pytest.raises(ValueError, match="384"):
        create_model("ConvNetADSB", C, 100, ModelConfig())
    with pytest.raises(ValueError, match="conv_impl"):
        create_model("ConvNetADSB", C, 960, ModelConfig(conv_impl="conv3d"))
    m = create_model("DilatedTCN", C, 960, ModelConfig())
    with pytest.raises(ValueError, match=r"\(B, 2, L\)"):
        m(torch.randn(2, 960))
    with pytest.raises(ValueError, match=r"\(B, 2, L\)"):
        m(torch.randn(2, 3, 960))


def test_omegaconf_node():
    "The Hydra tree passes an OmegaConf node built from ModelConfig: attribute access suffices."
    node = OmegaConf.structured(ModelConfig(name="ResNet1D", dropout=0.3, conv_impl="conv1d"))
    m = create_model(node.name, C, 960, node)
    assert m.dropout.p == 0.3 and isinstance(m.classifier, torch.nn.Linear)


@pytest.mark.parametrize("length", [960, 4800])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, length):
    torch.manual_seed(0)
    m = create_model(name, C, length, ModelConfig(name=name))
    x = torch.randn(2, 2, length)
    f = m.features(x)
    assert f.shape == (2, FEATURE_DIMS[name]) and m.feature_dim == FEATURE_DIMS[name]
    assert isinstance(m.classifier, torch.nn.Linear) and m.classifier.weight.shape == (C, FEATURE_DIMS[name])
    logits = m(x)
    assert logits.shape == (2, C) and torch.isfinite(logits).all()
    aux = m.aux_loss()
    assert aux.ndim == 0
    (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])) + aux).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name == "MixtureOfExpertsConvNet":
        assert aux.item() > 0 and aux.requires_grad
        assert m.gate.out.weight.grad.abs().sum() > 0          # the load-balance term reaches the gate
        assert m.last_gates.shape == (2, 3)
    else:
        assert aux.item() == 0.0 and not aux.requires_grad


def test_moe_aux_is_weighted_load_balance():
    m = create_model("MixtureOfExpertsConvNet", C, 960, ModelConfig(moe_lb_weight=0.5, moe_feature_dim=32))
    assert m.aux_loss().item() == 0.0                        # before any forward pass
    m(torch.randn(4, 2, 960))
    assert m.feature_dim == 32
    torch.testing.assert_close(m.aux_loss(), 0.5 * load_balance_loss(m.last_gates))
    g = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    torch.testing.assert_close(load_balance_loss(g), 3 * (1.0 * 0.65 + 0 * 0.25 + 0 * 0.1) * torch.ones(()))


@pytest.mark.parametrize("name", NAMES)
def test_eval_determinism_and_dropout(name):
    torch.manual_seed(1)
    m = create_model(name, C, SHORT, ModelConfig(name=name, dropout=0.5)).eval()
    x = torch.randn(3, 2, SHORT)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m(x), rtol=0, atol=0)
        torch.testing.assert_close(m.features(x), m.features(x), rtol=0, atol=0)
    m.train()
    with torch.no_grad():
        f = m.features(x)
    assert (f == 0).float().mean() > 0.2                     # dropout is the last step of features()


@pytest.mark.parametrize("name", NAMES)
def test_conv1d_equals_conv2d(name):
    torch.manual_seed(2)
    m1 = create_model(name, C, SHORT, ModelConfig(conv_impl="conv1d"))
    m2 = copy_between_impls(m1, create_model(name, C, SHORT, ModelConfig(conv_impl="conv2d")))
    x = torch.randn(3, 2, SHORT)
    for mode in ("eval", "train"):
        getattr(m1, mode)(); getattr(m2, mode)()
        torch.manual_seed(3); y1 = m1(x)
        torch.manual_seed(3); y2 = m2(x)
        torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    # and back: conv2d -> conv1d state dict
    m3 = create_model(name, C, SHORT, ModelConfig(conv_impl="conv1d"))
    m3.load_state_dict(convert_conv_state_dict(m2.state_dict(), "conv1d"))
    m1.eval(); m3.eval()
    with torch.no_grad():
        torch.testing.assert_close(m1(x), m3(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_bf16(name):
    torch.manual_seed(4)
    ref = create_model(name, C, SHORT, ModelConfig(conv_impl="conv2d")).eval()
    m = copy_between_impls(ref, create_model(name, C, SHORT, ModelConfig(conv_impl="conv2d")))
    m = m.to(memory_format=torch.channels_last).eval()
    first = next(p for p in m.parameters() if p.ndim == 4)
    assert first.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 2, SHORT)
    with torch.no_grad():
        y_ref = ref(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
    assert y.dtype == torch.bfloat16
    assert ((y.float() - y_ref).norm() / y_ref.norm()) < 0.05
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(m(x).float(), torch.arange(2) % C) + m.aux_loss()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_log_spectrum():
    L = 960
    t = torch.arange(L)
    z = torch.exp(2j * torch.pi * 25 * t / L) + 0.1 * torch.exp(-2j * torch.pi * 60 * t / L)
    x = torch.stack([z.real, z.imag])[None].float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = log_spectrum(x)
    assert s.dtype == torch.float32 and s.shape == (1, 2, L)
    assert int(s[0, 0].argmax()) - L // 2 == 25 and int(s[0, 1].argmax()) - L // 2 == -25
    torch.testing.assert_close(s[0, 1], s[0, 0].flip(-1).roll(1, -1))   # mirror about zero frequency (even L)
    # orthonormal FFT: Parseval with the window applied
    w = torch.hann_window(L, periodic=True)
    energy = (s[0, 0].exp() - 1e-6).sum()
    torch.testing.assert_close(energy, (w * z.abs()).square().sum().float(), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError):
        log_spectrum(torch.randn(1, 3, L))
