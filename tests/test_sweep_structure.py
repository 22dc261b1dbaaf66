"""probes.sweeps: the package's modules import one another without cycles and import no private
names from other modules; probes.sweep and probes.sweep_ray are thin re-exports of it."""

import ast
from pathlib import Path

import probes.sweep
import probes.sweep_ray

PACKAGE = Path(__file__).resolve().parents[1] / "probes" / "sweeps"


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every `from X import ...` / `import X` at any depth of `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def test_no_module_of_the_package_imports_a_private_name_of_the_project():
    bad = [(p.name, mod, name) for p in PACKAGE.glob("*.py") for mod, names in imports(p)
           for name in names if mod.startswith("probes") and name.startswith("_")]
    assert bad == []


def test_the_package_has_no_import_cycle():
    graph = {p.stem: {m.removeprefix("probes.sweeps.") for m, _ in imports(p) if m.startswith("probes.sweeps.")}
             for p in PACKAGE.glob("*.py")}
    assert graph["__init__"] == set()  # `python -m probes.sweeps.worker` loads only what it needs
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        assert state.get(node) != "open", f"import cycle: {' -> '.join([*path, node])}"
        if state.get(node) == "done":
            return
        state[node] = "open"
        for child in sorted(graph[node]):
            visit(child, [*path, node])
        state[node] = "done"

    for module in graph:
        visit(module, [])


def test_the_old_modules_re_export_the_package_without_defining_anything():
    for module in (probes.sweep, probes.sweep_ray):
        tree = ast.parse(Path(module.__file__).read_text())
        defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [] and all(hasattr(module, name) for name in module.__all__)
    assert probes.sweep.run_sweep.__module__ == "probes.sweeps.run"
