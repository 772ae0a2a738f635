"""The documentation site where Quarto is not installed: static HTML in _site/ from the pages `_quarto.yml` lists.

    .venv/bin/python scripts/site_static.py [PAGE ...]     # (./site calls it) every listed page, or only PAGEs

The same pages Quarto renders (`project.render`: the notebooks with their stored outputs, never executed, as
`execute: enabled: false` says; the experiment guide; `docs/*.md`), at the same paths (`nbs/03_adsb.ipynb` ->
`_site/nbs/03_adsb.html`), each with `_quarto.yml`'s navigation (its navbar and its sidebar, globs expanded), and
`_site/index.html`: the site's title, description and the sidebar as a list. Notebooks go through nbconvert's HTML
exporter (the `basic` template: the cells, their outputs, figures embedded as data URIs) without syntax highlighting
(pygments makes the build five times slower); Markdown through mistune (nbconvert's own Markdown renderer). Links
between pages (`x.ipynb`, `x.md`) are rewritten to `x.html`, as Quarto does. No network, no Quarto, no pandoc.
"""
import argparse, html, os, re, shutil, sys
from pathlib import Path

import mistune
import nbformat
import yaml
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("LTSEI_SITE_DIR") or ROOT / "_site")      # LTSEI_SITE_DIR: elsewhere (the tests build there)
PAGE_SUFFIXES = (".ipynb", ".md", ".qmd")

CSS = """body{margin:0;font:15px/1.5 system-ui,sans-serif;color:#222}
header{background:#2c3e50;padding:.6em 1em}header a{color:#fff;margin-right:1.2em;text-decoration:none}header b{margin-right:2em}
.wrap{display:flex}nav{flex:0 0 16em;padding:1em;border-right:1px solid #ddd;font-size:13px}nav ul{padding-left:1em;margin:.2em 0}
nav p{margin:.8em 0 .2em;font-weight:bold}nav a.here{font-weight:bold}main{flex:1;min-width:0;padding:1em 2em;max-width:60em}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;white-space:pre-wrap}img{max-width:100%}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.2em .5em}.prompt,.anchor-link{display:none}"""


def expand(patterns) -> list[Path]:
    "The files `patterns` (repository-relative globs, in order) name, each once."
    seen = {}
    for pat in patterns:
        for p in sorted(ROOT.glob(pat)):
            if p.is_file() and p.suffix in PAGE_SUFFIXES: seen.setdefault(p, None)
    return list(seen)


def html_path(src: Path) -> Path:
    return src.relative_to(ROOT).with_suffix(".html")


def title_of(src: Path) -> str:
    "The page's title: a Markdown page's front matter `title`, else its first `# ` heading, else its name."
    if src.suffix == ".ipynb":
        nb = nbformat.read(src, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    else:
        text = src.read_text(encoding="utf-8")
        front = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
        if front and (t := (yaml.safe_load(front.group(1)) or {}).get("title")): return str(t)
    m = re.search(r"^# (.+)$", text, flags=re.M)
    return m.group(1).strip().replace("`", "") if m else src.stem


def sidebar(cfg) -> list[tuple[str | None, list[Path]]]:
    "The sidebar's sections as (title or None, pages), the globs expanded."
    out = []
    for item in cfg["website"]["sidebar"]["contents"]:
        if isinstance(item, str): out.append((None, expand([item])))
        else: out.append((item.get("section"), expand([c if isinstance(c, str) else c["href"] for c in item.get("contents", [])])))
    return out


def link(target: Path, here: Path) -> str:
    "The relative URL of page `target` (a source file) from the page at `here` (a path under _site)."
    return Path(os.path.relpath(html_path(target), here.parent)).as_posix()


def nav_html(cfg, titles: dict, here: Path) -> tuple[str, str]:
    "The navbar and the sidebar of the page at `here`."
    top = [f'<b><a href="{Path(os.path.relpath("index.html", here.parent)).as_posix()}">{html.escape(cfg["website"]["title"])}</a></b>']
    for it in cfg["website"]["navbar"].get("left", []):
        for p in expand([it["href"]])[:1]: top.append(f'<a href="{link(p, here)}">{html.escape(it["text"])}</a>')
    side = []
    for section, pages in sidebar(cfg):
        if section: side.append(f"<p>{html.escape(section)}</p>")
        side.append("<ul>" + "".join(
            f'<li><a href="{link(p, here)}"{" class=here" if html_path(p) == here else ""}>{html.escape(titles.get(p, p.stem))}</a></li>'
            for p in pages) + "</ul>")
    return "".join(top), "".join(side)


def page(cfg, titles: dict, here: Path, title: str, body: str) -> str:
    top, side = nav_html(cfg, titles, here)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
            f"<title>{html.escape(title)} – {html.escape(cfg['website']['title'])}</title><style>{CSS}</style></head>\n"
            f"<body><header>{top}</header><div class=wrap><nav>{side}</nav><main>\n{body}\n</main></div></body></html>\n")


