"""ltsei on a real CUDA device (issue 36): skipped where there is none, run by `benchmarks/gpu_check.py` (its
`device tests` step) and by `pytest -k "gpu or cuda"` on a GPU machine. Seconds on a GPU: tiny models only.
Nothing here has run yet: no GPU had been lent to the project when it was written."""
import pytest
import torch
from torch import nn

import ltsei.learn.train as T
from ltsei.learn.losses import create_loss
from ltsei.learn.samplers import create_sampler

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.py)")


@cuda
def test_cuda_runtime_auto_precision_and_determinism():
    rt = T.make_runtime(None, "auto", "auto")
    want = "bf16" if torch.cuda.get_device_capability(0)[0] >= 8 else "fp16"
    assert rt.device == torch.device("cuda", 0) and rt.precision == want and torch.cuda.current_device() == 0
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    with rt.autocast(): out = nn.Conv1d(2, 4, 5).to(rt.device)(torch.randn(3, 2, 64, device=rt.device))
    assert out.dtype == T.PRECISIONS[want]


def _tiny_fit(precision: str, seed: int = 0):
    rt = T.make_runtime(None, precision, "false")
    torch.manual_seed(seed)
    C = 3
    x, y = torch.randn(96, 2, 64), torch.arange(96) % C
    model = nn.Sequential(nn.Conv1d(2, 8, 5), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.2),
                          nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(8, C)).to(rt.device)
    loss_fn = create_loss("LDAMLoss", [40, 32, 24], max_margin=0.5, scale=5.0, drw_start=0, reweight_power=0.0)
    sampler = create_sampler("none", y, 3, None, None, None, torch.Generator().manual_seed(seed))
    opt = T.make_optimizer(model.parameters(), "SGD", 0.05, 0.9, 5e-4)
    val = lambda m: T.evaluate(m, x, y, 32, rt, C, {"many": [0], "medium": [1], "few": [2]})
    return T.fit(model, x, y, loss_fn=loss_fn, sampler=sampler, optimizer=opt, epochs=3, lr=0.05, warmup_epochs=1,
                 batch_size=32, rt=rt, validate=val, progress=False)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_two_identical_trainings_are_bit_identical(precision):
    a, b = _tiny_fit(precision), _tiny_fit(precision)
    assert a.last_state.keys() == b.last_state.keys()
    assert all(torch.equal(a.last_state[k], b.last_state[k]) for k in a.last_state)


@cuda
def test_cuda_fp16_trains_with_a_grad_scaler():
    r = _tiny_fit("fp16")
    assert all(torch.isfinite(v).all() for v in r.last_state.values() if v.is_floating_point())


@cuda
def test_cuda_rng_state_is_the_run_gpu_only():
    T.make_runtime(None, "fp32", "auto"); torch.cuda.init()
    d = T.rng_state()
    assert isinstance(d["cuda"], torch.Tensor)
    assert T.restore_rng(d)
