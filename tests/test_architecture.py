"""The layering of python/meshpipe, read from the source with ``ast``: no import cycle (imports
inside functions, under TYPE_CHECKING and through ``importlib`` count), and no module imports
one above it.

Client side, lowest first (a module may import its own layer and the ones below):

    0  meshpipe._meshpipe              the native engine
    1  errors                          the exceptions a caller catches
    2  units, headers, error_body,     sizes and codecs; MESH's header rules; error answers;
       gp_route                        GP-routing addresses, patient details masked
    3  auth, config, models, synthetic, progress, memory, processes, logs, pages (package)
    4  client                          one aiohttp session, every endpoint; no retry
    5  retry                           every retry: call_with_retry, RetryingClient, chunk 1
    6  transfer (package)              staged Upload / Download, the journals
    7  sync, ledger                    the blocking facade; the durable record of transfers
    8  durable (package)               transfers recorded in the ledger: resume, exactly once
    9  watch (package)                 the always-on service: folders, polling, operations signals
    9  fleet (package)                 scale-out: sends spread over workers on PostgreSQL
    9  web (package)                   the tracking web view over the ledger (never imports watch)
   10  cli, demo, __main__, meshpipe   the commands; the public API (the package itself)

The local server (``meshpipe.server.*``) may import itself, the engine and only the low
client-side modules errors, units, headers, gp_route, auth, models, synthetic and memory,
and the web pages' base (pages).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "meshpipe"

LAYERS: dict[str, int] = {
    "meshpipe._meshpipe": 0,
    "meshpipe.errors": 1,
    "meshpipe.units": 2,
    "meshpipe.headers": 2,
    "meshpipe.error_body": 2,
    "meshpipe.gp_route": 2,
    "meshpipe.auth": 3,
    "meshpipe.config": 3,
    "meshpipe.models": 3,
    "meshpipe.synthetic": 3,
    "meshpipe.progress": 3,
    "meshpipe.memory": 3,
    "meshpipe.processes": 3,
    "meshpipe.logs": 3,
    "meshpipe.pages": 3,
    "meshpipe.client": 4,
    "meshpipe.retry": 5,
    "meshpipe.transfer": 6,
    "meshpipe.sync": 7,
    "meshpipe.ledger": 7,
    "meshpipe.durable": 8,
    "meshpipe.watch": 9,
    "meshpipe.fleet": 9,
    "meshpipe.web": 9,
    "meshpipe.cli": 10,
    "meshpipe.demo": 10,
    "meshpipe.__main__": 10,
    "meshpipe": 10,
}
SERVER = "meshpipe.server"
SERVER_MAY_IMPORT = frozenset(
    {
        "meshpipe._meshpipe",
        "meshpipe.errors",
        "meshpipe.units",
        "meshpipe.headers",
        "meshpipe.gp_route",
        "meshpipe.auth",
        "meshpipe.models",
        "meshpipe.synthetic",
        "meshpipe.memory",
        "meshpipe.pages",
        "meshpipe.pages.access",
        "meshpipe.pages.charts",
        "meshpipe.pages.format",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = all_modules()
KNOWN = set(MODULES) | {"meshpipe._meshpipe"}


def _resolve(name: str) -> str | None:
    """The known module ``name`` is, or lies in (``meshpipe.x.Y`` → ``meshpipe.x``)."""
    while name:
        if name in KNOWN:
            return name
        name = name.rpartition(".")[0]
    return None


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported meshpipe module, line) for every import anywhere in the module, including
    ``importlib.import_module`` of a literal module name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    uses_importlib = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                uses_importlib |= alias.name == "importlib"
                if (target := _resolve(alias.name)) is not None:
                    yield target, node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            for alias in node.names:
                target = _resolve(f"{source}.{alias.name}") or _resolve(source)
                if target is not None:
                    yield target, node.lineno
    if uses_importlib:
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in KNOWN
            ):
                yield node.value, node.lineno


def layer_of(module: str) -> int | None:
    """The layer of ``module`` or of the package it lies in (``meshpipe.transfer.upload`` is
    in ``meshpipe.transfer``); a module directly in meshpipe must be listed itself."""
    name: str | None = module
    while name and name != "meshpipe":
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0] or None
    return LAYERS.get(module)


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        edges[module] = {target for target, _ in imports_of(module, path) if target != module}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_every_module_has_a_layer() -> None:
    missing = [m for m in MODULES if not m.startswith(SERVER) and layer_of(m) is None]
    assert missing == [], f"add these modules to LAYERS in {__file__}: {missing}"


def test_no_import_cycle() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_goes_up_the_layers() -> None:
    upward: list[str] = []
    for module, path in MODULES.items():
        if module.startswith(SERVER):
            continue
        own = layer_of(module)
        assert own is not None
        for target, line in imports_of(module, path):
            if target.startswith(SERVER):
                if own < LAYERS["meshpipe.cli"]:
                    upward.append(f"{module}:{line} imports the server ({target})")
                continue
            layer = layer_of(target)
            if layer is not None and layer > own:
                upward.append(f"{module}:{line} (layer {own}) imports {target} (layer {layer})")
    assert upward == [], "imports up the layers:\n" + "\n".join(upward)


def test_the_server_imports_only_low_client_modules() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, path in MODULES.items()
        if module.startswith(SERVER)
        for target, line in imports_of(module, path)
        if not target.startswith(SERVER) and target not in SERVER_MAY_IMPORT
    ]
    assert wrong == [], "server imports above the low client modules:\n" + "\n".join(wrong)


def test_the_checks_see_what_they_check(tmp_path: Path) -> None:
    """The checker itself: a cycle is found, a lazy import counts, an upward one is named."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    client_imports = {
        target for target, _ in imports_of("meshpipe.client", MODULES["meshpipe.client"])
    }
    assert {"meshpipe.errors", "meshpipe.headers", "meshpipe.config"} <= client_imports
    lazy = tmp_path / "lazy.py"
    lazy.write_text(
        "import importlib\n"
        "def later():\n"
        "    from meshpipe.transfer import send_file\n"
        "    return importlib.import_module('meshpipe.cli')\n"
    )
    found = {target for target, _ in imports_of("meshpipe.client", lazy)}
    assert found == {"meshpipe.transfer", "meshpipe.cli"}


def test_transfer_stages_are_short() -> None:
    """Each stage of the transfer layer reads on one screen (at most 60 lines a function)."""
    long = []
    for module, path in MODULES.items():
        if layer_of(module) != LAYERS["meshpipe.transfer"]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []
