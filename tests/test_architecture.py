"""The core's shape, checked by parsing its source (issue #15): no import cycles between its modules, imports at
the top, and modules and functions short enough to read. The pages are straight-line scripts and are left out."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "pneumo_core"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def _core_imports(tree: ast.Module, modules: dict[str, Path]) -> list[tuple[str, ast.AST]]:
    """(imported core module, the import node) for every import in ``tree``, at any depth. ``from pkg import
    name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in modules:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.append((sub if sub in modules else node.module, node))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: {m for m, _ in _core_imports(ast.parse(path.read_text()), modules) if m != name and not _is_package_of(m, name)}
            for name, path in modules.items()}


def _is_package_of(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search, colouring nodes on the stack)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_core_module_imports_another_in_a_cycle():
    graph = _graph()
    assert len(graph) > 20 and graph["pneumo_core.model.predict"], "the parser found the core's imports"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_core_modules_import_each_other_at_the_top():
    """An import of one of our modules inside a function is how cycles hide. It is allowed only where it defers
    a heavy dependency (torch, for CLI commands that do not need it) and a comment right above says so."""
    modules = _modules()
    inner = []
    for name, path in modules.items():
        source = path.read_text()
        tree, lines = ast.parse(source), source.splitlines()
        top = set(map(id, tree.body))
        inner += [f"{name}:{node.lineno} imports {m}" for m, node in _core_imports(tree, modules) if id(node) not in top
                  and not _guarded_top_level(tree, node) and not _says_it_defers(lines, node.lineno)]
    assert not inner, "\n".join(sorted(set(inner)))


def _says_it_defers(lines: list[str], lineno: int) -> bool:
    """Whether the comment above the run of import lines that holds line ``lineno`` names a heavy dependency."""
    i = lineno - 1
    while i > 0 and lines[i - 1].lstrip().startswith(("from ", "import ")):
        i -= 1
    comment = lines[i - 1].strip() if i > 0 else ""
    return comment.startswith("#") and "heavy" in comment


def test_the_deferral_rule_needs_its_comment():
    lines = ["def f():", "    # torch-heavy: only this command needs it", "    from a import b", "    from c import d",
             "def g():", "    from a import b"]
    assert _says_it_defers(lines, 3) and _says_it_defers(lines, 4)
    assert not _says_it_defers(lines, 6)


def _guarded_top_level(tree: ast.Module, node: ast.AST) -> bool:
    """An import under a top-level ``if TYPE_CHECKING:`` or ``try:`` is still a module-level import."""
    for stmt in tree.body:
        if isinstance(stmt, (ast.If, ast.Try)) and any(n is node for n in ast.walk(stmt)):
            return True
    return False


def test_modules_and_functions_are_short_enough_to_read():
    files = sorted(CORE.rglob("*.py")) + sorted((ROOT / "appkit").rglob("*.py")) + [ROOT / "app.py"]
    long_modules = [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(CORE.rglob("*.py"))
                    if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    long_functions = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}::{node.name}: {length} lines")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_default_locations_are_the_checkouts_own(monkeypatch):
    """weights/, var/ and .streamlit/ default to the checkout (beside app.py), wherever the module that names
    them sits in the package; ../shared beside it holds the film types."""
    from pneumo_core.ops import audit, auth, registry, throttle
    from pneumo_core.safety import fitting

    for env in ("PNEUMO_WEIGHTS_DIR", "PNEUMO_AUDIT_DB", "PNEUMO_SECRETS", "PNEUMO_SIGNIN_DB"):
        monkeypatch.delenv(env, raising=False)
    assert (ROOT / "app.py").is_file()
    assert registry.weights_root() == ROOT / "weights" and (registry.weights_root() / "ACTIVE").is_file()
    assert audit.audit_path() == ROOT / "var" / "audit.sqlite3"
    assert throttle.throttle_path() == ROOT / "var" / "sign_in.sqlite3"
    assert auth.secrets_path() == ROOT / ".streamlit" / "secrets.toml"
    assert fitting.SHARED_FILM_TYPES == ROOT.parent / "shared" / "data" / "film_types"


def test_every_domain_error_is_a_pneumo_error_in_errors_py():
    """A caller finds every error the core raises in one module, and one ``except PneumoError`` catches them.
    (The job worker's ``CancelRequested`` is a KeyboardInterrupt by design: a signal, not an error.)"""
    import inspect

    from pneumo_core import errors

    elsewhere = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Cancelled")) \
                    and path.name != "errors.py":
                elsewhere.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert not elsewhere, elsewhere
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 15 and all(issubclass(c, errors.PneumoError) for c in classes)
