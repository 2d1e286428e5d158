#!/usr/bin/env bash
# Create (or reuse) this checkout's virtual environment (.venv in the checkout) and install streamrec into it.
#
# Each checkout gets its own environment, so two clones on one machine never run each other's code. The
# multi-GB download (torch) still happens once per machine: uv keeps one package cache under
# ~/.cache/streamrec/uv-cache and hard-links its files into every checkout's venv (seconds, no disk copy).
# Dependencies are reinstalled only when pyproject.toml changes (hash stamp).
#
#   STREAMREC_VENV=/path   use that venv instead of <checkout>/.venv
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
CACHE="${STREAMREC_CACHE:-$HOME/.cache/streamrec}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

# uv itself lives in a tiny machine-wide tool venv (one pip install, once per machine).
UV="$CACHE/uv-tool/bin/uv"
if [ ! -x "$UV" ]; then
    echo "[bootstrap] installing uv into $CACHE/uv-tool"
    mkdir -p "$CACHE"
    "$PYTHON" -m venv "$CACHE/uv-tool"
    "$CACHE/uv-tool/bin/python" -m pip install --quiet --disable-pip-version-check "uv==0.13.8"
fi
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink UV_NO_PROGRESS=1

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating venv at $VENV"
    "$UV" venv --quiet --python "$(command -v "$PYTHON")" "$VENV"
fi

STAMP="$VENV/.streamrec-deps"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "[bootstrap] installing dependencies (the first run on a machine downloads torch: several GB)"
    "$UV" pip install --python "$VENV/bin/python" -e "$ROOT[dev]"
    echo "$WANT" > "$STAMP"
else
    echo "[bootstrap] dependencies up to date in $VENV"
fi
# The editable install must point at this checkout (it does unless STREAMREC_VENV names a venv of another one).
"$UV" pip install --quiet --python "$VENV/bin/python" --no-deps -e "$ROOT"
echo "[bootstrap] ready: $VENV/bin/streamrec"
