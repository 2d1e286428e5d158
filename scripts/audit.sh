#!/usr/bin/env bash
# Dependency audit: pip-audit against the packages installed in this checkout's venv (what the tests ran with) and
# against the image lock files (requirements/*.lock).
#
#   bash scripts/audit.sh
#
# Exit 1 when a known vulnerability is reported. Report-only (exit 0, with a loud note) when the advisory database
# cannot be reached: CI machines may reach package registries only. pip-audit itself says "No known
# vulnerabilities found" when it could look up nothing, so this script counts what was really audited.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${STREAMREC_CACHE:-$HOME/.cache/streamrec}"
UV="$CACHE/uv-tool/bin/uv"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink UV_NO_PROGRESS=1
VENV="${STREAMREC_VENV:-$ROOT/.venv}"
TOOL="$CACHE/audit-tool"   # pip-audit in its own venv: its dependencies are not the project's
# The venv the tests run with (a fresh clone has none yet: CI runs this first).
bash scripts/bootstrap.sh
if [ ! -x "$TOOL/bin/pip-audit" ]; then
    "$UV" venv --quiet --python "$(command -v python3.11 || command -v python3)" "$TOOL"
    "$UV" pip install --quiet --python "$TOOL/bin/python" "pip-audit==2.10.1" \
        || { echo "[audit] pip-audit could not be installed: audit skipped (report-only)"; exit 0; }
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$UV" pip freeze --python "$VENV/bin/python" --exclude-editable > "$WORK/installed.txt"
status=0
for req in "$WORK/installed.txt" requirements/*.lock; do
    [ -f "$req" ] || continue
    name="$req"; [ "$req" = "$WORK/installed.txt" ] && name="installed ($VENV)"
    set +e
    "$TOOL/bin/pip-audit" -r "$req" --no-deps --disable-pip --progress-spinner off -f json -o "$WORK/out.json" \
        2> "$WORK/err.txt"
    rc=$?
    set -e
    "$TOOL/bin/python" - "$WORK/out.json" "$name" "$rc" "$WORK/err.txt" <<'PY' || status=1
import json, sys
path, name, rc, err = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
try:
    deps = json.load(open(path))["dependencies"]
except (OSError, ValueError, KeyError):
    tail = open(err).read().strip().splitlines()[-1:] or ["no output"]
    print(f"[audit] {name}: pip-audit failed (exit {rc}): {tail[0][:200]}; report-only")
    sys.exit(0)
audited = [d for d in deps if not d.get("skip_reason")]
vulns = [(d["name"], d["version"], v["id"], ",".join(v.get("fix_versions", [])) or "no fix")
         for d in audited for v in d.get("vulns", [])]
if not audited:
    print(f"[audit] {name}: NOT AUDITED - the advisory database could not be reached for any of {len(deps)} "
          f"packages (report-only)")
    sys.exit(0)
print(f"[audit] {name}: {len(audited)} of {len(deps)} packages audited, {len(vulns)} known vulnerabilities")
for n, ver, vid, fix in vulns:
    print(f"[audit]   {n} {ver}: {vid} (fixed in {fix})")
sys.exit(1 if vulns else 0)
PY
done
exit $status
