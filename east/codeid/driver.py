"""The driver's definitions that a stage reaches (east.codeid): ``Stages`` and the classes it
is built from are read from their modules' syntax trees, method by method, and each name a
definition uses is followed to another definition or to the module it imports."""

from __future__ import annotations

import ast
import copy
import hashlib
from functools import cache

from east.codeid import sources
from east.codeid.sources import imported_modules, is_own, module_origin, strip_docstrings

#: The module whose ``Stages`` class holds every stage's driver side.
DRIVER = "east.stages.driver"
#: The driver's modules: ``Stages``, the classes it is built from, and the helpers they share.
#: Their definitions are digested one by one (a stage's key holds those it reaches), never
#: whole; ``tests/unit/test_structure.py`` checks the list against the package.
DRIVER_MODULES = (
    DRIVER,
    "east.stages.driver_generate",
    "east.stages.driver_train",
    "east.stages.driver_common",
)
#: The run's config schema (see :func:`driver_definitions`).
CONFIG = "east.config"


class _Names(ast.NodeVisitor):
    """The names a definition uses (``x``, and ``self.x``), and apart, the names in its
    annotations: never evaluated (``from __future__ import annotations``), but the types of
    the objects whose methods it calls (``problems: list[Problem]``, then ``p.to_dict()``)."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.attributes: set[str] = set()
        self.annotations: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        self.names.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            self.attributes.add(node.attr)
        self.generic_visit(node)

    def _annotation(self, node: ast.AST | None) -> None:
        if node is not None:
            self.annotations |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}

    def visit_arg(self, node: ast.arg) -> None:
        self._annotation(node.annotation)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._annotation(node.annotation)
        self.visit(node.target)
        if node.value is not None:
            self.visit(node.value)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._annotation(node.returns)
        for item in (*node.decorator_list, *node.args.defaults, *node.args.kw_defaults):
            if item is not None:
                self.visit(item)
        self.visit(node.args)
        for item in node.body:
            self.visit(item)

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function


@cache
def _parsed_driver(module: str) -> ast.Module:
    return ast.parse(sources.read_source(module) or "")


@cache
def _driver_defs() -> dict[str, tuple[ast.AST, str]]:
    """Every driver definition by ``module:name`` (``module:Class.method`` for the methods of
    ``Stages`` and of the classes it is built from; module functions, other classes and
    assigned names whole), each with its digest."""
    parts = set(_stages_classes())
    defs: dict[str, ast.AST] = {}
    for module in DRIVER_MODULES:
        for node in _parsed_driver(module).body:
            if isinstance(node, ast.ClassDef) and (module, node.name) in parts:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        defs[f"{module}:{node.name}.{item.name}"] = item
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defs[f"{module}:{node.name}"] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        defs[f"{module}:{t.id}"] = node
    out = {}
    for name, node in defs.items():
        stripped = strip_docstrings(copy.deepcopy(node))
        out[name] = (
            node,
            hashlib.sha256(ast.dump(stripped, annotate_fields=False).encode()).hexdigest()[:16],
        )
    return out


@cache
def _driver_imports(module: str) -> dict[str, tuple[str, str | None]]:
    """A driver module's module-level imported names -> (the module each comes from or is,
    the name imported from it: None for a module)."""
    out: dict[str, tuple[str, str | None]] = {}
    for node in _parsed_driver(module).body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:  # import numpy as np: np is numpy
                    out[a.asname] = (a.name, None)
                else:  # import hydra.utils: the name bound is hydra
                    out[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out[a.asname or a.name] = (full, None) if module_origin(full) else (node.module, a.name)
    return out


@cache
def _stages_classes() -> tuple[tuple[str, str], ...]:
    """``Stages`` and the classes it is built from, as (module, class) in method resolution
    order (left to right, depth first: the driver's classes are simple mixins), each found
    by reading its module's imports; every one must lie in :data:`DRIVER_MODULES`."""
    order: list[tuple[str, str]] = []

    def visit(module: str, name: str) -> None:
        if (module, name) in order:
            return
        node = next(
            (n for n in _parsed_driver(module).body if isinstance(n, ast.ClassDef) and n.name == name), None
        )
        if node is None:
            raise LookupError(f"east.codeid: class {name} not found in {module}")
        order.append((module, name))
        for base in node.bases:
            if not isinstance(base, ast.Name):
                continue
            where, attr = _driver_imports(module).get(base.id, (module, base.id))
            if where in DRIVER_MODULES and attr is not None:
                visit(where, attr)
            elif where == module:
                visit(module, base.id)
            elif is_own(where):
                raise LookupError(
                    f"east.codeid: Stages is built from {base.id} of {where}, which is not in DRIVER_MODULES"
                )

    visit(DRIVER, "Stages")
    return tuple(order)


@cache
def _stages_methods() -> dict[str, str]:
    """``self.<name>`` in a ``Stages`` method -> the definition it runs (the first class in
    the method resolution order that defines it)."""
    defs = _driver_defs()
    out: dict[str, str] = {}
    for module, cls in _stages_classes():
        prefix = f"{module}:{cls}."
        for name in defs:
            if name.startswith(prefix):
                out.setdefault(name[len(prefix) :], name)
    return out


def _resolve(module: str, name: str) -> tuple[str | None, str | None]:
    """A name a driver definition in ``module`` uses -> (the driver definition, or the
    module it imports); (None, None) for a local name or a builtin."""
    defs = _driver_defs()
    if f"{module}:{name}" in defs:
        return f"{module}:{name}", None
    if name not in _driver_imports(module):
        return None, None
    where, attr = _driver_imports(module)[name]
    if where in DRIVER_MODULES and attr is not None and f"{where}:{attr}" in defs:
        return f"{where}:{attr}", None  # a helper of another driver module: that definition only
    return None, where


@cache
def driver_definitions(method: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the driver definitions ``Stages.<method>`` reaches, the modules they import): from the
    method and ``Stages.__init__`` (which every stage runs), following the names each uses."""
    defs, methods = _driver_defs(), _stages_methods()
    seen: set[str] = set()
    modules: set[str] = {DRIVER.rpartition(".")[0]}
    todo = [methods[method], methods["__init__"]]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        module = name.partition(":")[0]
        node = defs[name][0]
        visitor = _Names()
        visitor.visit(node)
        for n in visitor.names:
            definition, imported = _resolve(module, n)
            if definition is not None:
                todo.append(definition)
            elif imported is not None:
                modules.add(imported)
        # The types of the objects a definition is handed, for the methods it calls on them;
        # not the run's config (east.config: values, checked before any stage and keyed as
        # values, whose module imports the trainers).
        for n in visitor.annotations:
            _, imported = _resolve(module, n)
            if imported is not None and not imported.startswith(CONFIG):
                modules.add(imported)
        todo += [methods[a] for a in visitor.attributes if a in methods]
        modules |= imported_modules(node, module.rpartition(".")[0])
    # (A driver module reached otherwise than through a definition, by a function's own import
    # statement, joins whole: more than strictly needed, never less.)
    return tuple(sorted(seen)), tuple(sorted(m for m in modules if is_own(m)))


def digest(definition: str) -> str:
    """The digest of one driver definition (``module:name``)."""
    return _driver_defs()[definition][1]


def clear_caches() -> None:
    for f in (
        _parsed_driver,
        _driver_defs,
        _driver_imports,
        _stages_classes,
        _stages_methods,
        driver_definitions,
    ):
        f.cache_clear()
