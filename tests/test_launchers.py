"""The launchers of `ltsei reproduce` (ltsei.orchestration.launchers and the launcher modules): GPU slots with made-up devices, options, the storage checks,
and a smoke subset (three rows sharing one stage 1, plus one of another) through the local pool, Ray on this CPU and
submitit's local executor, which must give the same run folders and the same tables."""
import argparse
import sys
import threading
import time
from pathlib import Path

import pytest

from functools import partial

from ltsei.orchestration import launchers as L
from ltsei.orchestration import local_launcher as LL
from ltsei.orchestration import reproduce  # noqa: F401  (imports every launcher: they register)
from ltsei.orchestration import slurm_launcher as S
from ltsei.orchestration.kernels import WarmKernels, release_kernel
from ltsei.experiments.demo import demo_compose_config, demo_run_experiment
from ltsei.rows import select_rows
from ltsei.core.storage import lock_beside
from ltsei.orchestration.row_runs import (DEMO_FUNCS, RowRun, check_configs, load_callable, plan_row_runs, prepare_row_run_dir,
                                          row_run_overrides, run_row_protocol)

PROFILE = "smoke"
SUBSET = "s1_1_ce,s3_1_crt,s3_1_tau_norm,s2_2_bs"     # the first three share one stage 1


# ---------------------------------------------------------------- GPU slots (made-up devices)

@pytest.mark.parametrize("n,gpus,f,want", [
    (1, ["0"], None, ["0"]),
    (4, ["0", "1"], None, ["0", "1", "0", "1"]),          # spread first, then pack
    (3, ["0", "1"], None, ["0", "1", "0"]),
    (8, ["0", "1"], 0.25, ["0", "1"] * 4),                 # four per GPU at a quarter each
    (2, ["3", "7"], 1.0, ["3", "7"]),                      # the ids CUDA_VISIBLE_DEVICES gave us, not 0..n-1
    (3, ["GPU-aa", "GPU-bb", "GPU-cc"], 0.5, ["GPU-aa", "GPU-bb", "GPU-cc"]),
    (2, [], None, ["", ""]),                               # no GPU: the CPU
    (5, [], 0.5, [""] * 5),
])
def test_assign_devices(n, gpus, f, want):
    assert L.assign_devices(n, gpus, f) == want


@pytest.mark.parametrize("n,gpus,f,msg", [
    (3, ["0"], 0.5, "2 per GPU"),
    (3, ["0", "1"], 1.0, "1 per GPU"),
    (2, ["0"], 1.5, "(0, 1]"),
    (2, ["0"], 0.0, "(0, 1]"),
    (0, ["0"], None, "at least 1"),
])
def test_assign_devices_refuses_what_the_gpus_cannot_hold(n, gpus, f, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace("]", r"\]")):
        L.assign_devices(n, gpus, f)


