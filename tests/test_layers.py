"""The package's shape, checked without a broker: no import circles between taskqueue's
modules, and no import that runs back up the layers below (issue 29, item 7).

Every module under taskqueue/ and the entry scripts at the top of the checkout are parsed (ast,
nothing is imported or run); every ``import`` and ``from ... import`` counts, at module level,
inside functions and under ``if TYPE_CHECKING:`` alike (a lazy or a type-only import is still
a dependency: it only hides a circle). Imports inside one package (worker.consumer ->
worker.slots) are free as long as they make no circle; between packages they must go down.

The layers, bottom first. A package imports only from layers below its own, never from a
sibling in the same layer (what two siblings both need goes down a layer) nor from above.
"""

from __future__ import annotations

import ast
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS: list[tuple[str, ...]] = [
    # The wire vocabulary (ids, event and record shapes: what goes over the broker), and what
    # every module may use: the user's error, the log. The root package is here too: Python
    # imports it before any of its modules, so its __init__ must import nothing at load (it
    # reaches the API, taskqueue.submit, through importlib on first use: not followed here).
    ("taskqueue", "taskqueue.errors", "taskqueue.log", "taskqueue.wire"),
    # Talking to RabbitMQ: settings, connections that fail over, the queues declared.
    ("taskqueue.broker",),
    # The streams every side reads: the results record (written by workers, read by the
    # emitter's --wait, the views and the worker's done index), and the control stream
    # (commands, and the worker's listener of them).
    ("taskqueue.results", "taskqueue.control"),
    # The two roles: siblings, neither imports the other.
    ("taskqueue.worker", "taskqueue.emitter"),
    # Who did what: the report and the terminal live view ...
    ("taskqueue.views",),
    # ... and the web view, built on them.
    ("taskqueue.web",),
    # The command line's shared parts: options, one-line errors, the management panel.
    ("taskqueue.cli", "taskqueue.admin"),
    # The commands behind the scripts, and the API for task lists in code.
    ("taskqueue.commands", "taskqueue.api"),
    # The entry scripts at the top of the checkout (python listening_worker.py ...).
    ("emitter_of_tasks", "listening_worker", "task_report", "task_control", "util_logger"),
]

# Modules that moved: kept only as a re-export for the importers still listed in ALLOWED.
MOVED: dict[str, str] = {}  # (views.events went to wire.events: no importer is left)

# The violations the code has today, each with why it is there and what removes it. The test
# fails on any violation not listed here; an entry that no longer happens is only warned about
# (its fix is in: take it out, the list only shrinks).
ALLOWED: dict[tuple[str, str], str] = {}  # empty: the test allows no exception


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    found = {module_name(path): path for path in (ROOT / "taskqueue").rglob("*.py")}
    found.update((path.stem, path) for path in ROOT.glob("*.py"))
    return found


def imported_names(path: Path, package: str) -> list[str]:
    """Every name an import statement anywhere in *path* may load: ``from a.b import c``
    gives a.b and a.b.c (c may be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package up
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the taskqueue modules (and scripts) it imports, anywhere in its text."""
    modules = sources()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target in imported_names(path, package):
            while target and target not in modules:
                target = target.rpartition(".")[0]  # a name inside a module: the module
            if target and target != name:
                graph[name].add(target)
    return graph


def group_of(module: str) -> tuple[int, str]:
    """(layer, group) of a module: the longest declared prefix that contains it."""
    best: tuple[int, str] | None = None
    for level, groups in enumerate(LAYERS):
        for group in groups:
            inside = module == group or module.startswith(group + ".")
            if inside and group != "taskqueue" and (best is None or len(group) > len(best[1])):
                best = (level, group)
    if best is None and module == "taskqueue":
        best = (0, "taskqueue")
    assert best is not None, f"{module} is in no layer: add its package to LAYERS"
    return best


def violations(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    found = {}
    for source, targets in graph.items():
        for target in targets:
            if target in MOVED:
                found[(source, target)] = f"moved to {MOVED[target]}"
                continue
            (low, group), (high, other) = group_of(target), group_of(source)
            if group == other:
                continue  # inside one package (or one group of the bottom layer)
            if low > high:
                found[(source, target)] = f"runs back up: layer {high} imports layer {low}"
            elif low == high and group != other and high != 0:
                found[(source, target)] = f"across siblings {other} -> {group}"
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_the_circle_finder_sees_a_lazy_one() -> None:
    # a -> b at module level, b -> a inside a function: one circle.
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_every_module_has_a_layer() -> None:
    for module in sources():
        group_of(module)


def test_no_import_runs_back_up() -> None:
    found = violations(import_graph())
    new = {pair: why for pair, why in found.items() if pair not in ALLOWED}
    assert new == {}, "imports against the layers (see LAYERS at the top of this file):\n" + \
        "\n".join(f"  {source} -> {target}: {why}" for (source, target), why in sorted(new.items()))


def test_the_allowed_list_only_shrinks() -> None:
    gone = sorted(set(ALLOWED) - set(violations(import_graph())))
    if gone:  # a warning, not a failure: the fix's author may not own this file
        warnings.warn(f"fixed, so take them out of ALLOWED: {gone}", stacklevel=1)
