"""The docs render and run: every Python snippet in the docs runs as written, every docstring example passes as a
doctest, and no docstring or page holds a raw reStructuredText role (mkdocstrings renders Markdown: `:func:`x``
would show as literal text on the API pages)."""

from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
SNIPPET = re.compile(r"```python\n(.*?)```", flags=re.S)
SNIPPETS = [(page, index, code) for page in PAGES for index, code in enumerate(SNIPPET.findall(page.read_text()))]
SOURCES = sorted((ROOT / "unicl").rglob("*.py"))
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for path in SOURCES
    if path.name != "__init__.py" or path.parent == ROOT / "unicl"
)

#: Sphinx's Python-domain roles and any explicit ``:py:...:`` role, followed by the backtick that opens the target
#: (in a source or a Markdown page) or by the ``<code>`` Markdown made of it (in a rendered page).
RAW_ROLE = re.compile(
    r"(?<![\w:])(?::py:[a-z]+|:(?:func|class|mod|meth|attr|data|exc|obj|const|any|ref|term)):(?=`|<code)"
)
#: A fence that opens a Python block, however it is spelled (```` ```python ````, ```` ``` py ````, with options).
PYTHON_FENCE = re.compile(r"^[ \t]*```[ \t]*(?:python|py|python3)\b", flags=re.M)


def raw_roles(text: str) -> list[str]:
    """``"line N: <line>"`` for every line of ``text`` that holds a raw reStructuredText role."""
    return [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), start=1)
        if RAW_ROLE.search(line)
    ]


def raw_roles_in_files(paths: list[Path]) -> dict[str, list[str]]:
    """The raw roles of each file that has any, by path."""
    found = {str(path): raw_roles(path.read_text(encoding="utf-8")) for path in paths}
    return {path: lines for path, lines in found.items() if lines}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "index", "code"), SNIPPETS, ids=[f"{p.relative_to(ROOT)}#{i}" for p, i, _ in SNIPPETS]
)
def test_docs_snippet_runs(page, index, code):
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__docs__"})


def test_docs_have_snippets():
    assert len(SNIPPETS) >= 8