def rewrite_links(body: str) -> str:
    "Relative links to notebooks and Markdown pages point at their HTML pages (as Quarto rewrites them)."
    return re.sub(r'(href=")(?![a-z]+:|#|/)([^"#]+)\.(?:ipynb|md|qmd)([#"])', r"\1\2.html\3", body)


def notebook_body(src: Path) -> str:
    "The notebook as HTML, with its stored outputs (never executed)."
    plain = lambda code, lang=None, metadata=None: f"<pre><code>{html.escape(code)}</code></pre>"
    exporter = HTMLExporter(template_name="basic", filters={"highlight_code": plain})
    body, _ = exporter.from_notebook_node(nbformat.read(src, as_version=4))
    return body


_MD = mistune.create_markdown(escape=False, plugins=["table", "strikethrough", "footnotes", "url"])


def markdown_body(src: Path, title: str) -> str:
    text = src.read_text(encoding="utf-8")
    text = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S)        # the front matter: the title is the page's h1
    return (f"<h1>{html.escape(title)}</h1>\n" if not re.search(r"^# ", text, flags=re.M) else "") + _MD(text)


def build(only: list[str] | None = None) -> list[Path]:
    "Write the pages (all that `_quarto.yml` renders, or those of `only`) and the index; return the files written."
    cfg = yaml.safe_load((ROOT / "_quarto.yml").read_text(encoding="utf-8"))
    listed = expand(cfg["project"]["render"])
    chosen = listed if not only else [p for p in listed if any(p == (ROOT / o).resolve() for o in only)]
    if only and not chosen: raise SystemExit(f"[ltsei] site: none of {only} is a page _quarto.yml lists")
    titles = {p: title_of(p) for p in listed}
    if not only and OUT.exists(): shutil.rmtree(OUT)
    written = []
    for src in chosen:
        here = html_path(src)
        body = notebook_body(src) if src.suffix == ".ipynb" else markdown_body(src, titles[src])
        (OUT / here).parent.mkdir(parents=True, exist_ok=True)
        (OUT / here).write_text(page(cfg, titles, here, titles[src], rewrite_links(body)), encoding="utf-8")
        written.append(OUT / here)
    here = Path("index.html")
    lists = "".join((f"<h2>{html.escape(s)}</h2>" if s else "") + "<ul>" + "".join(
        f'<li><a href="{link(p, here)}">{html.escape(titles[p])}</a></li>' for p in ps) + "</ul>" for s, ps in sidebar(cfg))
    intro = f"<h1>{html.escape(cfg['website']['title'])}</h1>\n<p>{html.escape(cfg['website'].get('description', ''))}</p>\n"
    (OUT / here).write_text(page(cfg, titles, here, "Home", intro + lists), encoding="utf-8")
    written.append(OUT / here)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="*", help="only these pages (paths as _quarto.yml lists them)")
    a = ap.parse_args(argv)
    files = build(a.pages or None)
    print(f"[ltsei] site: {len(files) - 1} page(s) and the index, static HTML (Quarto is not installed: "
          "https://quarto.org/docs/download/ renders the styled site)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
