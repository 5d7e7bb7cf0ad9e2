"""Package namespaces that import their public names on first use (PEP 562).

A package's ``__init__`` runs whenever any of its modules is imported, so an ``__init__`` that imported its modules
would load torch for the commands' torch-free modules (their parsers and names) before ``--help`` could answer. The
packages whose torch-free modules the commands read (`unicl`, `unicl.loss`, `unicl.text`, `unicl.evaluation`,
`unicl.training`), and `unicl.data`, whose datasets need no timm, declare instead where each public name lives, and this
module resolves it when it is first used. It imports nothing of unicl, so every layer may use it.

A package declares its table once, module by module, and takes its ``__getattr__``, ``__dir__`` and ``__all__`` from
`lazy_package`. Its ``if TYPE_CHECKING:`` block imports each name again, as ``from module import name as name``,
for the type checkers and the import-layer check, which read imports, not tables (the ``name as name`` form marks a
re-export for checkers that cannot read a computed ``__all__``); ``tests/test_layout.py`` checks that the two agree.
`lazy_exports` takes a table keyed by name, for a package that writes its ``__all__`` itself.
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


def lazy_package(
    package: str, modules: Mapping[str, Iterable[str]], subpackages: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """A package's module-level ``__getattr__``, ``__dir__`` and ``__all__``, from one table.

    Args:
        package: the package's name (``__name__`` in its ``__init__``).
        modules: each module of the package that defines public names, and those names.
        subpackages: submodules reachable as attributes after a plain ``import package``.

    Returns:
        ``(__getattr__, __dir__, __all__)``: the first two as `lazy_exports` makes them; ``__all__`` the table's
        names, sorted.

    Raises:
        ValueError: if a name stands under two modules.

    Examples:
        >>> from unicl._exports import lazy_package
        >>> getattr_, dir_, all_ = lazy_package("json", {"json.decoder": ["JSONDecodeError", "JSONDecoder"]})
        >>> all_
        ['JSONDecodeError', 'JSONDecoder']
    """
    names: dict[str, str] = {}
    for module, defined in modules.items():
        for name in defined:
            if name in names:
                raise ValueError(f"{package}: {name!r} is declared in both {names[name]} and {module}")
            names[name] = module
    return (*lazy_exports(package, names, subpackages), sorted(names))


def _has_submodule(package: str, name: str) -> bool:
    """Whether ``package.name`` is a module (found on the package's path; nothing is imported)."""
    return importlib.util.find_spec(f"{package}.{name}") is not None
