"""The package's shape, checked on every change: calls and imports go one way, files stay small.

- No import cycle among rdfast's modules, counting every import statement (module level or inside a
  function): a module never imports a module that imports it back, directly or through others.
- The core (everything but the side packages below) imports none of the side packages.
- No function-local import of rdfast's own modules (they hid cycles); local imports are for heavy optional
  third-party packages only.
- No file in rdfast/ over 450 lines.
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rdfast"
SIDE = {"train", "diffusion", "cli", "demo", "serve", "integrations", "toyworld", "score_jsonl"}
MAX_LINES = 450


def module_name(path: pathlib.Path) -> str:
    parts = ("rdfast",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: pathlib.Path, known: set[str]) -> list[tuple[str, bool, int]]:
    """(imported rdfast module, imported inside a function?, line) for every import in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    local_lines = {n.lineno for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import mod" imports pkg.mod when it is a module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # the bare root is the lazy public face; rdfast._C and rdfast.kernels (compiled, Triton) are
            # optional extensions, not modules of this tree
            if target and target not in (name, "rdfast"):
                found.append((target, node.lineno in local_lines, node.lineno))
    return found


def is_side(name: str) -> bool:
    parts = name.split(".")
    return len(parts) > 1 and parts[1] in SIDE


GRAPH = {name: imports(path, set(modules())) for name, path in modules().items()}


def test_no_import_cycle():
    edges = {name: {t for t, _, _ in found} for name, found in GRAPH.items()}
    # a package's __init__ importing its own submodules is not a cycle of calls; the submodule importing
    # the package's __init__ back would be, and is caught as any other edge
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_core_imports_no_side_package():
    bad = [f"{name} imports {target} (line {line})" for name, found in GRAPH.items() if not is_side(name)
           for target, _, line in found if is_side(target)]
    assert not bad, "\n".join(bad)


def test_no_function_local_import_of_rdfast_modules():
    bad = [f"{name} line {line}: {target}" for name, found in GRAPH.items() for target, local, line in found if local]
    assert not bad, "\n".join(bad)


def test_no_file_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_checker_sees_cycles_and_local_imports(tmp_path, monkeypatch):
    """The walk itself: a planted cycle through a function-local import is found."""
    global ROOT
    pkg = tmp_path / "rdfast"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text("def f():\n    from .train import trainer\n")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "trainer.py").write_text("from ..model import f\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    graph = {name: imports(path, set(modules())) for name, path in modules().items()}
    assert ("rdfast.train.trainer", True, 2) in graph["rdfast.model"]
    assert ("rdfast.model", False, 1) in graph["rdfast.train.trainer"]
