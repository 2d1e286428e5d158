#!/usr/bin/env bash
# Regenerate the hash-locked requirements the container images install from (pip/uv --require-hashes):
#
#   requirements/gpu.lock   everything from PyPI, torch = the default PyPI wheel (CUDA), Linux x86_64, CPython 3.11
#   requirements/cpu.lock   the same with torch from the CPU-only index (needs download.pytorch.org; skipped with a
#                           note when that index cannot be reached)
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
"$UV" pip compile "${COMMON[@]}" -o requirements/gpu.lock
echo "[lock] requirements/gpu.lock: $(grep -c '==' requirements/gpu.lock) packages"
if "$UV" pip compile "${COMMON[@]}" --index-url https://download.pytorch.org/whl/cpu \
      --extra-index-url https://pypi.org/simple --index-strategy unsafe-best-match -o requirements/cpu.lock.tmp; then
  mv requirements/cpu.lock.tmp requirements/cpu.lock
  echo "[lock] requirements/cpu.lock: $(grep -c '==' requirements/cpu.lock) packages"
else
  rm -f requirements/cpu.lock.tmp
  echo "[lock] the CPU torch index (download.pytorch.org) is unreachable: requirements/cpu.lock left as it was" >&2
fi
