"""The parts of the prepared GPU session (benchmarks/gpu_check.sh) that the CPU can check, so it cannot rot before
a GPU runs it: the plan and its budgets, the step runner's PASS/FAIL/timeout logic and exit status, the files it
writes, the parallel test runner and its groups, the probes' command line and Triton cache reading, and the
ClipLoss formula provider that stands in for open_clip on the GPU machine."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

import gpu_probes  # noqa: E402
import providers  # noqa: E402
from _groups import GROUPS, group_of  # noqa: E402

from unicl import unicl_loss  # noqa: E402

STEP_ORDER = ["b", "a1", "a2", "c", "d1", "d2", "d3", "e"]
KILL_AFTER = 3


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, **env}
    )


def _dry_run_plans(outdir: Path, *options: str) -> dict[str, tuple[list[dict], int, list[str], str]]:
    """Each printed plan of ``gpu_check.sh --dry-run``, by card: ``(steps, total budget, output files, text)``."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *options, str(outdir)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    plans = {}
    for text in re.split(r"(?m)^(?=gpu_check plan for )", result.stdout)[1:]:
        card = re.match(r"gpu_check plan for (\S+) \(dry run\)", text)[1].lower()
        steps: list[dict] = []
        for line in text.splitlines():
            if match := re.match(r"step (\S+)\s+budget\s+(\d+) s  (.*)", line):
                steps.append({"id": match[1], "budget": int(match[2]), "description": match[3]})
            elif match := re.match(r"\s+writes: (.*)", line):
                steps[-1]["writes"] = [] if match[1] == "-" else match[1].split(", ")
            elif match := re.match(r"\s+\$ (.*)", line):
                steps[-1]["command"] = shlex.split(match[1])
        pattern = rf"^total budget: (\d+) s with {KILL_AFTER} s to stop each step \(limit 480 s\)$"
        total = int(re.search(pattern, text, re.M)[1])
        files_line = re.search(r"^output files \((\d+), limit 8\): (.*)$", text, re.M)
        files = files_line[2].split()
        assert int(files_line[1]) == len(files)
        plans[card] = (steps, total, files, text)
    return plans


def _dry_run(outdir: Path, *options: str, gpu: str = "h200") -> tuple[list[dict], int, list[str], str]:
    """``(steps, total budget, output files, printed plan)`` of ``gpu_check.sh --dry-run --gpu GPU``."""
    plans = _dry_run_plans(outdir, "--gpu", gpu, *options)
    assert list(plans) == [gpu]
    return plans[gpu]


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_dry_run_prints_every_step_with_its_budget_and_files(tmp_path, gpu):
    outdir = tmp_path / "out"
    steps, total, files, text = _dry_run(outdir, gpu=gpu)
    assert [step["id"] for step in steps] == STEP_ORDER, text
    assert sum(step["budget"] + KILL_AFTER for step in steps) == total <= 480
    assert all(step["budget"] > 0 and step["command"] for step in steps)
    assert len(files) <= 8 and {"gpu_check.log", "summary.txt", "bench_loss.csv"} <= set(files)
    for step in steps:
        assert set(step["writes"]) <= set(files), step
        # Every path a command names inside the output folder is a planned file (bench_loss.py's --out is the
        # folder itself, and it writes only bench_loss.csv there with --no-plot).
        named = {Path(arg).name for arg in step["command"] if arg.startswith(str(outdir) + "/")}
        assert named <= set(step["writes"]), step
        if "bench_loss.py" in " ".join(step["command"]):
            assert "--no-plot" in step["command"] and step["writes"] == ["bench_loss.csv"]
    tests_step = next(step for step in steps if step["id"] == "b")
    assert tests_step["command"][-2:] == ["--budget", str(tests_step["budget"])]
    assert not outdir.exists(), "a dry run writes nothing"


