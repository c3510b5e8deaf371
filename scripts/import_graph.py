#!/usr/bin/env python3
"""Measure the structure of the initsearch package: its imports, layering and largest code.

Kept in the repository to compare the before and after of a refactoring. Everything is found
by static analysis of ``initsearch/**/*.py``; the package is never imported. It reports:

* the import graph among ``initsearch`` modules. Each import is *eager* (runs when its module
  is imported), *lazy* (inside a function), *type-only* (under ``if TYPE_CHECKING:``) or an
  *export* (inside a package ``__init__``'s module-level ``__getattr__``: the lazy public API);
* cycles: the strongly connected components of the eager graph, and of the eager+lazy graph;
* upward imports: a module importing one of a strictly higher layer of the pipeline (LAYERS);
* the modules that eagerly import a heavy third-party library, and which of these libraries
  importing a few light modules loads (Ray workers, for one, should not load Optuna);
* the largest functions and classes, by lines and by parameters.

Run ``python scripts/import_graph.py`` for a plain-text report, with ``--json`` for the facts.
"""
from __future__ import annotations

import argparse
import ast
import json
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = "initsearch"
# The pipeline, lower layers first; a package stands for all its submodules. `record` is a
# planned study-record vocabulary module. The package root (the public facade) and any
# module not listed here count as the top layer.
LAYERS: list[tuple[str, ...]] = [
    ("errors",), ("layers",), ("schema",), ("stats",), ("data",), ("archs",), ("roles",),
    ("schemes",), ("recipe",), ("space",), ("protocol", "settings"), ("trial",), ("record",),
    ("tracking",), ("cache",), ("storage",), ("engine",), ("race",), ("confirm",),
    ("recommend",), ("report",), ("plan",), ("costs",), ("study",), ("claims",), ("cli",)]
KINDS = ("eager", "lazy", "type-only", "export")
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}
HEAVY = ("optuna", "mlflow", "ray", "matplotlib", "pandas", "scipy")
LIGHT = ("initsearch.trial", "initsearch.protocol", "initsearch.roles", "initsearch.engine.ray_backend")
TYPE_CHECKING = ("TYPE_CHECKING", "typing.TYPE_CHECKING")
TOP = 5


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # an initsearch module, or the top-level name of a third-party package
    line: int
    kind: str  # one of KINDS


@dataclass(frozen=True)
class Unit:
    name: str  # module:qualname
    lines: int
    params: int = 0


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def layer(module: str) -> int:
    key = module.split(".")[1] if "." in module else ""
    return LAYER_OF.get(key, len(LAYERS))


