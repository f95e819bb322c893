"""Code identity for cache keys: a stage's artifact depends on the code that builds it, not
only on its config. Each stage's key carries a digest of the code it runs — its syntax trees
without docstrings, so comments, docstrings and formatting never change it while code does —
and the versions of the libraries that compute it.

The code a stage runs is derived, not listed by hand (:func:`stage_modules`):

- in the driver (``east.stages.driver``), the definitions its ``Stages`` method reaches
  through the names it uses (helpers, other methods, module constants), each digested alone,
  so that editing one stage's body does not rebuild another's;
- every module those definitions import, and everything they import in turn, that is this
  project's code or the user's (``east.*``, and modules that are not installed packages or
  the standard library), whole: any import statement counts, including one inside a
  function, so a module a stage may run is in its key;
- the run's own extensions: the sampler backend's class module for the generating stages, and
  the mapping function's module for the build stage (a helper it calls, a constant it reads,
  a user module it imports: all in the key).

``tests/integration/test_stage_code.py`` proves the derivation covers what runs: it traces
every function each stage calls and checks that its module (and, in the driver, its
definition) is in that stage's digest.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import importlib.util
import inspect
import sys
import sysconfig
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

#: The module whose ``Stages`` class holds every stage's driver side.
DRIVER = "east.stages.driver"
#: The run's config schema (see :func:`driver_definitions`).
CONFIG = "east.config"


@dataclass(frozen=True)
class StageCode:
    """Where a stage's code starts: its ``Stages`` method in the driver, the worker modules it
    hands work to by name (a child process runs ``python -m <worker>``), and the libraries
    whose versions shape its artifact."""

    method: str
    workers: tuple[str, ...] = ()
    libraries: tuple[str, ...] = ()


_GRADING = ("math-verify", "latex2sympy2_extended", "sympy")
STAGES: dict[str, StageCode] = {
    "base_model": StageCode(
        "base_model", ("east.stages.base_model",), ("torch", "transformers", "trl", "tokenizers")
    ),
    "sample": StageCode("sample", ("east.stages.generate",), ("torch", "transformers")),
    "grade": StageCode("grade", (), _GRADING),
    "build": StageCode("build", ("east.stages.build",), ("numpy",)),
    "train": StageCode("train", ("east.stages.train",), ("torch", "transformers", "trl", "accelerate")),
    "evaluate": StageCode("evaluate", ("east.stages.generate",), ("torch", "transformers", *_GRADING)),
    "evaluate_sampled": StageCode(
        "evaluate_sampled", ("east.stages.generate",), ("torch", "transformers", *_GRADING, "numpy")
    ),
}


def _strip_docstrings(tree: ast.AST) -> ast.AST:
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
    tree = _strip_docstrings(ast.parse(textwrap.dedent(source)))
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


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


@cache
def stage_code(stage: str, modules: tuple[str, ...] = (), libraries: tuple[str, ...] = ()) -> dict[str, str]:
    """What of the code shapes ``stage``'s artifact (part of its key): the digest of its driver
    definitions and of every own module it may run (:func:`stage_modules`), with ``modules``
    (the run's sampler backend or mapping module) as further roots, and the versions of its
    libraries and of ``libraries`` (a backend's package)."""
    spec = STAGES[stage]
    defs, roots = driver_definitions(spec.method)
    own = closure((*roots, *spec.workers, *modules))
    h = hashlib.sha256()
    for name in defs:
        h.update(f"{DRIVER}:{name}:{_driver_defs()[name][1]};".encode())
    h.update(modules_digest(own).encode())
    return {"modules": h.hexdigest()[:16], **{lib: _version(lib) for lib in (*spec.libraries, *libraries)}}


def stage_modules(stage: str, modules: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the driver definitions, the own modules) whose code is in ``stage``'s key."""
    spec = STAGES[stage]
    defs, roots = driver_definitions(spec.method)
    return defs, closure((*roots, *spec.workers, *modules))


# ---------------------------------------------------------------------- own modules


@cache
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots |= {p for p in sys.path if p.rstrip("/").endswith(("site-packages", "dist-packages"))}
    return tuple(str(Path(r).resolve()) + "/" for r in roots if r)


def _origin(module: str) -> str | None:
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
        return _origin(module) is not None
    origin = _origin(module)
    return origin is not None and not str(Path(origin).resolve()).startswith(_installed_roots())


def _imported(tree: ast.AST, package: str) -> set[str]:
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
    origin = _origin(module) or ""
    package = module if origin.endswith("__init__.py") else module.rpartition(".")[0]
    found: set[str] = set()
    for name in _imported(ast.parse(source), package):
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


# ---------------------------------------------------------------------- the driver


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
def _driver_source() -> str:
    return read_source(DRIVER) or ""


@cache
def _driver_defs() -> dict[str, tuple[ast.AST, str]]:
    """The driver's definitions by name (``Stages.x`` for the class's methods; module
    functions, classes and assigned names), each with its digest."""
    tree = ast.parse(_driver_source())
    defs: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Stages":
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    defs[f"Stages.{item.name}"] = item
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    defs[t.id] = node
    out = {}
    for name, node in defs.items():
        stripped = _strip_docstrings(copy.deepcopy(node))
        out[name] = (
            node,
            hashlib.sha256(ast.dump(stripped, annotate_fields=False).encode()).hexdigest()[:16],
        )
    return out


@cache
def _driver_imports() -> dict[str, str]:
    """The driver's module-level imported names -> the module each comes from (or is)."""
    out: dict[str, str] = {}
    for node in ast.parse(_driver_source()).body:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:  # import numpy as np: np is numpy
                    out[a.asname] = a.name
                else:  # import hydra.utils: the name bound is hydra
                    out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out[a.asname or a.name] = full if _origin(full) else node.module
    return out


@cache
def driver_definitions(method: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the driver definitions ``Stages.<method>`` reaches, the modules they import): from the
    method and ``Stages.__init__`` (which every stage runs), following the names each uses."""
    defs, imports = _driver_defs(), _driver_imports()
    seen: set[str] = set()
    modules: set[str] = {DRIVER.rpartition(".")[0]}
    todo = [f"Stages.{method}", "Stages.__init__"]
    while todo:
        name = todo.pop()
        if name in seen or name not in defs:
            continue
        seen.add(name)
        node = defs[name][0]
        visitor = _Names()
        visitor.visit(node)
        for n in visitor.names:
            if n in defs:
                todo.append(n)
            elif n in imports:
                modules.add(imports[n])
        # The types of the objects a definition is handed, for the methods it calls on them;
        # not the run's config (east.config: values, checked before any stage and keyed as
        # values, whose module imports the trainers).
        modules |= {
            imports[n] for n in visitor.annotations if n in imports and not imports[n].startswith(CONFIG)
        }
        todo += [f"Stages.{a}" for a in visitor.attributes]
        modules |= _imported(node, DRIVER.rpartition(".")[0])
    return tuple(sorted(seen)), tuple(sorted(m for m in modules if is_own(m)))


def function_digest(fn: Callable) -> str:
    """The digest of a function's own source (a mapping registered outside the package)."""
    try:
        return source_digest(inspect.getsource(fn))
    except (OSError, TypeError):  # defined where no source is kept (a REPL): by name only
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def defining_module(obj: object) -> tuple[str, ...]:
    """The module that defines ``obj`` (a mapping function, a sampler backend's class) when it
    is own code, for :func:`stage_code`; empty otherwise (a REPL, an installed package)."""
    module = getattr(obj, "__module__", None)
    return (module,) if module and module != "__main__" and is_own(module) else ()


def clear_caches() -> None:
    """Forget every digest and derivation (after an edit in a running process: tests)."""
    for f in (stage_code, _driver_source, _driver_defs, _driver_imports, driver_definitions, _own_imports):
        f.cache_clear()
