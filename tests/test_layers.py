"""The package's floors (README, "Layout and architecture"): every module comes from one numbered notebook, and
imports only modules of lower-numbered notebooks, also inside functions and by name (importlib): no import goes up,
so there is no circle; the row registry and the command line's start load no torch."""
import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ltsei"
LAYERS = ("core", "signals", "learn", "experiments", "instrument", "orchestration")   # the subpackages, bottom up


def _module(p: Path) -> str:
    return ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _notebooks() -> dict[str, str]:
    "module -> the notebook it is exported from (the header nbdev writes)."
    out = {}
    for p in PKG.rglob("*.py"):
        m = re.search(r"File to edit: (?:\.\./)+nbs/(\S+?\.ipynb)", p.read_text())
        if m: out[_module(p)] = m.group(1)
    return out


def _imports(p: Path) -> set[str]:
    "Every ltsei module `p` imports: at the top, inside functions, relative, absolute and by importlib name."
    mod, found = _module(p), set()
    pkg = mod if p.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(ast.parse(p.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names = [node.args[0].value]
        found |= {n for n in names if n.startswith("ltsei")}
    return found


def _number(nb: str) -> tuple:
    "A notebook's floor: `06_x` -> (6, ''); a notebook split off one, `06b_y`, sits just above it: (6, 'b')."
    m = re.match(r"(\d\d)([a-z]?)_", nb)
    return int(m.group(1)), m.group(2)


def test_every_module_comes_from_a_numbered_notebook():
    nbs = _notebooks()
    mods = {_module(p) for p in PKG.rglob("*.py")} - {"ltsei", "ltsei._modidx"} - {f"ltsei.{l}" for l in LAYERS}
    assert mods <= set(nbs), f"modules without a notebook: {sorted(mods - set(nbs))}"
    assert all(re.match(r"\d\d[a-z]?_", nb) for nb in nbs.values()), nbs


def test_no_import_goes_up_a_floor():
    nbs = _notebooks()
    up = []
    for p in PKG.rglob("*.py"):
        me = _module(p)
        if me not in nbs: continue
        for other in _imports(p):
            target = next((m for m in (other, other.rpartition(".")[0]) if m in nbs), None)
            if target is None or target == me: continue
            if _number(nbs[target]) >= _number(nbs[me]):
                up.append(f"{me} ({nbs[me]}) imports {target} ({nbs[target]})")
    assert not up, "imports that go up (or sideways) a floor:\n" + "\n".join(sorted(up))


def test_row_registry_and_cli_start_load_no_torch():
    code = "import sys, ltsei.rows, ltsei.cli, ltsei.core.storage, ltsei.core.registry; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_the_index_lists_every_notebook_in_order():
    import json
    src = "".join("".join(c["source"]) for c in json.loads((ROOT / "nbs" / "index.ipynb").read_text())["cells"])
    listed = re.findall(r"^\| `(\d\d[a-z]?_\w+)` \|", src, re.M)
    numbered = sorted(p.stem for p in (ROOT / "nbs").glob("[0-9][0-9]*_*.ipynb"))
    assert listed == numbered, f"nbs/index.ipynb lists {listed}, the notebooks are {numbered}"



def test_the_subpackages_are_the_floors_in_order():
    """Every module sits in a layer's subpackage but the two entry points at the top: the command line, and the row
    registry (`ltsei.rows`: the table rows as data, the one torch-free path the CLI's start, the house check and every
    layer above the experiments read; its floor is the experiments'); the notebooks' numbers run through the layers."""
    nbs = _notebooks()
    top = {"ltsei.cli": len(LAYERS), "ltsei.rows": LAYERS.index("experiments")}
    bad = [m for m in nbs if m not in top and m.split(".")[1] not in LAYERS]
    assert not bad, f"modules outside the layers {LAYERS}: {bad}"
    ranked = sorted(nbs.items(), key=lambda kv: (_number(kv[1]), kv[1]))
    order = [top[m] if m in top else LAYERS.index(m.split(".")[1]) for m, _ in ranked]
    assert order == sorted(order), "a notebook's layer comes before a lower notebook's: " + \
        ", ".join(f"{nb} -> {m}" for m, nb in ranked)
