"""The installed commands as a shell runs them: a finished run exits with status 0, a refused one with 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPTS = Path(sys.executable).parent


def _script(name: str) -> str:
    path = SCRIPTS / name
    if not path.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e . makes it)")
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two tiny ImageFolders of plain-colour 32-px images, two classes each."""
    root = tmp_path_factory.mktemp("cli")
    for split, count in (("train", 4), ("eval", 2)):
        for name, colour in (("red", (200, 20, 20)), ("blue", (20, 20, 200))):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (32, 32), colour).save(root / split / name / f"{index}.png")
    return root


@pytest.mark.slow
def test_a_finished_training_and_evaluation_exit_with_status_0(folders, tmp_path):
    """The console scripts wrap ``main``, whose returned results would otherwise become exit status 1."""
    output = tmp_path / "run"
    train = subprocess.run(
        [_script("unicl-train"), "--model", "unicl_tiny", "--image-folder", str(folders / "train"),
         "--batch-size", "4", "--steps", "2", "--workers", "0", "--output", str(output), "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-2000:]
    evaluate = subprocess.run(
        [_script("unicl-evaluate"), "zeroshot", "--model", str(output / "final"), "--data", str(folders / "eval"),
         "--workers", "0", "--no-progress"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    assert "top1=" in evaluate.stdout


def test_a_refused_command_exits_with_status_2_and_one_line(tmp_path):
    refused = subprocess.run(
        [_script("unicl-train"), "--model", "unicl_tiny", "--batch-size", "0", "--steps", "1",
         "--image-folder", str(tmp_path), "--output", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == "unicl-train: error: --batch-size must be >= 1; got 0"


def test_the_installed_help_names_the_command_as_typed():
    shown = subprocess.run([_script("unicl-train"), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith("usage: unicl-train ")


def test_every_error_of_a_command_parser_is_argparses_line_carried_by_the_exit(capsys):
    """`unicl._checks.CommandParser`: argparse's own errors and the command's later ones print the usage line and
    ``PROG: error: MESSAGE``, exit with status 2, and the exception's text is that line (what a test or a caller
    reads); sub-commands' parsers are of the same class."""
    from unicl._checks import CommandError, CommandParser

    parser = CommandParser(prog="unicl-demo")
    parser.add_argument("--count", type=int, required=True)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run").add_argument("--size", type=int)
    with pytest.raises(CommandError) as missing:
        parser.parse_args([])
    assert (
        missing.value.code == 2
        and str(missing.value) == "unicl-demo: error: the following arguments are required: --count"
    )
    assert capsys.readouterr().err.splitlines() == [
        "usage: unicl-demo [-h] --count COUNT {run} ...",
        str(missing.value),
    ]
    with pytest.raises(SystemExit) as later:
        parser.error("--count 3: too many")
    assert later.value.code == 2 and str(later.value) == "unicl-demo: error: --count 3: too many"
    assert capsys.readouterr().err.splitlines()[-1] == str(later.value)
    with pytest.raises(CommandError) as nested:
        parser.parse_args(["--count", "1", "run", "--size", "big"])
    assert str(nested.value) == "unicl-demo run: error: argument --size: invalid int value: 'big'"
    assert capsys.readouterr().err.splitlines()[0] == "usage: unicl-demo run [-h] [--size SIZE]"
