"""The report: nbs/report.ipynb executed with papermill on fake results, rendered to HTML with nbconvert, opened in
headless Chromium; its tables and figures must be there and no cell may have failed."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from ltsei.demo import write_fake_runs
from ltsei.running import render_report
from ltsei.tables import TABLES

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.querySelectorAll('img'));
  var r = {tables: Array.from(document.querySelectorAll('table.ltsei-table')).map(t => t.className.split(' ').pop()),
           main_rows: document.querySelectorAll('table.ltsei-main tbody tr').length,
           images: imgs.length, images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 100).length,
           h1: Array.from(document.querySelectorAll('h1')).map(h => h.textContent.trim()),
           traceback: document.body.innerText.indexOf('Traceback') >= 0};
  var el = document.createElement('pre'); el.id = 'ltsei-check'; el.textContent = JSON.stringify(r);
  document.body.appendChild(el);
});
</script>"""


def _browse(html: Path, tmp: Path) -> dict:
    "Open `html` (with the check script added) in headless Chromium; what the check script found."
    page = tmp / "checked.html"
    page.write_text(html.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=15000", "--dump-dom", page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="ltsei-check">(.*?)</pre>', out.stdout, flags=re.S)
    assert m, f"the check script did not run in Chromium (rc {out.returncode}): {out.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def _errors(nb_path: Path) -> list:
    nb = nbformat.read(nb_path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    write_fake_runs(tmp / "runs", "quick", seeds=(0, 1))
    return tmp, render_report(tmp / "runs", "quick")


def test_report_renders_without_errors(report):
    tmp, html = report
    assert html == tmp / "runs" / "quick" / "report.html"
    assert _errors(tmp / "runs" / "quick" / "report.ipynb") == []
    text = html.read_text(encoding="utf-8")
    assert text.count('class="dataframe ltsei-table') == len(TABLES)
    assert text.count("data:image/png;base64") >= 4
    assert "DEMO: these are made-up results" in text


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); CI installs it")
def test_report_in_headless_chromium(report):
    tmp, html = report
    r = _browse(html, tmp)
    assert r["h1"] and r["h1"][0].startswith("Results report")
    assert sorted(r["tables"]) == sorted(f"ltsei-{n}" for n in TABLES)
    assert r["main_rows"] == 18
    assert r["images"] >= 4 and r["images_loaded"] == r["images"]
    assert not r["traceback"]


def test_report_without_results_says_so(tmp_path):
    html = render_report(tmp_path / "runs", "smoke")
    assert _errors(tmp_path / "runs" / "smoke" / "report.ipynb") == []
    assert "No results yet" in html.read_text(encoding="utf-8")
