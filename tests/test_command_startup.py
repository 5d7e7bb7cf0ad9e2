"""The commands answer ``--help`` at once: no torch, timm, torchvision or PIL is imported before argparse has parsed.

The import check is exact; the timing is a generous bound (the goal is under 1 s on an idle 2-core machine, where
torch alone takes about 2 s to import), so a loaded CI machine does not fail it by chance.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Libraries the commands must not load to print their help.
HEAVY = ("torch", "timm", "torchvision", "PIL", "numpy", "triton", "tokenizers")
#: Seconds: the median of three runs of a command's --help must stay under this.
HELP_SECONDS_BOUND = 2.5

COMMANDS = {
    "train": ["-m", "unicl.train"],
    "evaluate": ["-m", "unicl.evaluate"],
    "evaluate zeroshot": ["-m", "unicl.evaluate", "zeroshot"],
    "evaluate linear-probe": ["-m", "unicl.evaluate", "linear-probe"],
}

LOADED_MODULES = """
import runpy, sys
sys.argv = [sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
print("EXIT", code, file=sys.stderr)
print("LOADED", *sorted({name.split(".")[0] for name in sys.modules}), file=sys.stderr)
"""


def run_help(arguments: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *arguments, "--help"], capture_output=True, text=True, cwd=ROOT, env=os.environ.copy()
    )
    return done, time.perf_counter() - start


@pytest.mark.parametrize("command", COMMANDS, ids=list(COMMANDS))
def test_help_imports_no_heavy_library(command):
    module, *rest = COMMANDS[command][1:]
    done = subprocess.run(
        [sys.executable, "-c", LOADED_MODULES, module, *rest, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert "usage:" in done.stdout
    assert "EXIT 0" in done.stderr
    (loaded,) = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("LOADED")]
    assert sorted(set(loaded) & set(HEAVY)) == []


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_help_answers_within_the_bound(command):
    times = []
    for _ in range(3):
        done, seconds = run_help(COMMANDS[command])
        assert done.returncode == 0 and "usage:" in done.stdout
        times.append(seconds)
    assert statistics.median(times) < HELP_SECONDS_BOUND


@pytest.mark.parametrize("script", ["unicl-train", "unicl-evaluate"])
def test_installed_command_help_names_itself_and_imports_nothing_heavy(script):
    path = shutil.which(script, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{script} is not installed in this environment")
    done = subprocess.run([path, "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: {script}")


@pytest.mark.parametrize(
    "module", ["unicl", "unicl.loss.names", "unicl.text.names", "unicl.evaluation.names", "unicl.training.options"]
)
def test_the_torch_free_modules_import_without_torch(module):
    code = f"import sys, {module}; print(*sorted({{n.split('.')[0] for n in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert sorted(set(done.stdout.split()) & set(HEAVY)) == []


def test_lazy_package_names_resolve_once_to_their_modules_object():
    import unicl.loss
    import unicl.loss.functional
    import unicl.text
    import unicl.text.tokenizer

    assert unicl.loss.unicl_loss is unicl.loss.functional.unicl_loss is unicl.unicl_loss
    assert unicl.text.Tokenizer is unicl.text.tokenizer.Tokenizer
    assert "unicl_loss" in vars(unicl.loss)  # stored on first use: later lookups skip __getattr__
    assert {"UniCLLoss", "BACKENDS"} <= set(dir(unicl.loss))
    assert unicl.models.__name__ == "unicl.models"
    with pytest.raises(AttributeError, match=r"module 'unicl\.loss' has no attribute 'unicl_losss'"):
        unicl.loss.unicl_losss  # noqa: B018