def test_without_a_gpu_the_dry_run_prints_the_h100_and_the_h200_plans(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU is named here: the dry run prints its own plan")
    plans = _dry_run_plans(tmp_path / "out")
    assert list(plans) == ["h100", "h200"]
    assert all(total <= 480 and len(files) <= 8 for _, total, files, _ in plans.values())


def test_each_card_gets_a_plan_that_fits_its_memory(tmp_path):
    """An 80 GB H100 runs the large float64-checked groups one at a time and the large benchmark at N = 131,072
    only; a 141 GB H200 runs three large groups at once and N up to 262,144. Correctness comes first on both."""
    for gpu, large_at_once, large_sizes in (("h100", "1", ["131072"]), ("h200", "3", ["131072", "262144"])):
        steps, _, _, _ = _dry_run(tmp_path / "out", gpu=gpu)
        by_id = {step["id"]: step for step in steps}
        tests = by_id["b"]["command"]
        assert steps[0]["id"] == "b" and tests[tests.index("--large-at-once") + 1] == large_at_once
        large = by_id["d3"]["command"]
        sizes = large[large.index("--n") + 1 : large.index("--labels")]
        assert sizes == large_sizes, gpu


def test_an_unknown_card_is_refused_with_one_line(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--gpu", "a100", str(tmp_path)], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 2
    assert result.stderr == "gpu_check: --gpu must be one of h100 h200; got a100\n"


def test_dry_run_steps_option_marks_the_others_skipped(tmp_path):
    steps, _, _, _ = _dry_run(tmp_path, "--steps", "b,d")
    skipped = {step["id"] for step in steps if "[skipped: not in --steps]" in step["description"]}
    assert skipped == {"a1", "a2", "c", "e"}


@pytest.mark.slow
def test_step_runner_records_pass_failure_and_timeout_and_exits_non_zero(tmp_path):
    script = f"""
        source {shlex.quote(str(SCRIPT))}
        RUN_DATE=now
        init_run {shlex.quote(str(tmp_path))}
        run_step ok 5 "a passing step" true
        cp {shlex.quote(str(tmp_path))}/summary.txt {shlex.quote(str(tmp_path))}/after_ok.txt
        run_step broken 5 "a failing step" bash -c 'echo something broke; exit 3'
        run_step slow 1 "a step over its budget" sleep 20
        run_step missing 5 "a command that does not exist" no-such-command-here
        finish
        echo "finish=$?"
    """
    result = _bash(script)
    summary = (tmp_path / "summary.txt").read_text()
    log = (tmp_path / "gpu_check.log").read_text()
    assert "finish=1" in result.stdout, result.stdout + result.stderr
    assert re.search(r"^ok .* PASS$", summary, re.M), summary
    assert re.search(r"^broken .* FAIL \(exit 3\)$", summary, re.M), summary
    assert re.search(r"^slow .* FAIL \(timed out after 1 s\)$", summary, re.M), summary
    assert re.search(r"^missing .* FAIL \(could not run it: exit 127\)$", summary, re.M), summary
    assert "1 passed, 3 failed, 0 skipped" in summary and summary.rstrip().endswith("gpu_check: FAIL")
    assert "something broke" in log and "===== step slow" in log and summary.strip() in log
    # The summary is rewritten after every step: a run cut short (the device call's own limit) still brings back
    # the verdicts of the steps it finished.
    after_ok = (tmp_path / "after_ok.txt").read_text()
    assert re.search(r"^ok .* PASS$", after_ok, re.M) and after_ok.rstrip().endswith("gpu_check: PASS")


def test_step_runner_passes_when_every_step_passes(tmp_path):
    script = f"""
        source {shlex.quote(str(SCRIPT))}
        RUN_DATE=now
        init_run {shlex.quote(str(tmp_path))}
        run_step one 5 "first" true
        SKIP_REASON="nothing to do" step two 5 "" "second" false
        finish
        echo "finish=$?"
    """
    result = _bash(script)
    summary = (tmp_path / "summary.txt").read_text()
    assert "finish=0" in result.stdout, result.stdout + result.stderr
    assert re.search(r"^two .* SKIP \(nothing to do\)$", summary, re.M)
    assert summary.rstrip().endswith("gpu_check: PASS")


#: A stand-in for python3 that does what each step's command would do to the output folder: writes the --json file,
#: or bench_loss.csv into --out; with EXTRA set it also leaves a file the plan does not name.
STAND_IN = """#!/usr/bin/env bash
while (($#)); do
    case $1 in
        --json) echo '{}' > "$2"; shift ;;
        --out) echo 'provider' >> "$2/bench_loss.csv"; [[ -n ${EXTRA:-} ]] && touch "$2/$EXTRA"; shift ;;
    esac
    shift
done
"""


@pytest.mark.parametrize("extra", ["", "stray.png"])
def test_whole_run_with_a_stand_in_python_writes_only_the_planned_files(tmp_path, extra):
    stand_in = tmp_path / "python"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    outdir = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--gpu", "h100", str(outdir)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHON": str(stand_in), "EXTRA": extra},
    )
    summary = (outdir / "summary.txt").read_text()
    _, _, planned, _ = _dry_run(outdir)
    written = {path.name for path in outdir.iterdir()}
    for step in STEP_ORDER:
        assert re.search(rf"^{step} .* {'SKIP' if step == 'a1' else 'PASS'}", summary, re.M), summary
    if extra:
        assert result.returncode == 1 and f"FAIL (not in the plan: {extra})" in summary
        assert written - set(planned) == {extra}
    else:
        assert result.returncode == 0, summary
        assert written <= set(planned) and {"gpu_check.log", "summary.txt", "bench_loss.csv"} <= written
        assert "PASS (only the planned files)" in summary