def imports_of(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> list[Import]:
    """Every import in a module; an internal one names the most specific module it loads."""
    found: list[Import] = []

    def add(name: str, line: int, kind: str) -> None:
        if not is_internal(name):
            found.append(Import(module, name.split(".")[0], line, kind))
            return
        while name not in modules and "." in name:  # `import a.b.name`: name is not a module
            name = name.rsplit(".", 1)[0]
        found.append(Import(module, name, line, kind))

    def visit(node: ast.AST, kind: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, kind)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if is_package else module.rsplit(".", 1)[0]
                package = package.rsplit(".", node.level - 1)[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:  # `from pkg import sub` loads the submodule pkg.sub
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, node.lineno, kind)
        elif isinstance(node, ast.If) and ast.unparse(node.test) in TYPE_CHECKING:
            for child in node.body:
                visit(child, "type-only")
            for child in node.orelse:
                visit(child, kind)
        else:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and kind == "eager":
                kind = "lazy"
            for child in ast.iter_child_nodes(node):
                visit(child, kind)

    for node in tree.body:  # a package's `__getattr__` imports on attribute access: an export
        export = is_package and isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
        for child in ast.iter_child_nodes(node) if export else [node]:
            visit(child, "export" if export else "eager")
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def count_params(args: ast.arguments) -> int:
    positional = [a.arg for a in args.posonlyargs + args.args]
    if positional[:1] in (["self"], ["cls"]):
        positional = positional[1:]
    starred = [a for a in (args.vararg, args.kwarg) if a is not None]
    return len(positional) + len(args.kwonlyargs) + len(starred)


def units_of(tree: ast.Module, module: str) -> tuple[list[Unit], list[Unit]]:
    """The functions (methods and nested ones included) and classes of a module."""
    functions: list[Unit] = []
    classes: list[Unit] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname, lines = prefix + child.name, child.end_lineno - child.lineno + 1
                if isinstance(child, ast.ClassDef):
                    classes.append(Unit(f"{module}:{qualname}", lines))
                else:
                    functions.append(Unit(f"{module}:{qualname}", lines, count_params(child.args)))
                visit(child, qualname + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return functions, classes


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for other in graph.get(todo.pop(), set()) - seen:
            seen.add(other)
            todo.append(other)
    return seen


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module."""
    reach = {node: reachable(graph, node) for node in graph}
    found = {tuple(sorted(m for m in reach[node] if node in reach.get(m, set()))) for node in graph}
    return sorted(list(component) for component in found if len(component) > 1)


def heavy_reach(start: str, eager: dict[str, set[str]],
                heavy: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each heavy library that importing `start` loads, with the shortest chain of modules to it.
    Importing ``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py``, so those count."""
    parent: dict[str, str | None] = {start: None}
    queue = [start]
    for module in queue:
        parts = module.split(".")
        packages = [".".join(parts[:i]) for i in range(1, len(parts))]
        for other in packages + sorted(eager.get(module, ())):
            if other not in parent:
                parent[other] = module
                queue.append(other)
    reached: dict[str, list[str]] = {}
    for module in queue:  # breadth-first: the first chain found is a shortest one
        for lib in sorted(heavy.get(module, set()) - reached.keys()):
            chain = [module]
            while (up := parent[chain[-1]]) is not None:
                chain.append(up)
            reached[lib] = chain[::-1]
    return reached


def largest(units: list[Unit], key: str) -> list[dict]:
    return [asdict(u) for u in sorted(units, key=lambda u: -getattr(u, key))[:TOP]]


def measure(root: Path) -> dict:
    files = sorted((root / PACKAGE).rglob("*.py"))
    modules = {module_name(path, root) for path in files}
    imports: list[Import] = []
    functions: list[Unit] = []
    classes: list[Unit] = []
    for path in files:
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        imports += imports_of(tree, module, path.name == "__init__.py", modules)
        module_functions, module_classes = units_of(tree, module)
        functions += module_functions
        classes += module_classes
    internal = [i for i in imports if is_internal(i.target) and i.target != i.importer]

    def graph(kinds: tuple[str, ...]) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {}
        for i in internal:
            if i.kind in kinds:
                edges.setdefault(i.importer, set()).add(i.target)
        return edges

    def cycles(kinds: tuple[str, ...]) -> list[dict]:
        return [{"modules": component, "imports": [asdict(i) for i in internal if i.kind in kinds
                                                   and {i.importer, i.target} <= set(component)]}
                for component in components(graph(kinds))]

    heavy: dict[str, set[str]] = {}
    for i in imports:
        if i.kind == "eager" and i.target in HEAVY:
            heavy.setdefault(i.importer, set()).add(i.target)
    eager = graph(("eager",))
    return {
        "modules": len(modules),
        "imports": {kind: sum(i.kind == kind for i in internal) for kind in KINDS},
        "cycles_eager": cycles(("eager",)),
        "cycles_eager_lazy": cycles(("eager", "lazy")),
        "upward": [asdict(i) for i in internal
                   if i.kind != "export" and layer(i.target) > layer(i.importer)],
        "package_lazy_exports": [asdict(i) for i in internal if i.kind == "export"],
        "unplaced": sorted(m for m in modules if m != PACKAGE and layer(m) == len(LAYERS)),
        "heavy_eager": {lib: sorted(m for m, libs in heavy.items() if lib in libs)
                        for lib in HEAVY},
        "heavy_reached": {start: heavy_reach(start, eager, heavy)
                          for start in LIGHT if start in modules},
        "functions_by_lines": largest(functions, "lines"),
        "functions_by_params": largest(functions, "params"),
        "classes_by_lines": largest(classes, "lines"),
    }


def summary(facts: dict) -> str:
    function, cls = facts["functions_by_lines"][0], facts["classes_by_lines"][0]
    cycles, lazy_cycles = len(facts["cycles_eager"]), len(facts["cycles_eager_lazy"])
    return (f"cycles={cycles} cycles_with_lazy={lazy_cycles} upward={len(facts['upward'])} "
            f"largest_function={function['name']} "
            f"({function['lines']} lines, {function['params']} params) "
            f"largest_class={cls['name']} ({cls['lines']} lines)")


def report(facts: dict) -> str:
    def imp(i: dict) -> str:
        return f"    {i['importer']} -> {i['target']}  ({i['kind']}, line {i['line']})"

    counts = ", ".join(f"{n} {kind}" for kind, n in facts["imports"].items())
    out = [f"{PACKAGE}: {facts['modules']} modules; internal imports: {counts}"]
    for key, title in (("cycles_eager", "eager"), ("cycles_eager_lazy", "eager+lazy")):
        out += ["", f"Cycles of {title} imports: {len(facts[key])}"]
        for cycle in facts[key]:
            out += ["  " + ", ".join(cycle["modules"])] + [imp(i) for i in cycle["imports"]]
    out += ["", f"Upward imports: {len(facts['upward'])}"] + [imp(i) for i in facts["upward"]]
    exports = facts["package_lazy_exports"]
    out += ["", f"Package lazy exports: {len(exports)}"] + [imp(i) for i in exports]
    out += ["", "Unplaced modules (treated as top): " + (", ".join(facts["unplaced"]) or "none")]
    out += ["", "Heavy libraries imported eagerly:"]
    out += [f"  {lib}: {', '.join(mods) or '-'}" for lib, mods in facts["heavy_eager"].items()]
    out += ["", "Heavy libraries loaded by importing a module (through eager imports):"]
    for start, reached in facts["heavy_reached"].items():
        out += [f"  {start}:" + ("" if reached else " none")]
        out += [f"    {lib}: {' -> '.join(chain)}" for lib, chain in reached.items()]
    for key, title, column in (("functions_by_lines", "Largest functions by lines", "lines"),
                               ("functions_by_params", "Largest functions by parameters", "params"),
                               ("classes_by_lines", "Largest classes by lines", "lines")):
        out += ["", f"{title}:"] + [f"  {u[column]:5d}  {u['name']}" for u in facts[key]]
    return "\n".join(out + ["", summary(facts)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the repository root, which holds the initsearch package")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args()
    facts = measure(args.root)
    print(json.dumps(facts, indent=2) if args.json else report(facts))


if __name__ == "__main__":
    main()
