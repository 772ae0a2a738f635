#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install what ltsei needs.
# Sourced by ./reproduce, ./test and ./site. One install and one stamp for all of them: the stamp
# holds a hash of every requirement file (requirements.txt and requirements-extras.txt: Ray,
# submitit and TensorBoard, optional at run time but tested), so running one command after the
# other installs nothing.
# torch: kept as it is when .venv already has one. GPU users: install the torch build for your CUDA
# first (`python3 -m venv .venv && .venv/bin/pip install torch --index-url <the index pytorch.org names for
# your CUDA>`). Otherwise the set-up installs the pinned version from the configured
# package index: a CPU-only build only where that index serves one (the PyTorch CPU index, a CPU mirror,
# macOS); on Linux x86-64 plain PyPI serves the CUDA build (several GB). LTSEI_TORCH_INDEX=URL picks the
# index for torch alone, e.g. https://download.pytorch.org/whl/cpu.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.ltsei-installed"
reqs=("$root/requirements.txt" "$root/requirements-extras.txt")
want="$(cat "${reqs[@]}" "$root/settings.ini" "$root/setup.py" | sha1sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[ltsei] creating virtual environment in .venv" >&2
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[ltsei] installing dependencies into .venv (first run: about 1-2 minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/python" -m pip install -q --no-compile "torch==2.13.0" ${LTSEI_TORCH_INDEX:+--index-url "$LTSEI_TORCH_INDEX"}
  fi
  "$venv/bin/python" -m pip install -q --no-compile -r "${reqs[0]}" -r "${reqs[1]}"   # one resolution for both files
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  # rfc3987-syntax (jsonschema's format-nongpl extra, which jupyter-events asks for) builds a Lark grammar when jsonschema
  # is imported: 1.4 CPU s in every process that loads nbformat or Ray (papermill, each `ltsei reproduce` driver, each Ray
  # worker, each pytest worker). Only jsonschema's "iri" format checks use it, and nothing here validates IRIs; JupyterLab
  # and `pip check` are content without it. Removed; `pip install rfc3987-syntax` puts it back.
  "$venv/bin/python" -m pip uninstall -y -q rfc3987-syntax >/dev/null 2>&1 || true
  # pip byte-compiles what it installs on one core; compiled here on all cores instead (a file that does not compile
  # is skipped, as pip skips it). Where PYTHONDONTWRITEBYTECODE is set (as on the project's machines) nothing is cached
  # later, so every process would compile what it imports. Left out: test suites and packages or parts no ltsei process
  # imports (pip, JupyterLab's server, Ray's libraries). Not left out: sympy and parts of torch's compiler, which the
  # first optimizer step imports.
  skip='/tests?/|/site-packages/(pip|setuptools|pkg_resources|networkx|jupyterlab|jupyterlab_server|notebook|jupyter_server)/'
  skip+='|/ray/(rllib|data|train|tune|llm|serve|air|workflow)/'
  "$venv/bin/python" -m compileall -q -j 0 -x "$skip" \
    "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null 2>&1 || true
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
# ltsei's own bytecode (ltsei/__pycache__, ignored by git; up-to-date files are skipped): every notebook kernel, run and
# test process imports ltsei, and with PYTHONDONTWRITEBYTECODE set each would compile it again (about 0.3 s each)
python -m compileall -q -j 0 ltsei >/dev/null 2>&1 || true
