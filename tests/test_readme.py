"""The README's Python snippets run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[f"snippet{i}" for i in range(len(SNIPPETS))])
def test_readme_snippet_runs(snippet):
    exec(compile(snippet, str(README), "exec"), {})


def test_readme_has_snippets():
    assert SNIPPETS


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (README.parent / ".ci" / "run").read_text()


def test_ci_stops_when_the_readme_test_command_fails():
    """``set -e`` ignores a failure inside an ``&&`` list: without its own exit, a failing docs build or test run
    would skip the rest of the list and CI would go on to report success."""
    commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    test_command = next(c for c in commands if "pytest" in c)
    line = next(line for line in (README.parent / ".ci" / "run").read_text().splitlines() if test_command in line)
    assert re.search(r"\|\| \{ .*exit 1; \}$", line), line


#: The pages that tell contributors which tests to run: the README's "Develop" part and the docs' contributing page.
DEVELOP_PAGES = [README, README.parent / "docs" / "contributing.md"]
QUICK_TIER = 'python -m pytest -m "not slow" -q'


@pytest.mark.parametrize("page", DEVELOP_PAGES, ids=lambda p: p.name)
def test_the_develop_pages_name_the_quick_tier_and_cis_test_run(page):
    """Both tiers, as commands to copy: the quick one while working, CI's (the README's test command) before a push."""
    readme_commands = re.findall(r"```bash\n(.*?)\n```", README.read_text(), flags=re.S)
    ci_test_run = next(c for c in readme_commands if "pytest" in c).split(" && ")[-1]
    assert ci_test_run.startswith("python -m pytest") and "--max-unmarked-seconds" in ci_test_run
    text = page.read_text()
    if page == README:
        text = text.split("## Develop\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    assert QUICK_TIER in commands
    assert any(command.endswith(ci_test_run) for command in commands)


#: The pages that tell users how to install (the other pages point at them).
INSTALL_PAGES = [README, README.parent / "docs" / "index.md", README.parent / "docs" / "quickstart.md"]
CPU_TORCH = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"


@pytest.mark.parametrize("page", INSTALL_PAGES, ids=lambda p: p.name)
def test_install_says_how_to_install_today(page):
    """unicl is not on PyPI: the pages install from the repository or a built wheel, CPU-only torch first."""
    text = page.read_text()
    assert re.search(r"""pip install ["']?unicl\b""", text) is None, "unicl is not published: no pip install unicl"
    assert "not on PyPI yet" in text
    commands = "\n".join(re.findall(r"```bash\n(.*?)\n```", text, flags=re.S))
    assert CPU_TORCH in commands
    assert commands.index(CPU_TORCH) < commands.index("pip install -e ")
    assert "python -m build" in commands


def test_readme_install_covers_the_clone_and_the_wheel():
    section = README.read_text().split("## Install\n", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)
    assert [line.split("#")[0].strip() for line in commands[0].splitlines()] == [
        "git clone https://github.com/unicl/unicl.git && cd unicl",
        "python3 -m venv .venv && . .venv/bin/activate",
        CPU_TORCH,
        "pip install -e .",
    ]
    assert [line.split("#")[0].strip() for line in commands[1].splitlines()] == [
        "pip install build && python -m build",
        "pip install dist/unicl-*.whl",
    ]


def test_readme_layout_names_every_package_and_top_level_module():
    layout = README.read_text().split("## Layout\n", 1)[1]
    package = README.parent / "unicl"
    entries = {
        f"{path.name}/" if path.is_dir() else path.name
        for path in package.iterdir()
        if (path / "__init__.py").is_file() or (path.suffix == ".py" and path.name != "__init__.py")
    }
    assert {entry for entry in entries if f"`{entry}`" not in layout} == set()
