"""The roofline in benchmarks/bench_train.py: its multiply-add count must be exact, or its ceiling is wrong; the
instruction set it reports decides which precisions it measures."""
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ltsei.learn.models import ModelConfig, create_model

spec = importlib.util.spec_from_file_location("bench_train", Path(__file__).parent.parent / "benchmarks" / "bench_train.py")
bench_train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_train)


def sum_over_layers(L, count):
    "Sum `count(module, input)` over ConvNetADSB's Conv1d and Linear layers in a forward pass on one sample."
    model = create_model("ConvNetADSB", 20, L, ModelConfig(conv_impl="conv1d")).eval()
    total = []
    hs = [m.register_forward_hook(lambda mod, inp, out: total.append(count(mod, inp[0])))
          for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    with torch.no_grad(): model(torch.zeros(1, 2, L))
    for h in hs: h.remove()
    return sum(total)


def useful_macs(mod, x):
    "Products with a non-padding input: all-ones input convolved with all-ones weights, summed."
    if isinstance(mod, nn.Linear): return mod.in_features * mod.out_features
    ones = torch.ones(1, mod.in_channels, x.shape[-1], dtype=torch.float64)
    w = torch.ones(mod.out_channels, mod.in_channels, *mod.kernel_size, dtype=torch.float64)
    return int(F.conv1d(ones, w, padding=mod.padding).sum())


def nominal_macs(mod, x):
    "Every output element times a full weight row, padding included."
    return (mod.out_features * mod.in_features if isinstance(mod, nn.Linear)
            else mod.out_channels * x.shape[-1] * mod.weight[0].numel())


def test_roofline_counts_every_useful_multiply_add():
    for L in (768, 4800):
        assert bench_train.train_flops_per_sample(L, 20) == 2 * 3 * sum_over_layers(L, useful_macs)


def test_roofline_skips_padding_taps():
    "At L=768 the last layers run on 4 and 2 samples with 7 taps, so the nominal count is larger."
    assert bench_train.train_flops_per_sample(768, 20) < 2 * 3 * sum_over_layers(768, nominal_macs)


def test_isa_detection_names_the_precision_auto_uses():
    isa = bench_train.detect_isa()
    assert isa["model"] and isa["torch_capability"] and set(isa["flags"]) <= set(bench_train.ISA_FLAGS)
    assert isa["auto"] == ("bf16" if isa["amx"] else "fp32")
    assert set(bench_train.cpu_precisions(isa)) == {"fp32", "bf16"}


def test_bf16_is_labelled_by_the_unit_that_runs_it():
    how = lambda flags, amx: bench_train.cpu_precisions({"flags": flags, "amx": amx})["bf16"]
    assert how(["avx512f", "avx512_bf16", "amx_tile", "amx_bf16"], True) == "AMX tiles"
    assert how(["avx512f", "avx512_bf16"], False) == "AVX-512-BF16 dot products"
    assert how(["avx2"], False).startswith("emulated")


def test_layer_rates_cover_every_convolution():
    rows = bench_train.layer_rates(384, "fp32", batch=2, reps=1)
    assert len(rows) == 13 and rows[0][:4] == (2, 50, 15, 384) and all(r[4] > 0 for r in rows)
    conv_flops = sum(rate * sec for *_, rate, sec in rows) / 2           # per sample
    assert 0.95 < conv_flops / bench_train.train_flops_per_sample(384, 20) <= 1.0   # the rest: the linear layers
