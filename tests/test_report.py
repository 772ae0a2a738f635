"""The report: nbs/report.ipynb executed with papermill on fake results, rendered to HTML, opened in headless Chromium;
its tables and figures must be there, no cell may have failed, its discussion must come from the numbers, a smoke
report must say that it is a pipeline check, and its maths must render without internet."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from ltsei.experiments.demo import fake_metrics, write_fake_runs
from ltsei.experiments.discussion import discussion, mechanisms, profile_header
from ltsei.experiments.report import report_html
from ltsei.rows import COMPAT_ROWS, ROWS_BY_ID
from ltsei.experiments.seed_compat import COMPAT_HOWTO
from ltsei.experiments.layout import run_dir
from ltsei.core.storage import atomic_write_json
from ltsei.orchestration.reproduce import render_report
from ltsei.experiments.expectations import expectations
from ltsei.experiments.paired import all_paired
from ltsei.experiments.tables import TABLES, collect_results, summarize

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
GUIDE_TABLES = list(TABLES)       # the guide's tables and the extra table (the registry has rows beyond the guide)

CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.from(document.querySelectorAll('img'));
  var maths = Array.from(document.querySelectorAll('math'));
  var firstText = Array.from(document.querySelectorAll('table.ltsei-table tbody tr:first-child td:nth-child(1), table.ltsei-paired tbody td:first-child'));
  var firstNum = Array.from(document.querySelectorAll('table.ltsei-table tbody tr:first-child td:last-child'));
  var r = {tables: Array.from(document.querySelectorAll('table.ltsei-table')).map(t => t.className.split(' ').pop()),
           main_rows: document.querySelectorAll('table.ltsei-main tbody tr').length,
           images: imgs.length, images_loaded: imgs.filter(i => i.complete && i.naturalWidth > 100).length,
           maths: maths.length, maths_drawn: maths.filter(m => m.getBoundingClientRect().width > 5).length,
           text_align: Array.from(new Set(firstText.map(td => getComputedStyle(td).textAlign))),
           number_align: Array.from(new Set(firstNum.map(td => getComputedStyle(td).textAlign))),
           h1: Array.from(document.querySelectorAll('h1')).map(h => h.textContent.trim()),
           traceback: document.body.innerText.indexOf('Traceback') >= 0};
  var el = document.createElement('pre'); el.id = 'ltsei-check'; el.textContent = JSON.stringify(r);
  document.body.appendChild(el);
});
</script>"""


def _browse(text: str, tmp: Path) -> dict:
    "Open the page `text` (with the check script added) in headless Chromium, offline; what the check script found."
    page = tmp / "checked.html"
    page.write_text(text.replace("</body>", CHECK + "</body>"), encoding="utf-8")
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


def _remote_scripts(page: str) -> list[str]:
    "Scripts and modules the page would fetch over the network."
    return re.findall(r"<script[^>]+src=[\"']?(https?:[^\"' >]+)", page) + re.findall(r"https?://\S+?\.m?js\b", page)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    write_fake_runs(tmp / "runs", "quick", seeds=(0, 1))
    write_fake_runs(tmp / "runs", "quick", rows=COMPAT_ROWS, seeds=(0, 1, 2))     # the compat rows (--rows compat)
    return tmp, render_report(tmp / "runs", "quick")


def test_report_renders_without_errors(report):
    tmp, html = report
    assert html == tmp / "runs" / "quick" / "report.html"
    assert _errors(tmp / "runs" / "quick" / "report.ipynb") == []
    text = html.read_text(encoding="utf-8")
    assert text.count('class="dataframe ltsei-table') == len(GUIDE_TABLES)
    assert text.count("data:image/png;base64") >= 5                  # 4 figures and the confusion matrices
    assert "DEMO: these are made-up results" in text
    assert "Paired differences to CE" in text and "Paired differences to cRT" in text
    assert "CPU scale, not the paper" in text and "PIPELINE CHECK" not in text
    assert "Why some rows do not behave as expected" not in text     # no pasted, profile-blind paragraph


def test_report_compat_section(report):
    "With compat runs: their table (both modes, per seed, the paired differences with p), figure and generated text."
    tmp, html = report
    text = html.read_text(encoding="utf-8")
    start = text.index("Seed compatibility<")
    sec = text[start:text.index("Figures<", start)]
    assert 'class="dataframe ltsei-compat"' in sec and COMPAT_HOWTO not in text
    assert "MoE-LTSEI (5.1) − cRT" in sec and "MoE-LTSEI + routed gate − cRT" in sec and ", p = " in sec
    assert sec.count("data:image/png;base64") == 1                                 # the figure of the seeds, paired
    assert "The paper&#x27;s claim (MoE-LTSEI above cRT)" in sec or "The paper's claim (MoE-LTSEI above cRT)" in sec
    assert (tmp / "runs" / "quick" / "tables" / "compat.md").is_file()
    assert (tmp / "runs" / "quick" / "figures" / "seed_compat.png").is_file()


