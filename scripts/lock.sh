#!/usr/bin/env bash
# Regenerate the hash-locked requirements the container images install from (pip/uv --require-hashes):
#
#   requirements/cpu.lock   the lean serving image: pyproject's base dependencies (no torch), Linux x86_64, CPython 3.11
#   requirements/gpu.lock   the same plus the `torch` extra (torch = the default PyPI wheel, CUDA): gpu, train, test
#
# Run it after every change to pyproject.toml's dependencies and commit the result. The images then install with
#   uv pip install --require-hashes --no-deps -r requirements/<cpu|gpu>.lock && uv pip install --no-deps -e /app
# so every wheel is the one that was locked, byte for byte (a changed or substituted file fails the hash check).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh >/dev/null   # provides uv
UV="${STREAMREC_CACHE:-$HOME/.cache/streamrec}/uv-tool/bin/uv"
export UV_CACHE_DIR="${STREAMREC_CACHE:-$HOME/.cache/streamrec}/uv-cache"
COMMON=(pyproject.toml --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --quiet
        --custom-compile-command "bash scripts/lock.sh")
mkdir -p requirements
"$UV" pip compile "${COMMON[@]}" --extra torch -o requirements/gpu.lock
echo "[lock] requirements/gpu.lock: $(grep -c '==' requirements/gpu.lock) packages"
"$UV" pip compile "${COMMON[@]}" -o requirements/cpu.lock
echo "[lock] requirements/cpu.lock: $(grep -c '==' requirements/cpu.lock) packages"
