"""Every command of the experiment guide runs verbatim (plus profile=smoke) and ends with a valid metrics.json, on the
smaller synthetic pool of conftest.SMALL (and, in this process, 20 stage-2 epochs: STAGE2). Issue 3 covers the
single-stage commands (sections 1, 2 and 4.1), issue 4 the rest; together they are all 37 commands. Commands go through
`guide_main`, the function behind `python main.py`, in this process (Hydra parses the same tokens); the last one
runs as a real `python main.py` subprocess instead (verbatim: its 100 stage-2 epochs), with the same checks."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ltsei.cli import guide_main
from ltsei.rows import guide_commands
from conftest import SMALL
from test_run import check_metrics

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = guide_commands()
BY_MAIN_PY = (COMMANDS[-1][0],)    # run as a real `python main.py` only (test_main_py_subprocess), with the same checks
SINGLE = [(rid, args) for rid, args in COMMANDS if "stage2.enabled=false" in args and rid not in BY_MAIN_PY]
TWO_STAGE = [(rid, args) for rid, args in COMMANDS if "stage2.enabled=false" not in args and rid not in BY_MAIN_PY]


def test_all_37_commands_are_covered():
    assert len(COMMANDS) == 37 and len(SINGLE) + len(TWO_STAGE) + len(BY_MAIN_PY) == 37
    assert len({rid for rid, _ in COMMANDS}) == 37
    assert "stage2.mode=moe_ltsei" in dict(COMMANDS)[BY_MAIN_PY[0]]          # the last one: two stages, the MoE head


def check_command(args, m):
    "What a guide command's metrics.json must show: no stage 2 for a single-stage command; else its mode and routing."
    if "stage2.enabled=false" in args:
        assert m["stage2"] is None
        return
    if "stage2.enabled=true" in args:
        assert m["stage2"]["mode"] == args[[a.split("=")[0] for a in args].index("stage2.mode")].split("=")[1]
    if "stage2.mode=moe_ltsei" in args:
        r = m["routing"]
        k = int(next(a for a in args if a.startswith("stage2.moe.num_experts=")).split("=")[1])
        # the seed's three frequency groups: a routing accuracy only with one expert per group (K = 3)
        assert (r["routing_acc"] is None) == (k != 3) and (k != 3 or 0 <= r["routing_acc"] <= 1)
        assert len(r["usage_by_group"]) == 3 and all(u is None or len(u) == k for u in r["usage_by_group"])
        assert m["moe_ltsei"]["gate_supervised"] == (k == 3)


# The in-process runs also cut stage 2 from the guide's 100 epochs to 20 (a head on cached features: 100 epochs took
# about 1.5 CPU s a command here, 20 run every part of its schedule: warm-up 5, the samplers' alpha over the epochs);
# the last command keeps its 100 in test_main_py_subprocess, and `ltsei reproduce` runs s5_2_short with them in test_reproduce.
STAGE2 = ("stage2.epochs=20",)


def _run(in_scratch, rid, args):
    out = in_scratch / "guide" / rid
    assert guide_main([*args, "profile=smoke", *SMALL, *STAGE2, f"hydra.run.dir={out}"]) == 0, rid
    check_command(args, check_metrics(out / "metrics.json"))


@pytest.mark.parametrize("rid,args", SINGLE, ids=[r for r, _ in SINGLE])
def test_single_stage_command(in_scratch, rid, args):
    _run(in_scratch, rid, args)


@pytest.mark.parametrize("rid,args", TWO_STAGE, ids=[r for r, _ in TWO_STAGE])
def test_two_stage_command(in_scratch, rid, args):
    _run(in_scratch, rid, args)


@pytest.mark.parametrize("rid", BY_MAIN_PY)
def test_main_py_subprocess(in_scratch, rid):
    args = dict(COMMANDS)[rid]
    out = in_scratch / "guide_sub" / rid
    cmd = [sys.executable, str(ROOT / "main.py"), *args, "profile=smoke", *SMALL, f"hydra.run.dir={out}"]
    p = subprocess.run(cmd, cwd=in_scratch, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    check_command(args, check_metrics(out / "metrics.json"))
    assert "[ltsei] done" in p.stdout