def test_report_maths_offline(report):
    "report_html turns the maths into MathML at build time and loads no script from the internet."
    tmp, _ = report
    page = report_html(nbformat.read(tmp / "runs" / "quick" / "report.ipynb", as_version=4))
    assert page.count("<math") >= 3 and "$$" not in page
    assert _remote_scripts(page) == []


def test_rendered_report_html_is_offline(report):
    _, html = report
    assert _remote_scripts(html.read_text(encoding="utf-8")) == []


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium); CI installs it")
def test_report_in_headless_chromium(report):
    tmp, _ = report
    page = report_html(nbformat.read(tmp / "runs" / "quick" / "report.ipynb", as_version=4))
    r = _browse(page, tmp)
    assert r["h1"] and r["h1"][0].startswith("Results report")
    assert sorted(r["tables"]) == sorted(f"ltsei-{n}" for n in GUIDE_TABLES)
    assert r["main_rows"] == 18
    assert r["images"] >= 5 and r["images_loaded"] == r["images"]
    assert r["maths"] >= 3 and r["maths_drawn"] == r["maths"]          # MathML laid out by the browser, offline
    assert r["text_align"] == ["left"] and r["number_align"] == ["right"]
    assert not r["traceback"]


def test_smoke_report_says_pipeline_check(tmp_path):
    write_fake_runs(tmp_path / "runs", "smoke")
    text = render_report(tmp_path / "runs", "smoke").read_text(encoding="utf-8")
    assert _errors(tmp_path / "runs" / "smoke" / "report.ipynb") == []
    top = text.index("PIPELINE CHECK: these numbers mean nothing")
    assert top < text.index("Main comparison") and "Pipeline check: these numbers mean nothing" in text
    assert top < text.index("About this report") and "2026-11-30" not in text          # it opens with the banner
    assert f"-p profile smoke -p runs_dir {tmp_path / 'runs'}" in text                  # the render-again command is its own
    assert "One seed: no spread is available" in text
    assert "None: the smoke profile is a pipeline check" in text      # no mechanism explained from smoke numbers
    sec = text[text.index("Seed compatibility"):]                              # no compat runs: how to make them, nothing else
    assert COMPAT_HOWTO.split(":")[0] in sec and "ltsei-compat" not in sec and "compat=paper" not in sec


def test_report_without_results_says_so(tmp_path):
    html = render_report(tmp_path / "runs", "smoke")
    assert _errors(tmp_path / "runs" / "smoke" / "report.ipynb") == []
    assert "No results yet" in html.read_text(encoding="utf-8")


def test_profile_header_names_the_scale(tmp_path):
    write_fake_runs(tmp_path / "runs", "quick", rows=[ROWS_BY_ID["s1_1_ce"]], seeds=(0, 1, 2))
    res, _ = collect_results(tmp_path / "runs", "quick")
    q, s, p = profile_header(res, "quick"), profile_header(res, "smoke"), profile_header(res, "paper")
    assert "not the paper's" in q and "× 0.05" in q and "12 classes" in q and "3 seeds" in q
    assert s.startswith("**Profile `smoke`: Pipeline check: these numbers mean nothing.**")
    assert "Paper scale" in p and "mean nothing" not in p + q


# --- the generated discussion follows the numbers ---------------------------------------------------------------

def _runs(tmp: Path, bal: dict, few: dict | None = None, seeds=(0, 1, 2), usage=None):
    """Complete runs whose test balanced (and few-shot) accuracy per row is bal[row] + seed-dependent jitter; `usage`:
    the gate's usage by group of the MoE-LTSEI run (s5_1_full)."""
    jitter = [0.0, 0.01, -0.01, 0.005][:len(seeds)]
    for i, b in bal.items():
        r = ROWS_BY_ID[i]
        for k, j in zip(seeds, jitter):
            d = run_dir(tmp, "quick", r, k); d.mkdir(parents=True, exist_ok=True)
            m = fake_metrics(r.run_args, k)
            m["test"].update(balanced_acc=b + j, few_acc=(few or bal)[i] + j, many_acc=.9)
            m.pop("demo")
            if usage is not None and i == "s5_1_full": m["routing"] = dict(routing_acc=.35, usage_by_group=usage)
            atomic_write_json(d / "metrics.json", m)
            atomic_write_json(d / "row.json", dict(overrides=r.run_args))
    res, _ = collect_results(tmp, "quick")
    s = summarize(res); p = all_paired(res)
    return res, s, p, expectations(s, p)


