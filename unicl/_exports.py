"""Package namespaces that import their public names on first use (PEP 562).

A package's ``__init__`` runs whenever any of its modules is imported, so an ``__init__`` that imported its modules
would load torch for the commands' torch-free modules (their parsers and names) before ``--help`` could answer. The
packages whose torch-free modules the commands read (`unicl`, `unicl.loss`, `unicl.text`, `unicl.evaluation`,
`unicl.training`), and `unicl.data`, whose datasets need no timm, declare instead where each public name lives, and this
module resolves it when it is first used. It imports nothing of unicl, so every layer may use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(
    package: str, names: Mapping[str, str], subpackages: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's name (``__name__`` in its ``__init__``).
        names: each public name and the module that defines it.
        subpackages: submodules reachable as attributes after a plain ``import package``.

    Returns:
        ``(__getattr__, __dir__)``: the first looks a name up in its module (or, for a name that is one of the
        package's modules, imports that module, as ``import package.name`` would), and stores it in the package's
        namespace, so later lookups do not come back; the second lists the names with those already there.

    Examples:
        >>> from unicl._exports import lazy_exports
        >>> getattr_, dir_ = lazy_exports("json", {"JSONDecoder": "json.decoder"})
        >>> getattr_("JSONDecoder").__name__
        'JSONDecoder'
    """
    known = dict(names)
    attributes = tuple(subpackages)

    def __getattr__(name: str) -> Any:
        if name in known:
            value = getattr(importlib.import_module(known[name]), name)
        elif name in attributes or (not name.startswith("__") and _has_submodule(package, name)):
            value = importlib.import_module(f"{package}.{name}")
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *known, *attributes})

    return __getattr__, __dir__


def _has_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (found on the package's path; nothing is imported)."""
    return importlib.util.find_spec(f"{package}.{name}") is not None
