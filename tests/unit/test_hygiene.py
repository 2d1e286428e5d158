"""Guards on the test suite itself: no test module may change process-wide settings for the whole run."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
PROCESS_WIDE = {"set_num_threads", "set_num_interop_threads", "manual_seed", "set_default_dtype"}


def test_no_test_module_changes_torch_settings_at_import():
    """A module-level ``torch.set_num_threads(2)`` holds for every test collected after it (and makes each run's
    thread count depend on collection order); such changes belong in a fixture that restores them
    (``conftest.one_thread``)."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:   # top-level statements only: run at import
            for call in ast.walk(node):
                if (isinstance(node, ast.Expr) and isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                        and call.func.attr in PROCESS_WIDE):
                    offenders.append(f"{path.relative_to(TESTS)}:{node.lineno} {call.func.attr}")
    assert not offenders, offenders
