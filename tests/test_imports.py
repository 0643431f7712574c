"""Every import written in the package resolves, including those inside functions (run only when a
command needs them): a module moved or renamed without its importers shows up here, not in a
user's run."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("src_models", "napari_diffinfinite")
OPTIONAL = {"distributed", "diffusers", "openslide"}  # extras a user may not have installed


def _imports():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            if path.name == "__init__.py":
                module = module.rsplit(".", 1)[0]
            base = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]  # what "." means there
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = base.split(".")
                        target = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                    else:
                        target = node.module
                    if target.split(".")[0] in PACKAGES:
                        yield module, target, [a.name for a in node.names]
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.name.split(".")[0] in PACKAGES:
                            yield module, a.name, []


def test_every_import_of_the_package_resolves():
    broken = []
    for where, target, names in _imports():
        try:
            mod = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                continue
            broken.append(f"{where}: {target} ({e})")
            continue
        for name in names:
            if name != "*" and not hasattr(mod, name):
                try:
                    importlib.import_module(f"{target}.{name}")  # a submodule
                except ModuleNotFoundError:
                    broken.append(f"{where}: {name} from {target}")
    assert not broken, "\n".join(broken)


def _module_graph() -> dict[str, set[str]]:
    """Which package module imports which (anywhere in it, inside functions too)."""
    known = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            known.add(name[: -len(".__init__")] if name.endswith(".__init__") else name)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for where, target, names in _imports():
        for name in names or [None]:
            sub = f"{target}.{name}" if name else None
            dest = sub if sub in known else target
            if dest in known and dest != where:
                graph[where].add(dest)
    return graph


def test_the_package_modules_import_each_other_in_no_circle():
    graph = _module_graph()
    seen, stack, on_stack, circles = {}, [], set(), []

    def visit(m):  # Tarjan's strongly connected components
        seen[m] = low = len(seen)
        stack.append(m)
        on_stack.add(m)
        lows = [low]
        for n in graph[m]:
            if n not in seen:
                lows.append(visit(n))
            elif n in on_stack:
                lows.append(seen[n])
        low = min(lows)
        if low == seen[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                circles.append(sorted(component))
        return low

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    assert not circles, circles
