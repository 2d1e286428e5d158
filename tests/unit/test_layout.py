"""The package layout is the architecture: imports point down the layers, never up, and never in a circle.

    cli (and __main__)                 the command line
    tools/                             producers and consumers for users (replay, tail)
    stream/                            the Faust worker (app wiring, per-batch pipeline, state, messages, topics)
    serve/                             scorers as the worker runs them (micro-batcher, LM scorer, backends, re-ranker)
    model/                             the item LM as an artefact (model, training, evaluation, export, data sets)
    scoring/                           the Scorer contract and the model-free co-occurrence scorer
    config, events, metrics            shared leaves: settings, the interaction event, the Prometheus registry

Every import counts, also the ones inside functions (lazy imports still couple modules).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "streamrec"
LAYERS = {"__main__": 7, "cli": 6, "tools": 5, "stream": 4, "serve": 3, "model": 2, "scoring": 1,
          "config": 0, "events": 0, "metrics": 0, "__init__": 0}
# Modules that must start without torch: the worker and the tools import them on every start.
# The ONNX serving path (lm, backends, the numpy item table, the ONNX title encoder) too: the lean cpu image has no
# torch (tests/unit/test_lean_serving.py runs it with torch blocked).
TORCH_FREE = ("streamrec.cli", "streamrec.config", "streamrec.events", "streamrec.metrics", "streamrec.scoring",
              "streamrec.stream", "streamrec.tools", "streamrec.serve.build", "streamrec.serve.batching",
              "streamrec.serve.lm", "streamrec.serve.backends",
              "streamrec.model.cli", "streamrec.model.datasets", "streamrec.model.train_config",
              "streamrec.model.artifacts", "streamrec.model.table", "streamrec.model.text", "streamrec.model.text_onnx",
              "streamrec.model.vocab")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import of ``path``, relative ones resolved."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top_level = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports pkg.mod when that is a module
            names = [base] + [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
        out += [(n, id(node) in top_level) for n in names]
    return out


def _is_module(name: str) -> bool:
    if not name.startswith("streamrec"):
        return False
    rel = Path(*name.split(".")[1:])
    return (PKG / rel).with_suffix(".py").is_file() or (PKG / rel / "__init__.py").is_file()


def layer(name: str) -> int:
    parts = name.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        me = module_name(path)
        g[me] = {n for n, _ in imports(path) if n.startswith("streamrec") and _is_module(n) and n != me}
    return g


def test_every_module_has_a_layer():
    for name in graph():
        assert layer(name) >= 0, name


def test_imports_point_down_the_layers():
    bad = [f"{a} -> {b}" for a, deps in graph().items() for b in deps
           if layer(b) > layer(a) or (layer(b) == layer(a) and a.split(".")[:2] != b.split(".")[:2]
                                      and layer(a) != 0 and b != "streamrec")]
    assert not bad, "imports that point up (or sideways between packages):\n" + "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _module_path(name: str) -> Path:
    rel = PKG.joinpath(*name.split(".")[1:])
    return rel / "__init__.py" if (rel / "__init__.py").is_file() else rel.with_suffix(".py")


@pytest.mark.parametrize("prefix", TORCH_FREE)
def test_worker_side_starts_without_torch(prefix):
    """No module-level torch/transformers import in these modules, nor in the streamrec modules they import at
    module level (followed transitively)."""
    todo = [module_name(p) for p in sorted(PKG.rglob("*.py"))
            if module_name(p) == prefix or module_name(p).startswith(prefix + ".")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        top = [n for n, at_top in imports(_module_path(name)) if at_top]
        heavy = [n for n in top if n.split(".")[0] in ("torch", "transformers")]
        assert not heavy, f"{name} (reached from {prefix}) imports {heavy} at module level"
        todo += [n for n in top if n.startswith("streamrec") and _is_module(n)]


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The guard itself: a planted cycle and an upward import are reported."""
    fake = tmp_path / "streamrec"
    (fake / "scoring").mkdir(parents=True)
    (fake / "stream").mkdir()
    for d in (fake, fake / "scoring", fake / "stream"):
        (d / "__init__.py").write_text("")
    (fake / "scoring" / "a.py").write_text("from streamrec.stream import b\n")
    (fake / "stream" / "b.py").write_text("def f():\n    from streamrec.scoring import a\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    with pytest.raises(AssertionError, match="point up"):
        test_imports_point_down_the_layers()
    with pytest.raises(AssertionError, match="cycles"):
        test_no_import_cycles()
