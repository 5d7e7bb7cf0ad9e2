"""The supported floor (unicl._versions): versions compared as parsed releases, older Python and torch refused at
``import unicl`` with one line, an older Triton refused by the Triton backends, and pyproject.toml declaring the
same floors as the code and CI's floor job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from stack import interpreter_stack_problem

from unicl import _versions, unicl_loss
from unicl._versions import MINIMUM_PYTHON, MINIMUM_TORCH, MINIMUM_TRITON, release, too_old
from unicl.loss.kernels import availability

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("2.11.0+cu130", (2, 11, 0)),
        ("2.9.0", (2, 9, 0)),
        ("3.0.0.dev20270101", (3, 0, 0)),
        ("2.14.0a0+git1234", (2, 14, 0)),
        (" 3.6 ", (3, 6)),
        ("unknown", ()),
    ],
)
def test_release_reads_the_leading_numbers(version, expected):
    assert release(version) == expected


def test_older_releases_are_refused_by_number_not_by_string():
    # As strings "2.9.0" >= "2.11" and "2.20.0" < "2.3"; as releases it is the other way round.
    assert too_old("torch", "2.9.0", (2, 11)) == "unicl needs torch >= 2.11, found 2.9.0: pip install 'torch>=2.11'"
    assert too_old("torch", "2.20.0", (2, 11)) is None
    assert too_old("torch", "2.11.0+cu130", (2, 11)) is None
    assert too_old("torch", None, (2, 11)) is None
    assert too_old("torch", "local-build", (2, 11)) is None


def test_an_older_torch_is_refused_with_one_line(monkeypatch):
    monkeypatch.setattr(_versions, "installed_version", lambda name: "2.10.1" if name == "torch" else None)
    with pytest.raises(ImportError) as error:
        _versions.check_supported_versions()
    assert str(error.value) == "unicl needs torch >= 2.11, found 2.10.1: pip install 'torch>=2.11'"


def test_import_unicl_refuses_an_older_torch_in_a_fresh_process(tmp_path):
    """What a user on torch 2.10 sees: one line at ``import unicl``, before any of unicl's own modules load."""
    metadata = tmp_path / "torch-2.10.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.10.0\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-c", "import unicl"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: unicl needs torch >= 2.11, found 2.10.0: pip install 'torch>=2.11'"
    )


def test_an_older_triton_is_refused_by_the_triton_backends(monkeypatch):
    if availability.importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed here")
    monkeypatch.setattr(availability, "installed_version", lambda name: "3.5.1")
    problem = availability.triton_install_problem()
    assert problem == "unicl needs triton >= 3.6, found 3.5.1: pip install 'triton>=3.6'"
    monkeypatch.setattr(availability, "TRITON_INSTALL_PROBLEM", problem)
    assert availability.triton_unavailable_reason(torch.device("cuda"), torch.float32) == problem
    with pytest.raises(RuntimeError, match=r'backend="triton" cannot run here: unicl needs triton >= 3\.6'):
        unicl_loss(torch.randn(4, 8), torch.randn(4, 8), backend="triton")


def test_the_installed_stack_meets_the_floor():
    assert sys.version_info[:2] >= MINIMUM_PYTHON
    assert release(torch.__version__) >= MINIMUM_TORCH
    triton_version = _versions.installed_version("triton")
    assert triton_version is None or release(triton_version) >= MINIMUM_TRITON


def _floor(requirement: str, name: str) -> tuple[int, ...]:
    match = re.fullmatch(rf"{name}>=([\d.]+)(;.*)?", requirement.replace(" ", ""))
    assert match, requirement
    return release(match.group(1))


def test_pyproject_and_the_ci_floor_job_declare_the_floors_of_the_code():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert _floor(project["requires-python"], "") == MINIMUM_PYTHON
    requirements = {re.split(r"[<>=;\s]", r)[0]: r for r in project["dependencies"]}
    assert _floor(requirements["torch"], "torch") == MINIMUM_TORCH
    assert _floor(requirements["triton"], "triton") == MINIMUM_TRITON
    pins = dict(line.split("==") for line in (ROOT / ".ci" / "floor.txt").read_text().splitlines() if "==" in line)
    assert release(pins["torch"])[:2] == MINIMUM_TORCH
    assert release(pins["triton"])[:2] == MINIMUM_TRITON


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "refused"),
    [("3.6.0", "2.5.0", True), ("3.6.0", "2.4.0", True), ("3.6.0", "2.3.5", False), ("3.8.0", "2.4.6", False),
     (None, "2.5.0", False)],
)  # fmt: skip
def test_the_interpreter_on_triton_3_6_with_numpy_2_4_is_refused(triton_version, numpy_version, refused):
    problem = interpreter_stack_problem(triton_version, numpy_version)
    assert (problem is not None) == refused
    if refused:
        assert "\n" not in problem and "numpy<2.4" in problem and numpy_version in problem
