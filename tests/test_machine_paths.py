"""No machine path (a home, a work or a virtual-environment folder) in a committed notebook output or page."""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = re.compile(r"(/home/[A-Za-z0-9_.-]+/|/root/|/Users/[A-Za-z0-9_.-]+/|/work/|/tmp/pytest-of-)")
VENV = re.compile(r"(site-packages|\.venv/lib/|/bin/python3?\b)")


def _outputs(nb: dict):
    for c in nb["cells"]:
        for o in c.get("outputs", []):
            yield "".join(o.get("text", [])) + json.dumps(o.get("data", {})) + "".join(o.get("traceback", []))


def test_no_machine_path_in_notebook_outputs():
    bad = [(p.name, m.group(0)) for p in sorted((ROOT / "nbs").glob("*.ipynb"))
           for out in _outputs(json.loads(p.read_text())) for m in [HOME.search(out) or VENV.search(out)] if m]
    assert not bad, f"machine paths in committed notebook outputs: {bad[:5]}"


def test_no_machine_path_in_pages():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "nbs").glob("*.md"))]
    bad = [(p.name, m.group(0)) for p in pages if p.exists() for m in [HOME.search(p.read_text())] if m]
    assert not bad, f"machine paths in pages: {bad}"


def test_the_check_finds_one():
    assert HOME.search("saved to /home/alice/ltsei/runs") and VENV.search("/x/.venv/lib/python3.11/site-packages/tqdm")
