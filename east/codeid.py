"""Code identity for cache keys: a stage's artifact depends on the code that builds it, not
only on its config. Each stage's key carries a digest of its modules' syntax trees (comments,
docstrings and formatting never change it; code does) and the versions of the libraries that
compute it; the build stage also carries a digest of the mapping function it weights with, so
a mapping of your own whose body you edit is rebuilt, not reused.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import textwrap
from collections.abc import Callable, Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version

#: Per stage: the modules whose code shapes its artifact, and the libraries whose versions do.
_GENERATE = ("east.stages.generate", "east.sampling", "east.sampling_vllm")
_GRADE = ("east.grading.extract", "east.grading.equivalence", "east.grading.grade")
STAGE_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "base_model": (
        ("east.stages.base_model", "east.models", "east.data.arith", "east.prompts", "east.training"),
        ("torch", "transformers", "trl", "tokenizers"),
    ),
    "sample": (_GENERATE, ("torch", "transformers")),
    "grade": ((*_GRADE, "east.grading.pool"), ("math-verify", "latex2sympy2_extended", "sympy")),
    "build": (("east.stages.build", "east.selection", "east.weighting"), ("numpy",)),
    "train": (
        ("east.stages.train", "east.stages.sharding_cpu", "east.training", "east.models"),
        ("torch", "transformers", "trl", "accelerate"),
    ),
    "evaluate": ((*_GENERATE, *_GRADE), ("torch", "transformers", "math-verify", "sympy")),
    "evaluate_sampled": (
        (*_GENERATE, *_GRADE, "east.metrics"),
        ("torch", "transformers", "math-verify", "sympy"),
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
def stage_code(stage: str, libraries: tuple[str, ...] = ()) -> dict[str, str]:
    """What of the code shapes ``stage``'s artifact: its modules' digest and its libraries'
    versions, with ``libraries`` (a sampler backend's package) added (part of the key)."""
    modules, own = STAGE_CODE[stage]
    return {"modules": modules_digest(modules), **{lib: _version(lib) for lib in (*own, *libraries)}}


def function_digest(fn: Callable) -> str:
    """The digest of a function's own source (a mapping registered outside the package)."""
    try:
        return source_digest(inspect.getsource(fn))
    except (OSError, TypeError):  # defined where no source is kept (a REPL): by name only
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
