"""The distributed example on the docs' multi-GPU page runs as written, here on 2 CPU processes (gloo)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "train_distributed.py"


def test_the_docs_show_the_example_as_it_is():
    page = (ROOT / "docs" / "distributed.md").read_text()
    assert EXAMPLE.read_text() in re.findall(r"```python\n(.*?)```", page, flags=re.S)


@pytest.mark.slow
def test_the_example_trains_on_two_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(EXAMPLE)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(value) for value in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0] / 2, result.stdout
    assert "FutureWarning" not in result.stderr
