#!/usr/bin/env bash
# Create or reuse the project's virtual environment in .venv and install what ltsei needs.
# Sourced by ./reproduce and ./test. GPU users: install your own torch into .venv first
# (e.g. `python -m venv .venv && .venv/bin/pip install torch`); it is kept as it is.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.ltsei-installed"
# LTSEI_EXTRAS=1 (set by ./test) also installs requirements-extras.txt: Ray, submitit, TensorBoard, tested but optional
reqs=("$root/requirements.txt"); [ "${LTSEI_EXTRAS:-0}" = 1 ] && reqs+=("$root/requirements-extras.txt")
want="$(cat "${reqs[@]}" "$root/settings.ini" "$root/setup.py" | sha1sum | cut -c1-16)"
if [ ! -x "$venv/bin/python" ]; then
  echo "[ltsei] creating virtual environment in .venv" >&2
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[ltsei] installing dependencies into .venv (first run: about 1-2 minutes)" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    # CPU build, pinned: an unpinned torch pulls a multi-GB CUDA build on a CPU machine.
    "$venv/bin/python" -m pip install -q "torch==2.13.0"
  fi
  for r in "${reqs[@]}"; do "$venv/bin/python" -m pip install -q -r "$r"; done
  "$venv/bin/python" -m pip install -q --no-deps -e "$root"
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