@pytest.mark.slow
def test_gpu_probes_help_names_its_subcommands(capsys):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_probes.py"), "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in ("ceilings", "kernels", "one-million"))
    for command in ("ceilings", "kernels", "one-million"):
        with pytest.raises(SystemExit) as exit_info:
            gpu_probes.parse_args([command, "--help"])
        assert exit_info.value.code == 0 and "--json" in capsys.readouterr().out


Metadata = namedtuple("Metadata", "num_warps num_stages shared name")


def _compiled(block_m: int, warps: int, registers: int, spills: int) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=Metadata(warps, 3, 49152, "_kernel"),
        n_regs=registers,
        n_spills=spills,
        src=SimpleNamespace(constants={(2,): block_m, (3,): 64}),
    )


@pytest.mark.parametrize(
    "layout",
    ["triton-3.8: (kernels, keys, target, backend, binder)", "triton-3.2: (kernels, target, backend, binder)", "2.x"],
)
def test_compiled_kernels_are_found_in_each_triton_cache_layout(layout):
    kernels = {"key-a": _compiled(128, 8, 168, 0), "key-b": _compiled(64, 4, 96, 12)}
    names = ["q_ptr", "k_ptr", "BLOCK_M", "BLOCK_N"]
    if layout.startswith("triton-3.8"):
        fn = SimpleNamespace(arg_names=names, device_caches={0: (kernels, {"spec": "key-a"}, "t", "b", "binder")})
    elif layout.startswith("triton-3.2"):
        fn = SimpleNamespace(arg_names=names, device_caches={0: (kernels, "t", "b", "binder")})
    else:
        fn = SimpleNamespace(arg_names=names, cache={0: kernels})
    variants, where = gpu_probes.compiled_kernels(fn)
    assert "dict of 2 kernels" in where
    assert sorted((v["constants"]["BLOCK_M"], v["num_warps"], v["n_regs"], v["n_spills"]) for v in variants) == [
        (64, 4, 96, 12),
        (128, 8, 168, 0),
    ]
    chosen = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    assert [gpu_probes._matches(v, chosen) for v in variants] == [True, False]


def test_recorders_see_every_autotuner_the_launchers_ask_for(monkeypatch):
    from unicl.loss.kernels import one_pass, tuning, two_pass

    tuners: dict[tuple, object] = {}  # stands in for functools.cache: one autotuner per argument tuple
    monkeypatch.setattr(tuning, "tuned", lambda *args: tuners.setdefault(args, object()))
    records = gpu_probes.install_recorders()
    assert gpu_probes.install_recorders() is records  # a second call wraps nothing twice
    tuning.tuned(one_pass.PARTIALS, (9, 0), torch.bfloat16, (65536, 65536))
    tuning.tuned(two_pass.GRAD, (9, 0), torch.bfloat16, (64, 64))
    tuning.tuned(one_pass.PARTIALS, (9, 0), torch.bfloat16, (65536, 65536))
    assert [(module, args) for module, args, _ in records] == [
        ("partials", (one_pass.PARTIALS, (9, 0), torch.bfloat16, (65536, 65536))),
        ("grad", (two_pass.GRAD, (9, 0), torch.bfloat16, (64, 64))),
    ]
    assert [tuner for *_, tuner in records] == list(tuners.values())