@pytest.mark.parametrize("page", [*PAGES, README], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_python_block_is_collected(page):
    """A block the collector's pattern misses (```` ```py ````, a fence with options) would never run."""
    text = page.read_text()
    assert len(SNIPPET.findall(text)) == len(PYTHON_FENCE.findall(text)), (
        f"{page.relative_to(ROOT)}: open Python blocks with a bare ```python line"
    )


@pytest.mark.parametrize("module_name", [m.removesuffix(".__init__") for m in MODULES])
def test_docstring_examples(module_name):
    if module_name.endswith("compile_report"):
        pytest.skip("needs the compiler, not the interpreter; exercised by tests/kernels")
    module = importlib.import_module(module_name)
    failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0


def test_no_raw_roles_in_the_package_sources():
    """Every docstring (and comment) of `unicl`: the whole text of each module, so none is missed."""
    assert len(SOURCES) > 50
    assert raw_roles_in_files(SOURCES) == {}


def test_no_raw_roles_in_the_docs_pages():
    assert raw_roles_in_files([*PAGES, README]) == {}


@pytest.mark.parametrize(
    "line",
    [
        "See :func:`unicl_loss`.",
        "The :class:`~unicl.loss.module.UniCLLoss` module",
        "(:mod:`unicl.loss`)",
        "Raises :exc:`ValueError`.",
        ":meth:`Tokenizer.save`, :attr:`x`, :data:`BACKENDS`, :obj:`None`, :const:`PAIR_LABEL`",
        "An explicit :py:func:`unicl_loss` role.",
        ":py:class:`UniCLLoss`",
        "A doubled one, :func:``unicl_loss``.",
        "<p>See :func:<code>unicl_loss</code>.</p>",  # as it reaches a rendered page
    ],
)
def test_the_check_catches_a_role(line):
    assert raw_roles(f"first line\n{line}\n") == [f"line 2: {line}"]


@pytest.mark.parametrize(
    "line",
    [
        "See `unicl_loss` and [`UniCLLoss`][unicl.loss.module.UniCLLoss].",
        "x[:, 1:] and {'class': 1} and https://example.org:8080/a",
        "a dict {name: func} and the word class: `code`",  # a role needs its own leading colon
        "labels:`y`",  # not one of the roles
    ],
)
def test_the_check_passes_code_spans_and_colons(line):
    assert raw_roles(line) == []


def test_the_check_catches_a_role_written_into_a_copy_of_a_module(tmp_path):
    original = ROOT / "unicl" / "loss" / "module.py"
    copy = tmp_path / "module.py"
    text = original.read_text(encoding="utf-8")
    docstring_end = text.index('"""', text.index('"""') + 3)
    copy.write_text(text[:docstring_end] + "\nSee :func:`unicl.loss.functional.unicl_loss`.\n" + text[docstring_end:])
    assert raw_roles_in_files([original]) == {}
    found = raw_roles_in_files([copy])
    assert list(found) == [str(copy)]
    assert found[str(copy)] == [
        f"line {text[:docstring_end].count(chr(10)) + 2}: See :func:`unicl.loss.functional.unicl_loss`."
    ]


#: The packages and modules whose public docstrings may still carry dated history (lab notes, measurements with their
#: date), until they are rewritten as reference (issue 31). Shrink it: the test after next fails for an entry that
#: no longer needs to be here.
DATED_DOCSTRINGS_ALLOWED: list[str] = []
#: A year and month as ISO 8601 writes them (``2026-11``, ``2026-11-30``); versions (``3.0.0.dev20270101``) are not.
ISO_DATE = re.compile(r"(?<![\w.])(?:19|20)\d{2}-(?:0[1-9]|1[0-2])(?!\d)")


def public_docstrings(path: Path) -> list[tuple[int, str]]:
    """``(line, docstring)`` of a module and of its public classes, functions and methods (what the API pages
    render); a name with one leading underscore and everything inside a function are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []

    def visit(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        docstring = ast.get_docstring(node, clean=False)
        if docstring:
            found.append((node.body[0].lineno, docstring))
        if isinstance(node, (ast.Module, ast.ClassDef)):
            for child in node.body:
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                    child.name.startswith("_") and not child.name.endswith("__")
                ):
                    visit(child)

    visit(tree)
    return found


def dated_docstring_lines(path: Path) -> list[str]:
    """``"line N: <line>"`` for every line of a public docstring of ``path`` that holds an ISO date."""
    return [
        f"line {start + offset}: {line.strip()}"
        for start, docstring in public_docstrings(path)
        for offset, line in enumerate(docstring.splitlines())
        if ISO_DATE.search(line)
    ]


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def allowed_dates(module: str) -> bool:
    return any(module == entry or module.startswith(entry + ".") for entry in DATED_DOCSTRINGS_ALLOWED)


def test_no_dates_in_the_public_docstrings():
    """The API pages are reference: a figure's date and machine stand on the docs' pages, beside the figure."""
    checked = [path for path in SOURCES if not allowed_dates(dotted(path))]
    assert len(checked) > 50
    found = {dotted(path): dated_docstring_lines(path) for path in checked}
    assert {module: lines for module, lines in found.items() if lines} == {}


@pytest.mark.parametrize("entry", DATED_DOCSTRINGS_ALLOWED)
def test_every_entry_allowed_dated_docstrings_still_has_one(entry):
    """An entry whose docstrings hold no date any more leaves `DATED_DOCSTRINGS_ALLOWED`, so the check covers it."""
    inside = [path for path in SOURCES if dotted(path) == entry or dotted(path).startswith(entry + ".")]
    assert inside, f"{entry} is not a module or package of unicl"
    assert any(dated_docstring_lines(path) for path in inside), f"{entry}: no dated docstring left; remove the entry"


def test_the_date_check_reads_public_docstrings_only(tmp_path):
    module = tmp_path / "dated.py"
    module.write_text(
        textwrap.dedent(
            '''\
            """A module, measured on 2026-11-30."""


            def public():
                """Triton 3.x (2026-09), torch 2.11.0, 3.0.0.dev20270101, Li et al. 2018, 10-2026."""


            class Public:
                def method(self):
                    """Since 2026-12."""

                def _private(self):
                    """2026-01-01."""


            def _private():
                """2026-01-01."""
                # 2026-01-01, a comment
            '''
        )
    )
    assert dated_docstring_lines(module) == [
        "line 1: A module, measured on 2026-11-30.",
        "line 5: Triton 3.x (2026-09), torch 2.11.0, 3.0.0.dev20270101, Li et al. 2018, 10-2026.",
        "line 10: Since 2026-12.",
    ]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocstrings") is None or shutil.which("mkdocs") is None,
    reason="the docs extra is not installed",
)
def test_no_raw_roles_on_the_rendered_api_pages(tmp_path):
    """What readers see: the site built (not strict: CI's strict build judges warnings), each API page's HTML."""
    site = tmp_path / "site"
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--no-strict", "-q", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert built.returncode == 0, built.stderr
    api_pages = sorted((site / "api").rglob("index.html"))
    assert len(api_pages) == len(list((ROOT / "docs" / "api").glob("*.md")))
    for page in api_pages:
        html = page.read_text(encoding="utf-8")
        assert 'class="doc doc-' in html, f"{page}: mkdocstrings rendered nothing"
        assert raw_roles(html) == [], page
        # The page's table of contents: public names only.
        contents = html[html.index("md-nav--secondary") :]
        entries = [re.sub(r"<[^>]+>|\s", "", entry) for entry in TOC_ENTRY.findall(contents)]
        assert entries and [entry for entry in entries if entry.startswith("_")] == [], page


#: An entry of a page's table of contents in the material theme's HTML.
TOC_ENTRY = re.compile(r'<span class="md-ellipsis">(.*?)</span>', flags=re.S)


def test_the_design_page_names_every_package_and_the_contract_layers_in_order():
    """The Design page's house is the package's: every package and top-level module in its table, and the layers
    of the contract that `.ci/run` checks (`pyproject.toml`), top down, in its diagram."""
    design = (ROOT / "docs" / "design.md").read_text()
    table = design.split("## The packages", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(unicl\.[\w.]+)`", table))
    top_level = {
        f"unicl.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "unicl").iterdir()
        if (path.suffix == ".py" and path.name != "__init__.py") or (path / "__init__.py").is_file()
    }
    assert top_level - named == set(), "add them to the Design page's table of packages"
    contract = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contract if c["type"] == "layers")["layers"]
    assert _drawn_layers("## Layers") == [[name.strip() for name in layer.split("|")] for layer in layers]


def _drawn_layers(section: str) -> list[list[str]]:
    """The layers of the first ```` ```text ```` diagram of a Design page section: each line's first column (up to
    two spaces), split at ``|``."""
    design = (ROOT / "docs" / "design.md").read_text()
    diagram = design.split(section, 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    return [[name.strip() for name in line.split("  ")[0].split("|")] for line in diagram.splitlines() if line.strip()]


def test_the_design_pages_layers_of_the_loss_are_its_import_graph():
    """Each module of `unicl.loss` imports only modules on lower lines of the page's diagram (``kernels`` standing
    for the package and its modules), every module is on it, and siblings on one line do not import each other."""
    from test_layout import import_graph

    layers = _drawn_layers("## Inside `unicl.loss`")
    line_of = {name: index for index, names in enumerate(layers) for name in names}
    graph = {name: targets for name, targets in import_graph().items() if name.startswith("unicl.loss.")}

    def owner(module: str) -> str:
        return module.removeprefix("unicl.loss.").split(".")[0]

    assert {owner(name) for name in graph} == set(line_of), "the diagram names every module of unicl.loss once"
    upward = [
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if target.startswith("unicl.loss.") and owner(target) != owner(source)
        if line_of[owner(target)] <= line_of[owner(source)]
    ]
    assert upward == []


#: A dotted name of the package on a page (not inside a URL or a path such as ``unicl/unicl.git``).
PACKAGE_NAME = re.compile(r"(?<![\w/.-])unicl(?:\.[A-Za-z_]\w*)+")


def _resolves(name: str) -> bool:
    """Whether ``name`` is a module of the package or an attribute reached from one."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found = importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            continue
        value = importlib.import_module(module_name)
        try:
            for attribute in parts[end:]:
                value = getattr(value, attribute)
        except AttributeError:
            return False
        return True
    return False


@pytest.mark.parametrize("page", [*PAGES, README], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_package_name_on_a_page_exists(page):
    """After a move, a page that still names the old place fails here rather than misleading a reader (the
    Design page's table of moved names names the old places on purpose, in its first column only)."""
    names = sorted(set(PACKAGE_NAME.findall(_without_moved_names(page.read_text()))))
    assert [name for name in names if not _resolves(name)] == []


@pytest.mark.slow
def test_every_dotted_name_on_the_pages_resolves_after_a_plain_import_unicl():
    """What a reader types: ``import unicl``, then ``unicl.a.b.c`` as the page shows it, in a fresh interpreter (where
    no other import has put a submodule on its package already)."""
    names = sorted(
        {name for page in [*PAGES, README] for name in PACKAGE_NAME.findall(_without_moved_names(page.read_text()))}
    )
    walk = (
        "import json, sys\n"
        "import unicl\n"
        "failed = []\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    value = unicl\n"
        "    try:\n"
        "        for attribute in name.split('.')[1:]:\n"
        "            value = getattr(value, attribute)\n"
        "    except AttributeError:\n"
        "        failed.append(name)\n"
        "print(json.dumps(failed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", walk, json.dumps(names)], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert len(names) > 100 and json.loads(done.stdout) == []


def _without_moved_names(text: str) -> str:
    """``text`` with the "before" column of a "Names that moved" table dropped."""
    kept, in_table = [], False
    for line in text.splitlines():
        if line.startswith("## "):
            in_table = line == "## Names that moved"
        if in_table and line.startswith("| "):
            line = "|".join(line.split("|")[2:])
        kept.append(line)
    return "\n".join(kept)


def test_the_moved_names_table_points_at_names_that_exist_and_the_old_column_is_skipped():
    text = (ROOT / "docs" / "design.md").read_text()
    assert "## Names that moved" in text and "unicl.zeroshot" in text
    assert "unicl.zeroshot" not in _without_moved_names(text)
    assert "unicl.evaluation.zeroshot" in _without_moved_names(text)


def test_the_name_check_tells_real_names_from_moved_ones():
    assert _resolves("unicl.loss.module.UniCLLoss") and _resolves("unicl.UniCLLoss") and _resolves("unicl.loss")
    assert not _resolves("unicl.zeroshot") and not _resolves("unicl.loss.module.NoSuchLoss")
    assert PACKAGE_NAME.findall("git clone https://github.com/unicl/unicl.git; see `unicl.text.tokenizer`.") == [
        "unicl.text.tokenizer"
    ]


def test_docstring_examples_are_under_the_section_title_that_renders_their_prompts():
    # griffe's Google parser renders only "Examples:" as a console session; under "Example:" the ">>>" lines become
    # Markdown block quotes (see test_training_parts' rendering check, which parses the sections of one package).
    titled_singular = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "unicl").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.fullmatch(r"\s*Example:\s*", line)
    ]
    assert titled_singular == []


def _public_objects(module):
    """``module``'s objects with public names, depth first (aliases, which are documented where they are defined,
    left out)."""
    for member in module.members.values():
        if member.is_alias or member.name.startswith("_"):
            continue
        yield member
        if member.is_module or member.is_class:
            yield from _public_objects(member)


def test_every_returns_section_renders_as_one_value_with_the_docs_options():
    """griffe reads a Google-style Returns section as a list of items by default, so each wrapped line of one value's
    description rendered as another returned value (with the signature's type): the docs' options keep it whole."""
    griffe = pytest.importorskip("griffe")
    yaml = pytest.importorskip("yaml")
    logging.getLogger("griffe").setLevel(logging.ERROR)
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    (handlers,) = [plugin["mkdocstrings"]["handlers"] for plugin in config["plugins"] if "mkdocstrings" in plugin]
    options = handlers["python"]["options"]
    parser_options = options.get("docstring_options", {})
    package = griffe.load("unicl", search_paths=[str(ROOT)], docstring_parser=options["docstring_style"],
                          docstring_options=parser_options, allow_inspection=False)  # fmt: skip
    sections = {
        item.path: section
        for item in _public_objects(package)
        if item.docstring is not None
        for section in item.docstring.parse(options["docstring_style"], **parser_options)
        if section.kind.value == "returns"
    }
    assert len(sections) > 50
    assert {path: len(section.value) for path, section in sections.items() if len(section.value) != 1} == {}
