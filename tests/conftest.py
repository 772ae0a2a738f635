"""Shared fixtures: every test that runs experiments works inside one session-wide scratch folder,
so the data cache and the stage-1 cache (relative paths under runs/cache) are shared by the tests
and never touch the repository's own runs/."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "nbs" / "experiment-guide.md"   # the repository's copy of the experiment guide

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("ltsei")


@pytest.fixture()
def in_scratch(scratch, monkeypatch):
    monkeypatch.chdir(scratch)
    return scratch