@pytest.mark.slow
def test_every_gpu_test_belongs_to_one_launched_group():
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/gpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != "UNICL_GPU_TEST_GROUP"},
    )
    ids = [line for line in collected.stdout.splitlines() if "::" in line]
    assert len(ids) > 50, collected.stdout + collected.stderr
    groups = {group_of(nodeid) for nodeid in ids}
    assert groups <= set(GROUPS) and "other" not in groups
    # The conftest keeps exactly one group's share when gpu_tests.py names it.
    group = "onepass-bf16-small"
    kept = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests/gpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "UNICL_GPU_TEST_GROUP": group},
    )
    kept_ids = [line for line in kept.stdout.splitlines() if "::" in line]
    assert kept_ids == [nodeid for nodeid in ids if group_of(nodeid) == group] and kept_ids


def test_parallel_test_runner_holds_large_groups_to_their_limit():
    """On an H100 one large group runs at a time; the small groups go past a large one that waits."""
    import gpu_tests

    def groups(*names):
        return [gpu_tests.Group(name, Path(name)) for name in names]

    running = groups("large-fp32", "onepass-bf16-main")
    waiting = groups("large-bf16", "large-fp16", "chunked")
    assert gpu_tests.startable(waiting, running, jobs=20, large_at_once=1).name == "chunked"
    assert gpu_tests.startable(waiting, running, jobs=20, large_at_once=3).name == "large-bf16"
    assert gpu_tests.startable(waiting, running, jobs=2, large_at_once=3) is None
    assert gpu_tests.startable(groups("large-bf16"), running, jobs=20, large_at_once=1) is None


@pytest.mark.slow
def test_parallel_test_runner_prints_each_group_and_fails_if_one_fails(tmp_path):
    (tmp_path / "test_dummy.py").write_text(
        "import os\n\n\ndef test_group_is_named():\n    assert os.environ['UNICL_GPU_TEST_GROUP'] != 'chunked'\n"
    )
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_tests.py"), "--budget", "60", "--groups"]
    failing = subprocess.run([*command, "chunked,other", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert failing.returncode == 1
    assert "----- group chunked: FAIL (exit 1)" in failing.stdout and "----- group other: PASS" in failing.stdout
    assert "GPU tests: FAIL: 1 failed, 1 passed over 2 processes" in failing.stdout
    passing = subprocess.run([*command, "other", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert passing.returncode == 0 and "GPU tests: PASS: 1 passed over 1 processes" in passing.stdout


def test_clip_loss_formula_equals_open_clip_and_unicl_dense():
    pytest.importorskip("open_clip")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(96, 40, generator=generator, dtype=torch.float64)
    text = torch.randn(96, 40, generator=generator, dtype=torch.float64)
    labels = torch.full((96,), -1)
    formula = providers.PROVIDERS["ClipLoss-formula"].make()(image, text, labels, 14.0)
    open_clip = providers.PROVIDERS["open_clip-ClipLoss"].make()(image, text, labels, 14.0)
    dense = unicl_loss(image, text, None, 14.0, backend="dense")
    assert formula.dtype == torch.float64
    torch.testing.assert_close(formula, open_clip, rtol=1e-13, atol=0)
    torch.testing.assert_close(formula, dense, rtol=1e-12, atol=0)
    # The formula is open_clip's operations: two products, cross-entropy against the diagonal both ways.
    unit_image, unit_text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    diagonal = torch.arange(96)
    by_hand = (
        F.cross_entropy(14.0 * unit_image @ unit_text.T, diagonal)
        + F.cross_entropy(14.0 * unit_text @ unit_image.T, diagonal)
    ) / 2
    torch.testing.assert_close(formula, by_hand, rtol=0, atol=0)


@pytest.mark.slow
def test_bench_loss_shares_one_date_and_skips_plots_when_asked(tmp_path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_loss.py"), "--n", "32", "--d", "16", "--repeats", "1",
        "--passes", "forward", "--labels", "unique", "--providers", "unicl-dense", "ClipLoss-formula",
        "--out", str(tmp_path), "--no-plot", "--date", "2030-01-02T03:04:05Z",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matches dense" in result.stdout
    with (tmp_path / "bench_loss.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["provider"] for row in rows} == {"unicl-dense", "ClipLoss-formula"}
    assert {row["date"] for row in rows} == {"2030-01-02T03:04:05Z"}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench_loss.csv"]
