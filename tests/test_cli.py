"""`python main.py` as a Hydra app (`--cfg job`, `-m` sweeps, checks before any folder, Ctrl-C) and the `ltsei`
command's subcommands (ltsei.cli)."""
import os
import select
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from ltsei.cli import guide_main, main, sweep_jobs
from conftest import SMALL

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["profile=smoke", *SMALL, "loss.name=CrossEntropy", "sampling.name=none", "stage2.enabled=false"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _main_py(args, cwd, **kw):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600, **kw)


def test_cfg_job_prints_the_resolved_config(tmp_path):
    p = _main_py(["--cfg", "job", "profile=smoke", "seed=3", "training.epochs=100"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "seed: 3" in p.stdout and "profile: smoke" in p.stdout
    assert "epochs: 1\n" in p.stdout                  # resolved: the smoke profile's epoch scale applied
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outputs").exists()   # nothing ran


def test_a_bad_value_leaves_no_folder(tmp_path):
    p = _main_py(["training.lr=-1", "profile=smoke"], tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "training.lr" in p.stderr
    assert not (tmp_path / "runs").exists()           # no empty runs/<profile>/adhoc/<time>/


def test_sweep_jobs_expand_like_hydra():
    jobs = sweep_jobs(["seed=0,1,2", "stage2.moe.num_experts=2,3,4"])
    assert len(jobs) == 9 and jobs[0] == ["seed=0", "stage2.moe.num_experts=2"] and jobs[-1] == ["seed=2", "stage2.moe.num_experts=4"]


def test_multirun_checks_every_job_first(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    assert guide_main(["-m", "seed=0,1", "stage2.moe.num_experts=2,99", *SMOKE, "stage2.enabled=true",
                       "stage2.mode=moe_ltsei", "stage2.loss=MoELTSEILoss", "training.lr=0.1,nan",
                       f"hydra.sweep.dir={sweep}"]) == 2
    assert "training.lr" in capsys.readouterr().err
    assert not sweep.exists()


def test_multirun_runs_each_job_in_its_own_folder(in_scratch):
    sweep = in_scratch / "sweep_cli"
    p = _main_py(["-m", "seed=0,1", *SMOKE, f"hydra.sweep.dir={sweep}"], in_scratch)
    assert p.returncode == 0, p.stderr[-3000:]
    for k in (0, 1):
        m = (sweep / str(k) / "metrics.json")
        assert m.exists(), sorted(str(x) for x in sweep.rglob("*"))
        assert f"seed: {k}\n" in (sweep / str(k) / "config.yaml").read_text()


def test_ctrl_c_in_main_py_is_one_line(in_scratch):
    out = in_scratch / "ctrl_c_run"
    p = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *SMOKE, "training.epochs=2000", f"hydra.run.dir={out}"],
                         cwd=in_scratch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while time.time() - t0 < 300:                     # wait until the header is printed: the run has started
        line = p.stdout.readline()
        if not line or line.startswith("[ltsei] files:"): break
    time.sleep(1)
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.rstrip().endswith("interrupted (Ctrl-C)") and err.count("interrupted") == 1


def test_ctrl_c_inside_an_import_is_still_ctrl_c(in_scratch, monkeypatch, capsys):
    # torch's first optimizer imports torch._dynamo, whose class bodies turn a Ctrl-C into RuntimeError("Error calling
    # __set_name__"): it must still end as a Ctrl-C (130, one line), not as Hydra's "Error executing job"
    import ltsei.experiments.run as run
    def interrupted_import(cfg, out):
        try: raise KeyboardInterrupt
        except KeyboardInterrupt as k: raise RuntimeError("Error calling __set_name__ on 'Field' instance") from k
    monkeypatch.setattr(run, "run_experiment", interrupted_import)
    assert guide_main([*SMOKE, f"hydra.run.dir={in_scratch / 'r'}"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted (Ctrl-C)" and "Error executing job" not in err


def test_realism_subcommand_dispatches(monkeypatch):
    got = []
    fake = types.ModuleType("ltsei.signals.realism")
    fake.realism_main = lambda argv: got.append(argv) or 7
    monkeypatch.setitem(sys.modules, "ltsei.signals.realism", fake)
    assert main(["realism", "--x", "1"]) == 7 and got == [["--x", "1"]]


def test_realism_subcommand_missing_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ltsei.signals.realism", None)     # as if the module were not installed
    assert main(["realism"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ltsei realism is not available" in err[0]


def test_ltsei_usage_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("run", "synth", "reproduce", "realism"))
    assert main(["nope"]) == 2


def test_ctrl_c_in_ltsei_synth_is_one_line(tmp_path):
    "Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while workers generate data."
    p = subprocess.Popen(["ltsei", "synth", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                          "--preset", "quick", "--workers", "2", "--num-emitters", "60", "--pool-per-class", "4000"],
                         cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    seen, t0 = "", time.time()
    while "frame/s" not in seen and time.time() - t0 < 120:      # the progress bar is up: the workers are starting
        if select.select([p.stderr], [], [], 1.0)[0]:
            chunk = os.read(p.stderr.fileno(), 65536).decode(errors="replace")
            if not chunk: break
            seen += chunk
    time.sleep(2)                                                  # and then generating
    assert p.poll() is None, seen[-3000:]
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    err = seen + err
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.rstrip().endswith("interrupted (Ctrl-C)") and err.count("interrupted") == 1
