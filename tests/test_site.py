"""The site without Quarto (issue 32, item 9): `./site` exits 0 and writes an index page and one page per notebook and
Markdown page that `_quarto.yml` lists, each with the navigation, and each opens in headless Chromium with its figures;
the workflows nbdev projects carry (.github/workflows: the tests on push through ./test, the Quarto site to GitHub
Pages) parse as YAML and say what they must."""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
SITE = yaml.safe_load((ROOT / "_quarto.yml").read_text(encoding="utf-8"))


def _listed() -> list[Path]:
    return sorted({p for pat in SITE["project"]["render"] for p in ROOT.glob(pat)})


def _figures(nb: Path) -> int:
    "The figures (PNG / JPEG outputs) stored in notebook `nb`."
    cells = nbformat.read(nb, as_version=4).cells
    return sum(1 for c in cells if c.cell_type == "code" for o in c.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {})))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    "`./site` on a PATH without Quarto, into a temporary folder (LTSEI_SITE_DIR)."
    out = tmp_path_factory.mktemp("site") / "_site"
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not (Path(d) / "quarto").exists())
    p = subprocess.run([str(ROOT / "site")], env={**os.environ, "PATH": path, "LTSEI_SITE_DIR": str(out)},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == f"[ltsei] files: {out} (open index.html there)"
    return out


def test_site_without_quarto_writes_every_listed_page(site):
    pages = _listed()
    assert len([p for p in pages if p.suffix == ".ipynb"]) >= 30 and (ROOT / "docs" / "history.md") in pages
    for p in pages:
        here = p.relative_to(ROOT).with_suffix(".html")
        html = (site / here).read_text(encoding="utf-8")
        methods = Path(os.path.relpath("nbs/methods.html", here.parent)).as_posix()
        assert "<nav>" in html and f'href="{methods}"' in html, p.name                 # _quarto.yml's navigation
        assert not re.findall(r'href="(?![a-z]+:)[^"#]+\.(?:ipynb|md)["#]', html), f"{p.name}: a link to a source file, not its page"
    index = (site / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{p.relative_to(ROOT).with_suffix(".html").as_posix()}"' in index for p in pages)
    report = (site / "nbs" / "report.html").read_text(encoding="utf-8")               # committed without results:
    assert "Main comparison" in report and "ltsei reproduce" in report and "data:image/png;base64," not in report
    assert "data:image/png;base64," in (site / "nbs" / "21_tables.html").read_text(encoding="utf-8")   # stored figures


HARNESS = """<!DOCTYPE html><html><body><pre id="ltsei-check"></pre><script>
var pages = %s, done = 0, r = {};
pages.forEach(function (p) {
  var f = document.createElement('iframe'); f.src = p;
  f.onload = function () {
    var d = f.contentDocument, imgs = Array.from(d.images);
    r[p] = {title: d.title, h1: !!d.querySelector('h1'), nav: d.querySelectorAll('nav a').length, images: imgs.length,
            loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length};
    if (++done === pages.length) document.getElementById('ltsei-check').textContent = JSON.stringify(r);
  };
  document.body.appendChild(f);
});
</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium as root)")
def test_every_page_opens_in_headless_chromium_with_its_figures(site, tmp_path):
    "One Chromium for all pages: a page of iframes, served over HTTP on 127.0.0.1 (same origin), reports what each shows."
    pages = ["index.html"] + [p.relative_to(ROOT).with_suffix(".html").as_posix() for p in _listed()]
    (site / "ltsei-check.html").write_text(HARNESS % json.dumps(pages), encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
               "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
               "--virtual-time-budget=60000", "--dump-dom", f"http://127.0.0.1:{server.server_address[1]}/ltsei-check.html"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally: server.shutdown()
    m = re.search(r'<pre id="ltsei-check">(.*?)</pre>', out.stdout, flags=re.S)
    assert m and m.group(1), f"the pages did not all load in Chromium (rc {out.returncode}): {out.stderr[-2000:]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert set(seen) == set(pages)
    for src in _listed():
        r = seen[src.relative_to(ROOT).with_suffix(".html").as_posix()]
        assert r["title"] and r["h1"] and r["nav"] >= 30, (src.name, r)
        assert r["loaded"] == r["images"], f"{src.name}: {r['images'] - r['loaded']} figure(s) did not load"
        if src.suffix == ".ipynb": assert r["images"] >= _figures(src), (src.name, r)
    assert seen["index.html"]["nav"] >= 30 and seen["nbs/21_tables.html"]["loaded"] >= 1


def test_workflows_parse_and_do_what_nbdev_projects_do():
    flows = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in (ROOT / ".github" / "workflows").glob("*.y*ml")}
    assert set(flows) == {"test", "deploy"}
    for name, f in flows.items():
        on = f.get("on", f.get(True))                   # YAML 1.1 reads the key `on` as True
        assert isinstance(on, dict) and f["jobs"], name
        for job in f["jobs"].values():
            assert job["runs-on"] and all("uses" in s or "run" in s for s in job["steps"]), name
    test = flows["test"]
    assert "push" in test.get("on", test.get(True))
    assert [s["run"] for s in test["jobs"]["test"]["steps"] if "run" in s] == ["./test"]     # the README's command
    assert "./test" in (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 2)[1]
    deploy = flows["deploy"]
    steps = [s.get("uses", s.get("run")) for j in deploy["jobs"].values() for s in j["steps"]]
    assert any(s.startswith("quarto-dev/quarto-actions/setup") for s in steps) and "./site" in steps
    assert any(s.startswith("actions/deploy-pages") for s in steps) and deploy["permissions"]["pages"] == "write"
    upload = next(s for j in deploy["jobs"].values() for s in j["steps"] if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == SITE["project"]["output-dir"]