def _discuss(tmp, bal, few=None, seeds=(0, 1, 2), usage=None):
    res, s, p, ex = _runs(tmp, bal, few, seeds, usage)
    return discussion(res, s, p, ex), mechanisms(res, p, "quick")


def _para(paras, start):
    return next(p for p in paras if p.startswith(start))


def test_discussion_changes_with_the_winner(tmp_path):
    a, _ = _discuss(tmp_path / "a", dict(s1_1_ce=.40, s2_2_bs=.50, s3_1_crt=.60, s5_1_full=.55))
    b, _ = _discuss(tmp_path / "b", dict(s1_1_ce=.40, s2_2_bs=.70, s3_1_crt=.45, s5_1_full=.41))
    assert a != b
    assert "the highest balanced accuracy is cRT's, 60.0 %" in _para(a, "**Best")
    assert "the highest balanced accuracy is Balanced Softmax's, 70.0 %" in _para(b, "**Best")
    ce_a, ce_b = _para(a, "**Balanced accuracy against CE"), _para(b, "**Balanced accuracy against CE")
    assert ce_a.index("cRT (+20.0") < ce_a.index("MoE-LTSEI (full configuration) (+15.0") < ce_a.index("Balanced Softmax (+10.0")
    assert "MoE-LTSEI (full configuration) (+1.0 ± 0.0)" in ce_b and "within noise" not in ce_b   # no spread: beyond noise
    assert "above CE beyond noise: Balanced Softmax (+30.0" in ce_b
    fail_a = _para(a, "**Where an expectation")
    assert "MoE-LTSEI (full configuration) above cRT on balanced accuracy" in fail_a
    assert not any(p.startswith("**Where an expectation") and "Balanced Softmax above CE" in p for p in b)


def test_discussion_with_noise_and_one_seed(tmp_path):
    res, s, p, ex = _runs(tmp_path / "n", dict(s1_1_ce=.40, s2_1_ldam_drw=.40, s3_1_crt=.6))
    res.loc[(res.row_id == "s2_1_ldam_drw"), "balanced_acc"] += [.02, -.03, .015]   # noisy, mean gap ~0
    p = all_paired(res)
    text = _para(discussion(res, summarize(res), p, expectations(summarize(res), p)), "**Balanced accuracy against CE")
    assert "within noise of CE: LDAM-DRW" in text and "above CE beyond noise: cRT (+20.0" in text
    assert [k for k, *_ in mechanisms(res, p, "quick")] == ["ldam_drw"]  # the LDAM-DRW explanation, only now
    one, _ = _discuss(tmp_path / "one", dict(s1_1_ce=.40, s2_2_bs=.50), seeds=(0,))
    ce = _para(one, "**Balanced accuracy against CE")
    assert "one seed: no spread, so no gap can be told from noise" in ce and "beyond noise" not in ce


def test_mechanisms_only_when_the_numbers_call_for_them(tmp_path):
    _, none = _discuss(tmp_path / "a", dict(s1_1_ce=.40, s2_1_ldam_drw=.55, s2_2_bs=.60, s2_2_la=.62, s2_1_cb=.5))
    assert none == []
    _, hits = _discuss(tmp_path / "b", dict(s1_1_ce=.40, s2_1_ldam_drw=.40, s2_2_bs=.60, s2_2_la=.60, s2_1_cb=.30))
    assert [k for k, *_ in hits] == ["ldam_drw", "bs_equals_la", "overweighting"]
    assert all(not re.search(r"\d+(\.\d+)? ?%", text) for _, _, text in hits)   # explanations carry no measured numbers


def test_gate_collapse_is_reported_and_explained_only_when_it_happens(tmp_path):
    collapsed = [[.97, .02, .01], [.95, .03, .02], [.9, .05, .05]]
    d, hits = _discuss(tmp_path / "c", dict(s1_1_ce=.40, s3_1_crt=.60, s5_1_full=.50), usage=collapsed)
    gate = _para(d, "**The gate of MoE-LTSEI")
    assert "sends 35.0 % of the test frames" in gate and "collapsed: expert 0 takes 94 % of the gate weight" in gate
    assert "moe_gate" in [k for k, *_ in hits]
    spread = [[.8, .1, .1], [.1, .8, .1], [.1, .1, .8]]
    d, hits = _discuss(tmp_path / "s", dict(s1_1_ce=.40, s3_1_crt=.60, s5_1_full=.50), usage=spread)
    assert "spread: the busiest expert" in _para(d, "**The gate of MoE-LTSEI") and "moe_gate" not in [k for k, *_ in hits]
    _, hits = _discuss(tmp_path / "w", dict(s1_1_ce=.40, s3_1_crt=.60, s5_1_full=.70), usage=collapsed)
    assert "moe_gate" not in [k for k, *_ in hits]                     # above cRT: nothing to explain
