"""The documentation site (_quarto.yml): every page it names exists, every notebook page it renders converts through
nbconvert with its stored outputs (what Quarto does with `execute: enabled: false`), and the reference pages' links to
files of the repository resolve."""
import os
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = yaml.safe_load((ROOT / "_quarto.yml").read_text(encoding="utf-8"))


def _named(node) -> list[str]:
    "Every page path the navbar and sidebar name (strings, `href`s and nested `contents`)."
    if isinstance(node, str): return [node] if node.endswith((".ipynb", ".md", ".qmd")) else []
    if isinstance(node, list): return [p for x in node for p in _named(x)]
    if isinstance(node, dict): return [p for k in ("href", "contents", "left", "right") if k in node for p in _named(node[k])]
    return []


def _pages(patterns) -> list[Path]:
    return sorted({p for pat in patterns for p in ROOT.glob(pat)})


def test_site_names_only_pages_that_exist():
    assert SITE["execute"]["enabled"] is False          # the notebooks are converted with their stored outputs
    render = SITE["project"]["render"]
    for pat in render:
        assert list(ROOT.glob(pat)), f"_quarto.yml project.render: {pat!r} matches no file"
    named = _named(SITE["website"]["navbar"]) + _named(SITE["website"]["sidebar"])
    assert len(named) >= 10
    rendered = set(_pages(render))
    for pat in named:
        hits = list(ROOT.glob(pat))
        assert hits, f"_quarto.yml names {pat!r}: no such page"
        assert set(hits) <= rendered, f"{pat!r} is in the navigation but not rendered"
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= {Path(p).name for p in named}, "a docs/ page missing from the sidebar"
    nbs = {p.name for p in _pages(render) if p.suffix == ".ipynb"}
    assert {"index.ipynb", "methods.ipynb", "report.ipynb", "03_adsb.ipynb"} <= nbs and "experiment.ipynb" not in nbs


def test_every_notebook_page_converts():
    """Quarto turns each notebook into Markdown with its stored outputs (`execute: enabled: false`), then pandoc
    makes the page: nbconvert's Markdown exporter does the first step (1 s for all of them; its HTML exporter's
    syntax highlighting takes a minute on 2 cores)."""
    from nbconvert import MarkdownExporter
    exporter = MarkdownExporter()
    pages = [p for p in _pages(SITE["project"]["render"]) if p.suffix == ".ipynb"]
    assert len(pages) >= 20
    for p in pages:
        md, _ = exporter.from_notebook_node(nbformat.read(p, as_version=4))
        assert re.search(r"^# \S", md, flags=re.M), f"{p.name}: the page has no title"
    report = exporter.from_notebook_node(nbformat.read(ROOT / "nbs" / "report.ipynb", as_version=4))[0]
    assert "Main comparison" in report


def test_reference_pages_link_to_existing_files():
    for page in (ROOT / "docs").glob("*.md"):
        text = page.read_text(encoding="utf-8")
        assert text.startswith("---\ntitle: "), page.name
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"



def test_readme_first_screen_says_what_ltsei_is_what_it_costs_and_where_results_go():
    "Issue 32, item 1: the first 40 lines: the two commands, their time on both measured CPUs, the results; no history."
    top = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:40])
    assert "Long-tailed specific emitter identification" in top and "./reproduce" in top and "./test" in top
    assert "Intel Xeon with AMX" in top and "AMD EPYC without AMX" in top and "GPU" in top
    assert "runs/quick/report.html" in top and "docs/history.md" in top and (ROOT / "docs" / "history.md").is_file()
    for old in ("before this version", "the version before", "earlier 38 rows", "38 rows", "527 tests", "32 notebooks"):
        assert old not in top, f"the first screen times another version or counts tests: {old!r}"


def test_readme_commands_exist_and_take_the_options_it_shows():
    "Every ./command the README shows is a script here, and every --option it gives ./reproduce is one it takes."
    import shlex
    from ltsei.orchestration.reproduce import _parser
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for cmd in set(re.findall(r"(?<![\w/.])\./([a-z]+)\b", text)):
        assert (ROOT / cmd).is_file() and os.access(ROOT / cmd, os.X_OK), f"./{cmd}"
    options = {o for a in _parser()._actions for o in a.option_strings}
    for line in re.findall(r"`\./reproduce ([^`]*)`", text) + re.findall(r"^\./reproduce ([^#\n]*)", text, flags=re.M):
        for tok in shlex.split(line):
            if tok.startswith("--"): assert tok.split("=")[0] in options, f"./reproduce {tok}: no such option"
    for opt in re.findall(r"`(--[a-z-]+)[ `]", text.split("## One experiment")[0]):
        assert opt in options, f"the README's {opt} is not an option of ./reproduce"