def test_default_jobs_fill_the_gpus():
    assert L.runs_per_gpu(0.3) == 3 and L.runs_per_gpu(1 / 3) == 3 and L.runs_per_gpu(None) is None
    assert L.default_jobs(0.25, ["0", "1"]) == 8
    assert L.default_jobs(None, ["0", "1"]) == 1                          # a GPU, no share asked: one run at once
    import os
    assert L.default_jobs(0.5, []) == L.default_jobs(None, []) == max(1, min(os.cpu_count() or 1, 4))   # no GPU: per core


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert L.visible_gpus() == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert L.visible_gpus() == ["0", "1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert L.visible_gpus() == []


def fake_tasks(tmp_path, groups):
    rows = select_rows("2")[:len(groups)]
    return [RowRun(r, 0, tmp_path / r.id, group=g) for r, g in zip(rows, groups)]


def test_local_launcher_packs_runs_per_gpu(tmp_path, monkeypatch):
    "Four runs at once on two made-up GPUs at half a GPU each: both GPUs used, never more than two runs on one."
    monkeypatch.setattr(LL, "visible_gpus", lambda: ["0", "1"])
    lock, now, peak, seen = threading.Lock(), {}, {}, []
    def execute(task, env=None):
        dev = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            now[dev] = now.get(dev, 0) + 1; peak[dev] = max(peak.get(dev, 0), now[dev]); seen.append(dev)
        time.sleep(0.15)
        with lock: now[dev] -= 1
    tasks = fake_tasks(tmp_path, [None] * 8)
    L.launch_row_runs("local", tasks, execute, L.LaunchOptions(jobs=4, gpus_per_run=0.5, progress=False))
    assert all(t.status == "done" for t in tasks)
    assert set(seen) == {"0", "1"} and len(seen) == 8 and max(peak.values()) <= 2


def test_local_launcher_too_many_jobs_for_the_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(LL, "visible_gpus", lambda: ["0"])
    with pytest.raises(ValueError, match="--jobs 3"):
        L.launch_row_runs("local", fake_tasks(tmp_path, [None]), lambda t, env=None: None, L.LaunchOptions(jobs=3, gpus_per_run=0.5))


# ---------------------------------------------------------------- options, storage, one run on a worker

def test_options_from_the_command_line():
    p = L.add_arguments(argparse.ArgumentParser())
    o = L.options_from_args(p.parse_args([]), runs_dir="/x", profile="smoke")
    assert (o.launcher, o.gpus_per_run, o.slurm_wait, o.runs_dir, o.profile) == ("local", None, True, Path("/x"), "smoke")
    a = p.parse_args(["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus", "1", "--slurm-time", "2:00:00",
                      "--slurm-mem", "16G", "--slurm-no-wait"])
    o = L.options_from_args(a)
    assert (o.slurm_partition, o.slurm_gpus, L.slurm_minutes(o.slurm_time), o.slurm_mem, o.slurm_wait) == ("gpu", 1, 120, "16G", False)
    with pytest.raises(SystemExit): p.parse_args(["--launcher", "k8s"])
    for bad, msg in [(dict(gpus_per_run=2.0), "--gpus-per-run"), (dict(slurm_time="tomorrow"), "--slurm-time"),
                     (dict(slurm_mem="a lot"), "--slurm-mem"), (dict(slurm_cpus=0), "--slurm-cpus")]:
        with pytest.raises(ValueError, match=msg): L.check_options(L.LaunchOptions(**bad))


def test_missing_optional_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)         # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install -e \.\[ray\]"):
        L.launch_row_runs("ray", [], lambda t: None, L.LaunchOptions())


def test_storage_checks(tmp_path):
    assert any("/tmp" in w for w in L.storage_warnings("/tmp/runs"))
    path, value = L.storage_token(tmp_path)
    assert L.storage_token(tmp_path) == (path, value) and L.check_token(path, value)
    with pytest.raises(L.SharedStorageError, match="cannot see"):
        L.check_token(path, "0" * 32)
    with pytest.raises(L.SharedStorageError):
        L.check_token(str(tmp_path / "elsewhere" / "storage-token"), value)


def test_row_protocol_reports_instead_of_raising(tmp_path):
    t = fake_tasks(tmp_path, [None])[0]
    out = run_row_protocol(t, lambda task: 1 / 0)
    assert out["status"] == "failed" and "ZeroDivisionError" in out["error"]
    held = lock_beside(t.out_dir); held.acquire()
    try: assert run_row_protocol(t, lambda task: None)["status"] == "busy"    # another process runs it
    finally: held.release()
    token = L.storage_token(tmp_path)
    out = run_row_protocol(t, lambda task: None, True, partial(L.check_token, token[0], "f" * 32))
    assert out["status"] == "failed" and out["error"].startswith("worker ")      # the storage error as it is


def test_sbatch_script_carries_the_options():
    pytest.importorskip("submitit")
    from submitit.slurm.slurm import _make_sbatch_string
    o = L.LaunchOptions(slurm_partition="gpu", slurm_gpus=2, slurm_cpus=8, slurm_time="1-00:00:00", slurm_mem="32g")
    s = _make_sbatch_string(command="python -m x", folder="/shared/runs/.launchers/slurm/%j", **S.slurm_parameters(o),
                            dependency=S.slurm_dependency(["41_0", "41_1"]), map_count=3)
    for line in ["--partition=gpu", "--gres=gpu:2", "--cpus-per-task=8", "--time=1440", "--mem=32G",
                 "--dependency=afterany:41", "--array=0-2%3"]:
        assert f"#SBATCH {line}\n" in s, line
    assert S.slurm_dependency([]) is None and S.slurm_dependency(["7", "8_3"]) == "afterany:7:8"


