"""benchmarks/gpu_check.py where there is no GPU (issue 36): it stops at its first GPU step and says so in one line;
exit 0 with --allow-no-gpu, 1 without. In-process, CUDA faked away (so on a GPU box too): a second."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ran = []
    monkeypatch.setattr(mod, "CHECKS", [(n, lambda a, w, n=n: ran.append(n) or True) for n, _ in mod.CHECKS])
    mod.ran = ran
    return mod


@pytest.mark.parametrize("allow,rc", [(True, 0), (False, 1)])
def test_gpu_check_without_a_gpu_says_so_in_one_line(gpu_check, capsys, allow, rc):
    assert gpu_check.main(["--allow-no-gpu"] if allow else []) == rc
    lines = capsys.readouterr().out.splitlines()
    assert [l for l in lines if "no GPU present" in l] == [lines[-1]] and lines[-1].startswith("[gpu_check] gpu: skipped")
    assert gpu_check.ran == []                                   # no GPU check ran


def test_gpu_check_runs_every_check_where_cuda_is(gpu_check, monkeypatch, capsys):
    "With a (faked) GPU it goes past the first step and runs each check once, in order, with one summary line."
    monkeypatch.setattr(gpu_check, "check_gpu", lambda a: True)
    assert gpu_check.main([]) == 0
    assert gpu_check.ran == ["device tests", "smoke reproduce", "bit for bit", "paper step", "precisions", "packing"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("[gpu_check] summary: ok - every check passed")
