#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install streamrec into it.
#
# The venv lives outside the checkout (default ~/.cache/streamrec/venv) so that every clone on
# the machine, CI's clean clones included, reuses one torch install instead of downloading
# several GB again. Dependencies are reinstalled only when pyproject.toml changes (hash stamp);
# the package itself is always re-linked editable to the current checkout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${STREAMREC_VENV:-$HOME/.cache/streamrec/venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [ ! -x "$VENV/bin/python" ]; then
    echo "[bootstrap] creating venv at $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip "setuptools>=68" wheel
fi

STAMP="$VENV/.streamrec-deps"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    echo "[bootstrap] installing dependencies (first run on a machine downloads torch: several GB)"
    "$VENV/bin/python" -m pip install --progress-bar off -e "$ROOT[dev]"
    echo "$WANT" > "$STAMP"
else
    echo "[bootstrap] dependencies up to date in $VENV"
fi
# Always point the venv at this checkout (cheap, no network).
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
echo "[bootstrap] ready: $VENV/bin/streamrec"