# ---------------------------------------------------------------- the same tables from every launcher

FAIL_ROW = "s2_2_bs"

class DemoExecute:
    """A demo run without a notebook kernel (the launchers' part is under test, not papermill): prepare the folder,
    log start and end, write made-up metrics. `fail`: this row raises."""
    def __init__(self, runs, fail=None): self.runs, self.fail, self.threads = str(runs), fail, 0
    def __call__(self, task, env=None):
        log = Path(self.runs) / "events.log"
        with open(log, "a") as f: f.write(f"start {task.row.id} {time.time():.6f}\n")
        prepare_row_run_dir(task, PROFILE)
        if task.row.id == self.fail: raise RuntimeError("made-up failure")
        time.sleep(0.3)
        # the made-up metrics hash the overrides: leave out the caches' paths, which differ between the launchers' folders
        demo_run_experiment(demo_compose_config(row_run_overrides(task, PROFILE)), task.out_dir, progress=False)
        with open(log, "a") as f: f.write(f"end {task.row.id} {time.time():.6f}\n")


def by_value():
    "Ship this module's DemoExecute to Ray / submitit workers by value (they cannot import the test module)."
    for mod in ("cloudpickle", "ray.cloudpickle"):
        try: __import__(mod, fromlist=["x"]).register_pickle_by_value(sys.modules[__name__])
        except (ImportError, AttributeError): pass


def plan(runs):
    tasks = plan_row_runs(select_rows(SUBSET), [0], PROFILE, runs)
    check_configs(tasks, PROFILE, load_callable(DEMO_FUNCS["composer"]), runs)
    return tasks


def launch(name, runs, fail=None, **opts):
    tasks = plan(runs)
    g = {t.row.id: t.group for t in tasks}           # one stage 1 for three rows, another for the fourth
    assert g["s1_1_ce"] == g["s3_1_crt"] == g["s3_1_tau_norm"] != g["s2_2_bs"]
    L.launch_row_runs(name, tasks, DemoExecute(runs, fail), L.LaunchOptions(runs_dir=runs, profile=PROFILE, progress=False, **opts))
    return tasks


def tables(runs):
    from ltsei.experiments.report import build_tables
    build_tables(runs, PROFILE)
    out = {p.name: p.read_text().replace(str(runs), "<runs>")         # all_runs.csv names each run's folder
           for p in sorted((runs / PROFILE / "tables").glob("*")) if p.is_file()}
    assert out
    return out


def folders(runs):
    return sorted(str(p.relative_to(runs)) for p in (runs / PROFILE).rglob("*")
                  if p.is_file() and not any(s.startswith(".") for s in p.relative_to(runs).parts))


def events(runs):
    ev = {}
    for line in (runs / "events.log").read_text().splitlines():
        kind, rid, ts = line.split()
        ev[(kind, rid)] = float(ts)
    return ev


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "The local launcher's runs and tables of the subset."
    runs = tmp_path_factory.mktemp("local")
    tasks = launch("local", runs, jobs=2)
    assert [t.status for t in tasks] == ["done"] * 4
    files = folders(runs)
    return runs, tables(runs), files


def check_same(runs, tasks, reference):
    "The runs of `tasks` are the reference's: the same files, the same tables, stage 1 first, nothing left to do."
    ref_runs, ref_tables, ref_folders = reference
    assert [t.status for t in tasks] == ["done"] * 4, [(t.name, t.status, t.error) for t in tasks]
    assert folders(runs) == ref_folders
    assert tables(runs) == ref_tables
    ev, rows = events(runs), SUBSET.split(",")
    for follower in rows[1:3]:          # the group's other runs start after its first run ended
        assert ev[("start", follower)] >= ev[("end", rows[0])]
    assert all(t.status == "complete" for t in plan(runs))     # a later command skips them all


