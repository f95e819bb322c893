"""Reading this project's and the user's code without importing it: a module's source and
its digest (syntax tree without docstrings), which modules are own code, and every own
module reachable from some roots through import statements (east.codeid's derivation)."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path


def strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0] if node.body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def source_digest(source: str) -> str:
    """The digest of Python source: its syntax tree without docstrings (so comments, docstrings
    and layout never change it)."""
    tree = strip_docstrings(ast.parse(textwrap.dedent(source)))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()[:16]


def read_source(module: str) -> str | None:
    """A module's source, found without importing it (None when it is not installed)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return f.read()


def modules_digest(modules: Iterable[str], reader: Callable[[str], str | None] | None = None) -> str:
    reader = reader or read_source
    h = hashlib.sha256()
    for name in modules:
        source = reader(name)
        h.update(f"{name}:{source_digest(source) if source is not None else '-'};".encode())
    return h.hexdigest()[:16]


@cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))}
    return tuple(str(Path(r).resolve()) + "/" for r in roots if r)


def module_origin(module: str) -> str | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin


def is_own(module: str) -> bool:
    """Whether ``module`` is this project's or the user's code (its code goes into keys):
    ``east.*``, or Python source that is neither the standard library nor an installed
    package (a module of yours next to run.py, or on PYTHONPATH)."""
    if module == "east" or module.startswith("east."):
        return module_origin(module) is not None
    origin = module_origin(module)
    return origin is not None and not str(Path(origin).resolve()).startswith(_installed_roots())


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """The modules named by every import statement in ``tree`` (``from p import m`` names
    ``p.m`` when that is a module), relative imports resolved against ``package``."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            if not base:
                continue
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
    return out


@cache
def _own_imports(module: str, digest: str) -> frozenset[str]:
    source = read_source(module) or ""
    origin = module_origin(module) or ""
    package = module if origin.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for name in imported_modules(ast.parse(source), package):
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
            prefix = ".".join(parts[:i])
            if is_own(prefix):
                found.add(prefix)
    return frozenset(found)


def closure(roots: Iterable[str]) -> tuple[str, ...]:
    """Every own module reachable from ``roots`` through import statements (the roots' parent
    packages included), sorted."""
    seen: set[str] = set()
    todo = []
    for root in roots:
        parts = root.split(".")
        todo += [".".join(parts[: i + 1]) for i in range(len(parts))]
    while todo:
        module = todo.pop()
        if module in seen or not is_own(module):
            continue
        seen.add(module)
        source = read_source(module)
        if source is None:
            continue
        todo += sorted(_own_imports(module, source_digest(source)) - seen)
    return tuple(sorted(seen))


def clear_caches() -> None:
    _own_imports.cache_clear()
