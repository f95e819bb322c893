"""Code identity for cache keys: a stage's artifact depends on the code that builds it, not
only on its config. Each stage's key carries a digest of the code it runs — its syntax trees
without docstrings, so comments, docstrings and formatting never change it while code does —
and the versions of the libraries that compute it.

The code a stage runs is derived, not listed by hand (:func:`stage_modules`):

- in the driver (``east.stages.driver``, and the modules of the classes ``Stages`` is built
  from and of the helpers they share: ``DRIVER_MODULES``), the definitions its ``Stages``
  method reaches through the names it uses (helpers, other methods, module constants), each
  digested alone, so that editing one stage's body does not rebuild another's;
- every module those definitions import, and everything they import in turn, that is this
  project's code or the user's (``east.*``, and modules that are not installed packages or
  the standard library), whole: any import statement counts, including one inside a
  function, so a module a stage may run is in its key;
- the run's own extensions: the sampler backend's class module for the generating stages, and
  the mapping function's module for the build stage (a helper it calls, a constant it reads,
  a user module it imports: all in the key).

The package: :mod:`east.codeid.sources` reads own code, :mod:`east.codeid.driver` the
driver's definitions; here, what a stage's key holds.

``tests/integration/test_stage_code.py`` proves the derivation covers what runs: it traces
every function each stage calls and checks that its module (and, in the driver, its
definition) is in that stage's digest.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from east.codeid import driver, sources
from east.codeid.driver import DRIVER, DRIVER_MODULES, driver_definitions
from east.codeid.sources import closure, is_own, modules_digest, read_source, source_digest

__all__ = [
    "DRIVER",
    "DRIVER_MODULES",
    "STAGES",
    "StageCode",
    "closure",
    "defining_module",
    "function_digest",
    "is_own",
    "modules_digest",
    "own_modules",
    "read_source",
    "source_digest",
    "stage_code",
    "stage_modules",
]


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
        h.update(f"{name}:{driver.digest(name)};".encode())
    h.update(modules_digest(own).encode())
    return {"modules": h.hexdigest()[:16], **{lib: _version(lib) for lib in (*spec.libraries, *libraries)}}


def stage_modules(stage: str, modules: tuple[str, ...] = ()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the driver definitions, the own modules) whose code is in ``stage``'s key."""
    spec = STAGES[stage]
    defs, roots = driver_definitions(spec.method)
    return defs, closure((*roots, *spec.workers, *modules))


def function_digest(fn: Callable) -> str:
    """The digest of a function's own source (a mapping registered outside the package)."""
    try:
        return source_digest(inspect.getsource(fn))
    except (OSError, TypeError):  # defined where no source is kept (a REPL): by name only
        return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"


def own_modules(modules: Iterable[str]) -> tuple[str, ...]:
    """Those of ``modules`` that are own code, for :func:`stage_code` (never ``__main__``: a
    REPL's or a script's code has no module to read; never an installed package)."""
    return tuple(m for m in modules if m and m != "__main__" and is_own(m))


def defining_module(obj: object) -> tuple[str, ...]:
    """The module that defines ``obj`` (a mapping function, a sampler backend's class) when it
    is own code; empty otherwise (a REPL, an installed package)."""
    return own_modules([getattr(obj, "__module__", None) or ""])


def clear_caches() -> None:
    """Forget every digest and derivation (after an edit in a running process: tests)."""
    stage_code.cache_clear()
    driver.clear_caches()
    sources.clear_caches()
