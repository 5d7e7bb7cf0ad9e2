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
