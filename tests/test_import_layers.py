"""The package's layers import downwards only: no import circle between sub-packages.

Every module's imports are read with ``ast`` (at module level and inside functions: a lazy import is a
dependency too) and each module is mapped to its group: core (``attnunet/*.py``), ``attnunet.transforms``,
and each sub-package or top-level module of ``attnunet.pipelines``. The intended order, lower never
importing higher:

    core < transforms < pipelines.flags, pipelines.distributed, pipelines.data < planning < inference
    < evaluation < tracking < engines < bundle, demo < commands

Checked here: core imports nothing of ``attnunet.pipelines``; tracking imports only core and itself (the
spec, checkpoints and MLflow: the run summary lives in engines, the served model in inference); the group
graph has no cycle. Imports by name string (``importlib.import_module``, the CLI's command table) are
not seen.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pyproject.toml's package-dir: one import namespace from three folders.
FOLDERS = {"attnunet": "attnunet", "attnunet.transforms": "transforms", "attnunet.pipelines": "pipelines"}
CORE = "attnunet (core)"
TRACKING = "attnunet.pipelines.tracking"


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [p for p in path.relative_to(ROOT / folder).with_suffix("").parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def group(module: str) -> str:
    """The layer a module belongs to: core, transforms, or one sub-package (or module) of pipelines."""
    parts = module.split(".")
    if parts[:2] == ["attnunet", "pipelines"]:
        return ".".join(parts[:3])
    if parts[:2] == ["attnunet", "transforms"]:
        return "attnunet.transforms"
    return CORE


def _imported(module: str, path: Path) -> set[str]:
    """The attnunet modules ``module`` imports anywhere in its file (relative imports resolved;
    ``from package import submodule`` counts as the submodule)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return {name for name in found if name == "attnunet" or name.startswith("attnunet.")}


def _edges() -> dict[tuple[str, str], list[str]]:
    """(importing group, imported group) -> the imports behind it, ``"a.b -> c.d"``."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in MODULES.items():
        for target in sorted(_imported(module, path)):
            if group(module) != group(target):
                edges[group(module), group(target)].append(f"{module} -> {target}")
    return edges


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as its nodes in order (the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_every_module_is_found():
    assert {"attnunet.models", "attnunet.transforms.presets", "attnunet.pipelines.engines.training"} <= set(
        MODULES
    )
    assert group("attnunet.pipelines.tracking.store") == TRACKING
    assert group("attnunet.pipelines.flags") == "attnunet.pipelines.flags"


def test_core_does_not_import_pipelines():
    bad = [i for (source, _), imports in _edges().items() if source == CORE for i in imports]
    bad = [i for i in bad if i.split(" -> ")[1].startswith("attnunet.pipelines")]
    assert not bad, "core modules (attnunet/*.py) import attnunet.pipelines:\n" + "\n".join(bad)


def test_tracking_imports_only_core_and_mlflow():
    edges = _edges()
    bad = [
        i
        for (source, target), imports in edges.items()
        if source == TRACKING and target != CORE
        for i in imports
    ]
    assert not bad, "tracking imports another part of the package (only core and MLflow):\n" + "\n".join(bad)


def test_no_import_circle_between_groups():
    edges = _edges()
    graph: dict[str, set[str]] = defaultdict(set)
    for source, target in edges:
        graph[source].add(target)
    cycle = _cycle(graph)
    if cycle is not None:
        steps = [f"{a} -> {b}: {', '.join(edges[a, b])}" for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import circle between groups: " + " -> ".join(cycle) + "\n" + "\n".join(steps))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}}) is None
