"""The roofline in benchmarks/bench_train.py: its multiply-add count must be exact, or its ceiling is wrong."""
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ltsei.models import ModelConfig, create_model

spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).parent.parent / "benchmarks" / "bench_train.py")
bench_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_train)


def brute_force_macs(L, classes):
    "Count the products with non-padding inputs by convolving all-ones inputs with all-ones weights."
    model = create_model("ConvNetADSB", classes, L, ModelConfig(conv_impl="conv1d")).eval()
    total = []
    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            total.append(mod.in_features * mod.out_features); return
        ones = torch.ones(1, mod.in_channels, inp[0].shape[-1], dtype=torch.float64)
        w = torch.ones(mod.out_channels, mod.in_channels, *mod.kernel_size, dtype=torch.float64)
        total.append(int(F.conv1d(ones, w, padding=mod.padding).sum()))
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    with torch.no_grad(): model(torch.zeros(1, 2, L))
    for h in hs: h.remove()
    return sum(total)


def test_roofline_counts_every_useful_multiply_add():
    for L in (768, 4800):
        assert bench_train.train_flops_per_sample(L, 20) == 2 * 3 * brute_force_macs(L, 20)


def test_roofline_skips_padding_taps():
    "At L=768 the last layers run on 4 and 2 samples with 7 taps, so a nominal count would be larger."
    model = create_model("ConvNetADSB", 20, 768, ModelConfig(conv_impl="conv1d")).eval()
    nominal = []
    def hook(mod, inp, out): nominal.append(out[0].numel() * mod.weight[0].numel())
    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    with torch.no_grad(): model(torch.zeros(1, 2, 768))
    for h in hs: h.remove()
    assert bench_train.train_flops_per_sample(768, 20) < 2 * 3 * sum(nominal)
