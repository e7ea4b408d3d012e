"""The server's imports run one way: it uses only the low client-side modules, and no two of
its own modules import each other (directly or round a longer loop)."""

from __future__ import annotations

import ast
from pathlib import Path

import meshpipe.server

PACKAGE = Path(meshpipe.server.__file__).parent
#: The client-side modules the server may use: errors, sizes, header rules, tokens, typed
#: results, test data and memory figures; never the client, retry, transfer or CLI layers.
ALLOWED_OUTSIDE = {
    "meshpipe.errors",
    "meshpipe.units",
    "meshpipe.headers",
    "meshpipe.auth",
    "meshpipe.models",
    "meshpipe.synthetic",
    "meshpipe.memory",
}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "meshpipe" or name.startswith("meshpipe.")}


def module_name(path: Path) -> str:
    return "meshpipe.server" if path.stem == "__init__" else f"meshpipe.server.{path.stem}"


GRAPH = {module_name(path): imports_of(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_the_server_imports_only_low_client_side_modules() -> None:
    assert len(GRAPH) > 10  # the package was found and read
    outside = {
        (module, imported)
        for module, imported_names in GRAPH.items()
        for imported in imported_names
        if not imported.startswith("meshpipe.server") and imported not in ALLOWED_OUTSIDE
    }
    assert outside == set()
    assert ("meshpipe.server.streaming", "meshpipe.models") in {
        (m, i) for m, names in GRAPH.items() for i in names
    }


def test_no_import_cycle_inside_the_server() -> None:
    inside = {
        m: {i for i in names if i in GRAPH and i != "meshpipe.server"} for m, names in GRAPH.items()
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for imported in inside[module]:
            visit(imported, (*path, module))
        done.add(module)

    for module in inside:
        visit(module, ())
    assert "meshpipe.server.routes" in inside["meshpipe.server.app"]