def test_ray_gives_the_local_tables(tmp_path, reference):
    "Ray started for the run (address 'local': 2 CPUs here, and the storage check on its node); one row fails, the "
    "others go on; the local launcher then redoes the failed row only, and the tables are the reference's."
    pytest.importorskip("ray")
    by_value()
    runs = tmp_path / "runs"
    tasks = launch("ray", runs, fail=FAIL_ROW, jobs=2, ray_address="local")
    st = {t.row.id: (t.status, t.error) for t in tasks}
    assert st[FAIL_ROW][0] == "failed" and "made-up failure" in st[FAIL_ROW][1], st
    assert all(s == "done" for r, (s, _) in st.items() if r != FAIL_ROW), st
    redo = launch("local", runs, jobs=1)
    assert [t.status for t in redo] == ["skipped" if t.row.id != FAIL_ROW else "done" for t in redo]
    for t in redo: t.status = "done"
    check_same(runs, redo, reference)


def test_submitit_local_gives_the_local_tables(tmp_path, reference):
    pytest.importorskip("submitit")
    by_value()
    runs = tmp_path / "runs"
    tasks = launch("slurm", runs, slurm_executor="local")
    check_same(runs, tasks, reference)
    ledger = S.read_ledger(L.LaunchOptions(runs_dir=runs, profile=PROFILE))
    assert sorted(ledger) == sorted(t.name for t in tasks)


def test_failed_row_is_reported_and_the_others_go_on(tmp_path):
    pytest.importorskip("submitit")
    by_value()
    runs = tmp_path / "runs"
    tasks = launch("slurm", runs, fail=FAIL_ROW, slurm_executor="debug")
    st = {t.row.id: (t.status, t.error) for t in tasks}
    assert st[FAIL_ROW][0] == "failed" and "made-up failure" in st[FAIL_ROW][1]
    assert all(s == "done" for r, (s, _) in st.items() if r != FAIL_ROW)
    again = plan(runs)                   # resume: complete runs are skipped, the failed one is redone
    assert [t.todo for t in again] == [t.row.id == FAIL_ROW for t in again]


def test_the_real_row_executor_travels_to_a_worker(tmp_path):
    """The tables tests above ship DemoExecute; Ray and submitit ship the executor `ltsei reproduce` builds: the real one
    (the experiment notebook, the real composer and runner) must pickle to a worker whole, as theirs does. (Its run
    itself: test_reproduce.py::test_real_run_through_the_experiment_notebook.)"""
    import cloudpickle
    from ltsei.orchestration.kernels import RowExecutor
    from ltsei.orchestration.reproduce import load_notebook
    from ltsei.orchestration.row_runs import REAL_FUNCS
    ex = RowExecutor(PROFILE, funcs=REAL_FUNCS, runs_dir=str(tmp_path), nb=load_notebook("experiment.ipynb"), warm=2)
    back = cloudpickle.loads(cloudpickle.dumps(ex))
    assert back == ex and back.funcs == REAL_FUNCS and back.nb.cells[0].source == ex.nb.cells[0].source
    for spec in REAL_FUNCS.values(): assert callable(load_callable(spec))


# ---------------------------------------------------------------- warm kernels

def test_warm_kernels_hand_out_started_kernels_that_ran_only_imports():
    from jupyter_client import BlockingKernelClient
    pool = WarmKernels(size=1, code="def _w():\n    import colorsys\n_w(); del _w\n")
    km = pool.take()
    assert km is not None and km.has_kernel and km.provisioner.process.poll() is None
    try:
        kc = BlockingKernelClient()
        kc.load_connection_info(km.get_connection_info())
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
            r = kc.execute_interactive("import sys\nassert 'colorsys' in sys.modules and '_w' not in dir()",
                                       store_history=False, timeout=120)
            assert r["content"]["status"] == "ok", r["content"]        # imported, and nothing left in the namespace
        finally:
            kc.stop_channels()
        with pool._cond: assert len(pool._ready.get((), [])) + pool._starting.get((), 0) == 1   # its replacement
    finally:
        proc = km.provisioner.process
        release_kernel(km)
        pool.close(wait=120)
    assert proc.poll() is not None and not km.has_kernel and pool.take() is None   # shut down; a closed pool gives none
