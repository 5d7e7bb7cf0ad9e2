"""Every Python snippet in the docs runs as written, and every docstring example passes as a doctest."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SNIPPETS = [
    (page, index, code)
    for page in PAGES
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S))
]
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in (ROOT / "unicl").rglob("*.py")
    if path.name != "__init__.py" or path.parent == ROOT / "unicl"
)


@pytest.mark.parametrize(
    ("page", "index", "code"), SNIPPETS, ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in SNIPPETS]
)
def test_docs_snippet_runs(page, index, code):
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__docs__"})


def test_docs_have_snippets():
    assert len(SNIPPETS) >= 8


@pytest.mark.parametrize("module_name", [m.removesuffix(".__init__") for m in MODULES])
def test_docstring_examples(module_name):
    if module_name.endswith("compile_report"):
        pytest.skip("needs the compiler, not the interpreter; exercised by tests/kernels")
    module = importlib.import_module(module_name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
