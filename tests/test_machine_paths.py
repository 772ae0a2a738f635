"""No machine path (a home, a work or a virtual-environment folder) in any committed file: the notebooks' outputs,
the pages, the committed results (benchmarks/*.json) and every other file git tracks."""
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = re.compile(r"(/home/[A-Za-z0-9_.-]+/|/root/|/Users/[A-Za-z0-9_.-]+/|/work/|/tmp/pytest-of-)")
VENV = re.compile(r"(site-packages|\.venv/lib/|/bin/python3?\b)")
SKIP_DIRS = {".git", ".venv", "runs", "_site", "_docs", "_proc", ".quarto", "__pycache__", ".pytest_cache"}


def committed_files() -> list:
    "The files git tracks (a checkout without git: every file outside the ignored folders)."
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        files = [ROOT / n for n in names.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file() and p != Path(__file__).resolve()]


def _outputs(nb: dict):
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            yield "".join(o.get("text", [])) + json.dumps(o.get("data", {})) + "".join(o.get("traceback", []))


def test_no_machine_path_in_notebook_outputs():
    bad = [(p.name, m.group(0)) for p in sorted((ROOT / "nbs").glob("*.ipynb"))
           for out in _outputs(json.loads(p.read_text())) for m in [HOME.search(out) or VENV.search(out)] if m]
    assert not bad, f"machine paths in committed notebook outputs: {bad[:5]}"


def test_no_machine_path_in_any_committed_file():
    "Notebooks (sources, outputs, metadata), pages, scripts, committed results: no home or work folder anywhere."
    files = committed_files()
    assert any(p.suffix == ".ipynb" for p in files) and any(p.suffix == ".json" for p in files)
    bad = []
    for p in files:
        try: text = p.read_text()
        except UnicodeDecodeError: continue                  # binary test data (a recorded .bin)
        m = HOME.search(text) or (VENV.search(text) if p.suffix == ".json" else None)   # results: no venv path either
        if m: bad.append((str(p.relative_to(ROOT)), m.group(0)))
    assert not bad, f"machine paths in committed files: {bad[:5]}"


def test_the_check_finds_one():
    assert HOME.search("saved to /home/alice/ltsei/runs") and VENV.search("/x/.venv/lib/python3.11/site-packages/tqdm")
    nb = {"cells": [{"cell_type": "code", "outputs": [{"output_type": "stream", "text": ["/root/ltsei/runs\n"]}]}]}
    assert any(HOME.search(o) for o in _outputs(nb))
