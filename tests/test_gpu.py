"""The CUDA path on a machine without a GPU (issue 36): what the first GPU user would hit, checked by faking what
it needs (the device count, names and compute capabilities, CUDA_VISIBLE_DEVICES, a Ray cluster with GPUs).
Each test fakes every CUDA call it reaches, so that it passes on a GPU box too (not yet seen: no GPU has been lent);
the tests that need a real GPU are in tests/test_gpu_device.py (skipped here). Seconds in all: no training."""
import argparse
import types

import numpy as np
import pytest
import torch

import ltsei.learn.train as T
from ltsei.experiments.config import ConfigError, check_machine, compose_config, numerics, stage1_key, stage2_key

NAMES = {0: "NVIDIA A100-SXM4-80GB", 1: "NVIDIA H100 80GB HBM3"}
CAPS = {0: (8, 0), 1: (9, 0)}


def _index(device=None) -> int:
    if device is None: return 0
    if isinstance(device, int): return device
    d = torch.device(device)
    return d.index or 0


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA with two made-up GPUs (an A100 as 0, an H100 as 1); returns a dict to change them and the calls made.
    Determinism and TF32 switches are recorded, not set (they are process-wide)."""
    st = {"names": dict(NAMES), "caps": dict(CAPS), "count": 2, "current": 0, "set_device": [], "deterministic": [],
          "rng": {}, "initialized": True}
    c = torch.cuda
    monkeypatch.setattr(c, "is_available", lambda: True)
    monkeypatch.setattr(c, "device_count", lambda: st["count"])
    monkeypatch.setattr(c, "get_device_name", lambda device=None: st["names"][_index(device)])
    monkeypatch.setattr(c, "get_device_capability", lambda device=None: st["caps"][_index(device)])
    monkeypatch.setattr(c, "is_bf16_supported", lambda including_emulation=True: True)   # emulation says yes: unused
    monkeypatch.setattr(c, "current_device", lambda: st["current"])
    monkeypatch.setattr(c, "is_initialized", lambda: st["initialized"])
    def set_device(d):
        st["set_device"].append(torch.device(d)); st["current"] = _index(d)
    monkeypatch.setattr(c, "set_device", set_device)
    monkeypatch.setattr(c, "get_rng_state", lambda device="cuda": st["rng"].get(st["current"], torch.zeros(16, dtype=torch.uint8)))
    def set_rng_state(s, device="cuda"):
        if st["current"] >= st["count"]: raise RuntimeError("invalid device ordinal")
        st["rng"][st["current"]] = s
    monkeypatch.setattr(c, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.version, "hip", None)              # a CUDA build, also when the tests run on ROCm
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda on, warn_only=False: st["deterministic"].append((on, warn_only)))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.setattr(T, "set_tf32", lambda on: st.__setitem__("tf32", on))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    return st


# ---- 1 and 11: which device `gpus` selects -------------------------------------------------------------------

def test_gpus_cpu_runs_on_the_cpu_where_cuda_exists(fake_cuda):
    "gpus=cpu on a GPU server: the CPU, no CUDA device made current, the machine check and the key say cpu (point 1)."
    assert T.select_device("cpu") == torch.device("cpu")
    rt = T.make_runtime("cpu", "fp32", "auto")
    assert rt.device == torch.device("cpu") and fake_cuda["set_device"] == [] and fake_cuda["deterministic"] == []
    cfg = compose_config(["profile=smoke", "gpus=cpu"])
    check_machine(cfg)
    n = numerics(cfg)
    assert n["device"] == "cpu" and "gpu" not in n and n["num_threads"] == 1


@pytest.mark.parametrize("gpus,want", [(None, None), ("", None), ("cpu", "cpu"), (" CPU ", "cpu"), (0, [0]), ("1", [1]),
                                       ("0,1", [0, 1]), (" 2, 3 ", [2, 3]), ([0, 1], [0, 1]), ("[1,0]", [1, 0])])
def test_gpu_request_reads_every_form_of_gpus(gpus, want):
    assert T.gpu_request(gpus) == want


@pytest.mark.parametrize("gpus", ["first", "-1", [-1], 0.5, True, "0,x"])
def test_gpu_request_refuses_with_one_message(gpus):
    with pytest.raises(ValueError, match=r"expected null, cpu, a CUDA device id \(0\) or ids"):
        T.gpu_request(gpus)


def test_gpus_list_checked_by_its_ids_not_its_text(fake_cuda, monkeypatch):
    "gpus=[0,1] is two ids (it was refused as '[0' before); an id the machine lacks names the ids it has (point 11)."
    check_machine(compose_config(["profile=smoke", "gpus=[0,1]"]))
    fake_cuda["count"] = 1
    with pytest.raises(ConfigError, match=r"gpus=.*expected CUDA device ids below 1"):
        check_machine(compose_config(["profile=smoke", "gpus=[0,1]"]))
    with pytest.raises(ConfigError, match="gpus='first': expected null, cpu"):
        check_machine(compose_config(["profile=smoke", "gpus=first"]))


def test_make_runtime_makes_the_selected_gpu_current(fake_cuda):
    "gpus=1: cuda:1, set as the current device (its RNG, autocast and new tensors), deterministic kernels (points 4, 11)."
    rt = T.make_runtime(1, "fp32", "auto")
    assert rt.device == torch.device("cuda", 1) and fake_cuda["set_device"] == [torch.device("cuda", 1)]
    assert fake_cuda["deterministic"] == [(True, True)] and fake_cuda["tf32"] is False


def test_several_gpus_say_so_in_one_line_and_point_to_packing(fake_cuda, capsys):
    rt = T.make_runtime("0,1", "fp32", "auto")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert rt.device == torch.device("cuda", 0) and len(lines) == 1
    assert "one run uses one GPU" in lines[0] and "pack" in lines[0] and "--jobs 2" in lines[0]


def test_gpus_null_takes_cuda_0_where_cuda_exists(fake_cuda, capsys):
    assert T.select_device(None) == torch.device("cuda", 0) and capsys.readouterr().out == ""


# ---- 2: precision=auto by the selected GPU's compute capability ------------------------------------------------

@pytest.mark.parametrize("cap,want", [((9, 0), "bf16"), ((8, 0), "bf16"), ((8, 6), "bf16"), ((7, 5), "fp16"),
                                      ((7, 0), "fp16"), ((6, 1), "fp16")])
def test_auto_precision_follows_the_compute_capability(fake_cuda, cap, want):
    "is_bf16_supported() says yes (emulation) on every one of them; auto looks at the capability (point 2)."
    fake_cuda["caps"][0] = cap
    rt = T.make_runtime(0, "auto", "auto")
    assert rt.precision == want and (rt.reason.startswith("CUDA GPU with bf16") if want == "bf16" else "gradient scaler" in rt.reason)


def test_auto_precision_asks_the_gpu_that_gpus_selects(fake_cuda):
    "A V100 as cuda:0 and an H100 as cuda:1: gpus=1 is bf16, gpus=0 fp16, whichever device is current (point 2)."
    fake_cuda["caps"][0] = (7, 0)
    assert T.make_runtime(1, "auto", "auto").precision == "bf16"
    fake_cuda["current"] = 1
    assert T.make_runtime(0, "auto", "auto").precision == "fp16"


# ---- 3 and 11: the keys tell GPUs apart, not their ids ---------------------------------------------------------

def test_stage1_key_records_the_gpu(fake_cuda):
    "Name, compute capability, CUDA and cuDNN versions, determinism and TF32 of the GPU `gpus` selects (point 3)."
    n = numerics(compose_config(["profile=smoke"]))
    assert n == {"torch": torch.__version__, "device": "cuda", "precision": "bf16", "num_threads": None,
                 "cpu_capability": None, "cpu_amx": None, "gpu": NAMES[0], "capability": "8.0", "cuda": "12.4",
                 "cudnn": 90100, "deterministic": True, "tf32": False}
    assert numerics(compose_config(["profile=smoke", "gpus=1"]))["gpu"] == NAMES[1]


@pytest.mark.parametrize("change", ["name", "capability", "cuda", "cudnn"])
def test_stage1_key_differs_between_gpus(fake_cuda, monkeypatch, change):
    "An A100 and an H100 (or another CUDA, cuDNN) never share a stage 1 or a resume state (point 3)."
    cfg = compose_config(["profile=smoke", "training.precision=fp32"])
    k0 = stage1_key(cfg)
    if change == "name": fake_cuda["names"][0] = NAMES[1]
    if change == "capability": fake_cuda["caps"][0] = (9, 0)
    if change == "cuda": monkeypatch.setattr(torch.version, "cuda", "12.8")
    if change == "cudnn": monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90800)
    assert stage1_key(cfg) != k0


def test_stage2_key_ignores_the_gpu_id_but_not_the_device(fake_cuda):
    "gpus=0 and gpus=null are the same GPU here: one stage-2 key; gpus=cpu computes elsewhere: another (point 11)."
    key = lambda g: stage2_key(compose_config(["profile=smoke", f"gpus={g}"]))
    assert key(0) == key("null") != key("cpu")
    fake_cuda["count"] = 1
    assert key("null") == key(0)


# ---- 4: determinism, and fp32 that is fp32 -------------------------------------------------------------------

def test_cuda_numerics_sets_determinism_and_turns_tf32_off(fake_cuda):
    rec = T.cuda_numerics()
    assert rec == T.CUDA_NUMERICS == {"deterministic": True, "tf32": False}
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    assert fake_cuda["deterministic"] == [(True, True)] and fake_cuda["tf32"] is False
    import os
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == T.CUBLAS_WORKSPACE


def test_set_tf32_uses_the_api_this_torch_has(monkeypatch):
    "torch's fp32_precision where it exists ('ieee' = no TF32), else the older allow_tf32 flags."
    m = types.SimpleNamespace(fp32_precision="none"); conv = types.SimpleNamespace(fp32_precision="tf32")
    monkeypatch.setattr(torch.backends.cuda, "matmul", m)
    monkeypatch.setattr(torch.backends.cudnn, "conv", conv, raising=False)
    T.set_tf32(False)
    assert (m.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    old = types.SimpleNamespace(allow_tf32=True)
    monkeypatch.setattr(torch.backends.cuda, "matmul", old)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    T.set_tf32(False)
    assert old.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


# ---- 5: the gate study trains in the precision its key records ---------------------------------------------------

def test_gate_study_trains_in_the_precision_of_its_stage1_key(monkeypatch, tmp_path):
    import ltsei.experiments.gate_study as G
    seen = []
    class Stop(Exception): pass
    def spy(gpus, precision, channels_last):
        seen.append((gpus, precision)); raise Stop
    monkeypatch.setattr(G, "make_runtime", spy)
    with pytest.raises(Stop): G.gate_study("smoke", work=tmp_path)
    cfg = G.study_config("", "smoke", tmp_path)
    assert seen == [(cfg.gpus, str(cfg.training.precision))]


# ---- 6: Ray packs one run per GPU --------------------------------------------------------------------------------

class FakeRay:
    "The Ray calls `_submit_ray_tasks` makes, recorded."
    def __init__(self, gpus): self.gpus, self.options, self.put_value = gpus, None, None
    def cluster_resources(self): return {"CPU": 8, **({"GPU": self.gpus} if self.gpus else {})}
    def put(self, v): self.put_value = v; return "ref"
    def remote(self, fn):
        ray = self
        class R:
            def options(self, **kw): ray.options = kw; return self
            def remote(self, *a): return object()
        return R()


@pytest.mark.parametrize("gpus", [0, 2])
def test_ray_gpu_rows_run_in_a_fresh_worker_each(gpus, tmp_path):
    "A task with a GPU: max_calls=1 and no warm kernel kept in the worker (its CUDA_VISIBLE_DEVICES is per task)."
    from ltsei.orchestration.kernels import RowExecutor
    from ltsei.orchestration.launchers import LaunchOptions
    from ltsei.orchestration.ray_launcher import _submit_ray_tasks
    ray = FakeRay(gpus)
    _submit_ray_tasks(ray, [], RowExecutor("smoke", warm=2), LaunchOptions(launcher="ray"), 1)
    if gpus:
        assert ray.options["num_gpus"] == 1.0 and ray.options["max_calls"] == 1 and ray.put_value.warm == 0
    else:
        assert ray.options["num_gpus"] == 0 and "max_calls" not in ray.options and ray.put_value.warm == 1


def test_warm_kernel_of_one_gpu_never_goes_to_a_task_on_another(monkeypatch):
    "A kernel started while CUDA_VISIBLE_DEVICES was 0 is not handed out once this process's task is on GPU 1."
    from ltsei.orchestration.kernels import WarmKernels
    pool = WarmKernels(size=1, left=0)                     # left=0: starts no kernel
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    k0 = pool._key(None)
    pool._ready[k0] = ["kernel on GPU 0"]
    assert pool.ready() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert pool._key(None) != k0 and pool.ready() == 0 and pool.take(timeout=0.1) is None
    assert pool._key({"CUDA_VISIBLE_DEVICES": "0"}) == k0   # an explicit slot (the local launcher) wins
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pool._key(None) == ()                           # no CUDA_VISIBLE_DEVICES: the key it always had


# ---- 7: SLURM asks for a GPU, in the form every SLURM knows ----------------------------------------------------

def test_slurm_jobs_ask_for_one_gpu_by_default_as_gres():
    import ltsei.orchestration.local_launcher                  # registers --launcher local, the default
    from ltsei.orchestration.launchers import LaunchOptions, add_arguments, options_from_args
    from ltsei.orchestration.slurm_launcher import slurm_parameters
    o = options_from_args(add_arguments(argparse.ArgumentParser()).parse_args([]))
    assert o.slurm_gpus == 1 and slurm_parameters(o)["gres"] == "gpu:1" and "gpus_per_node" not in slurm_parameters(o)
    assert "gres" not in slurm_parameters(LaunchOptions(slurm_gpus=0))        # a CPU-only partition
    submitit = pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string
    s = _make_sbatch_string(command="python -m x", folder="f/%j", **slurm_parameters(LaunchOptions(slurm_gpus=2)))
    assert "#SBATCH --gres=gpu:2\n" in s and "gpus-per-node" not in s


# ---- 8: margins and priors are not rounded to bf16 ---------------------------------------------------------------

COUNTS = [500, 200, 90, 40, 17, 7, 3]


@pytest.mark.parametrize("name,params", [
    ("LDAMLoss", dict(max_margin=0.5, scale=30.0, drw_start=0, reweight_power=0.25)),
    ("BalancedSoftmaxLoss", {}), ("LogitAdjustmentLoss", dict(tau=1.0)),
    ("FocalLoss", dict(gamma=2.0, alpha=None)), ("ClassBalancedLoss", dict(beta=0.9999))])
def test_losses_add_margins_and_priors_in_fp32_under_autocast_cuda(name, params):
    "bf16 logits (autocast's on a GPU) give exactly the loss of the same logits in fp32 (point 8)."
    from ltsei.learn.losses import LOSSES
    loss = LOSSES[name](COUNTS, **params)
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, len(COUNTS), generator=g) * 3).bfloat16()
    y = torch.randint(0, len(COUNTS), (64,), generator=g)
    got, want = loss(z, y), loss(z.float(), y)
    assert got.dtype == torch.float32 and torch.equal(got, want), (got, want)


def test_ldam_margin_times_scale_is_not_rounded():
    "The bug itself: margins cast to bf16 before the scale of 30 moved the loss; in fp32 they do not."
    from ltsei.learn.losses import LDAMLoss
    loss = LDAMLoss(COUNTS, 0.5, 30.0, 0, 0.0)
    assert (loss.margins.bfloat16().float() - loss.margins).abs().max() * 30 > 0.01   # what bf16 rounding would cost
    assert loss.margins.dtype == torch.float32


# ---- 9: resume with fewer GPUs visible ---------------------------------------------------------------------------

def test_rng_state_keeps_the_run_gpu_only(fake_cuda):
    fake_cuda["rng"] = {0: torch.full((16,), 3, dtype=torch.uint8), 1: torch.full((16,), 7, dtype=torch.uint8)}
    fake_cuda["current"] = 1
    d = T.rng_state()
    assert torch.equal(d["cuda"], fake_cuda["rng"][1])       # one state, of the run's (current) GPU
    fake_cuda["count"], fake_cuda["current"] = 1, 0            # resumed where one GPU is visible
    T.set_rng_state(d)
    assert torch.equal(fake_cuda["rng"][0], d["cuda"])


def test_older_resume_state_with_more_gpus_than_visible(fake_cuda):
    "A state saved with one CUDA state per GPU (before this issue), resumed with one GPU: its current GPU's state."
    fake_cuda["count"] = 1
    d = T.rng_state()
    d["cuda"] = [torch.full((16,), 5, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)]
    T.set_rng_state(d)
    assert torch.equal(fake_cuda["rng"][0], d["cuda"][0])


def test_resume_whose_rng_does_not_fit_starts_over_instead_of_failing(fake_cuda, tmp_path, capsys):
    "restore_rng fails: every generator as it was, the resume state dropped with one line, training from epoch 0."
    from torch import nn
    model = nn.Linear(3, 2); opt = T.make_optimizer(model.parameters(), "SGD", 0.1, 0.9, 0.0)
    resume = T.Resume(tmp_path / "resume.pt", tag="t")
    hist = [{"epoch": 0, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.5, "val_acc": 0.5, "val_balanced_acc": 0.5, "seconds": 1.0}]
    T._save_resume(resume, 0, model, opt, None, None, hist, {"acc": 0.5, "balanced_acc": 0.5}, (0, {"balanced_acc": 0.5}, None))
    fake_cuda["current"] = 3                                    # a device ordinal that is not there any more
    torch.manual_seed(123); before = torch.get_rng_state()
    out = T._restore(resume, model, opt, None, None, 5, 0.1, "stage1")
    assert out == ([], 0, None, None, 0.1) and torch.equal(torch.get_rng_state(), before)
    assert "does not fit the devices visible now" in capsys.readouterr().out and not (tmp_path / "resume.pt").exists()


# ---- 10: ODIN's backward pass in small batches -------------------------------------------------------------------

def test_odin_runs_in_small_batches_whatever_the_eval_batch_gpu_memory():
    from ltsei.learn.openset import ODIN_BATCH_SIZE, odin_scores
    lin, sizes = torch.nn.Linear(8, 3), []
    def fn(xb):
        sizes.append(len(xb)); return lin(xb.flatten(1))
    x = torch.randn(300, 2, 4)
    s = odin_scores(fn, x, 1000.0, 0.001, 1024, "cpu")
    assert s.shape == (300,) and max(sizes) == ODIN_BATCH_SIZE == 128 and sum(sizes) == 2 * 300
    np.testing.assert_array_equal(odin_scores(fn, x, 1000.0, 0.001, 100, "cpu"), odin_scores(fn, x, 1000.0, 0.001, 128, "cpu"))


# ---- 11: ltsei reproduce runs one per GPU by default --------------------------------------------------------------

def test_reproduce_runs_one_job_per_visible_gpu(monkeypatch, tmp_path):
    import ltsei.orchestration.launchers as L
    from ltsei.orchestration.reproduce import _check_arguments, _parser
    monkeypatch.setattr(L, "visible_gpus", lambda: ["0", "1", "2"])
    a = _parser().parse_args(["--profile", "smoke", "--runs-dir", str(tmp_path), "--rows", "main", "--seeds", "1"])
    _check_arguments(a)
    assert a.jobs == 3
    a = _parser().parse_args(["--profile", "smoke", "--runs-dir", str(tmp_path), "--rows", "main", "--gpus-per-run", "0.5"])
    _check_arguments(a)
    assert a.jobs == 6
