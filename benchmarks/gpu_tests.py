"""Run tests/gpu as parallel pytest processes, one per test group, within a time budget.

Triton compiles a kernel in the process that launches it, one configuration after another, so a single pytest
process spends most of the GPU suite compiling on one core. Here every group of ``tests/gpu/_groups.py`` (one
schedule and dtype each, so no two processes compile the same kernel) gets its own process, all started at once;
each collects the whole suite and keeps its share (``tests/gpu/conftest.py``). Compiled kernels land in the shared
``TRITON_CACHE_DIR``, where the benchmark steps after this one find them.

Each group's output is printed as soon as it finishes, then a table of every group. The exit status is 0 only if
every group passed (a group with no tests counts as passed) and at least one test ran; a group still running at the
deadline is stopped and counts as failed.

Examples:
    python benchmarks/gpu_tests.py --budget 140
    python benchmarks/gpu_tests.py --budget 190 --large-at-once 1
    python benchmarks/gpu_tests.py --list
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "gpu"))

from _groups import GROUPS  # noqa: E402

#: Seconds kept back from the budget to stop the groups still running and print their logs.
STOP_MARGIN_S = 6.0
#: pytest's exit status when it selected no test: an empty group, not a failure.
NO_TESTS_COLLECTED = 5


@dataclass
class Group:
    """One pytest process and its log."""

    name: str
    log: Path
    process: subprocess.Popen | None = None
    started: float = 0.0
    seconds: float = 0.0
    returncode: int | None = None
    stopped: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.stopped and self.returncode in (0, NO_TESTS_COLLECTED)

    @property
    def status(self) -> str:
        if self.stopped:
            return "FAIL (stopped unfinished)" if self.process is not None else "FAIL (never started)"
        if self.returncode == NO_TESTS_COLLECTED:
            return "PASS (no tests)"
        return "PASS" if self.returncode == 0 else f"FAIL (exit {self.returncode})"


def pytest_command(pytest_args: list[str]) -> list[str]:
    """The command each group runs: quiet, no stop at the first failure, the output of passing tests kept (the GPU
    tests print their relative errors), and no cache written into the checkout."""
    return [sys.executable, "-m", "pytest", "-q", "-rfEP", "-p", "no:cacheprovider", *pytest_args]


def parse_counts(text: str) -> dict[str, int]:
    """``{"passed": 3, "failed": 1, ...}`` from pytest's closing line (the last one that has counts)."""
    counts: dict[str, int] = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected|xfailed|xpassed)", line)
        if found:
            for number, word in found:
                counts["error" if word.startswith("error") else word] = int(number)
            break
    return counts


def start(group: Group, pytest_args: list[str], environment: dict[str, str]) -> None:
    """Start ``group``'s pytest process in a session of its own, so that stopping it stops its children too
    (Inductor's compile workers)."""
    handle = group.log.open("w")
    group.started = time.monotonic()
    group.process = subprocess.Popen(
        pytest_command(pytest_args),
        cwd=ROOT,
        env={**environment, "UNICL_GPU_TEST_GROUP": group.name},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()


def stop(group: Group) -> None:
    """SIGTERM to the group's process session, SIGKILL after 3 s."""
    assert group.process is not None
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(group.process.pid, sig)
        except ProcessLookupError:
            break
        try:
            group.process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def finish(group: Group, stopped: bool = False) -> None:
    """Record the result of a finished (or stopped) group and print its log."""
    assert group.process is not None
    group.returncode = group.process.returncode
    group.stopped = stopped
    group.seconds = time.monotonic() - group.started
    text = group.log.read_text(errors="replace")
    group.counts = parse_counts(text)
    print(f"\n----- group {group.name}: {group.status}, {group.seconds:.0f} s -----", flush=True)
    print(text.rstrip(), flush=True)


def summary(groups: list[Group]) -> tuple[str, bool]:
    """The table of groups and whether the whole run passed."""
    lines = [f"{'group':<20}{'result':<34}{'seconds':>8}  tests"]
    totals: dict[str, int] = {}
    for group in groups:
        counts = {key: value for key, value in group.counts.items() if key != "deselected"}
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + value
        tests = ", ".join(f"{value} {key}" for key, value in counts.items()) or "-"
        lines.append(f"{group.name:<20}{group.status:<34}{group.seconds:>8.0f}  {tests}")
    ran = totals.get("passed", 0) + totals.get("failed", 0) + totals.get("error", 0)
    passed = all(group.passed for group in groups) and ran > 0
    total = ", ".join(f"{value} {key}" for key, value in sorted(totals.items())) or "no tests"
    verdict = "PASS" if passed else ("FAIL (no test ran)" if ran == 0 else "FAIL")
    lines.append(f"GPU tests: {verdict}: {total} over {len(groups)} processes")
    return "\n".join(lines), passed


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``timeout`` ending the step) stops the groups like Ctrl-C does, so their logs are still printed."""
    raise KeyboardInterrupt


def is_large(name: str) -> bool:
    """Whether a group runs the N = 131,072 tests, whose float64 references and float32 one-pass weights take about
    25 GB of GPU memory each."""
    return name.startswith("large-")


def startable(waiting: list[Group], running: list[Group], jobs: int, large_at_once: int) -> Group | None:
    """The first waiting group that may start now: fewer than ``jobs`` groups run, and a large group starts only
    while fewer than ``large_at_once`` large groups run (a small group may pass a large one that must wait)."""
    if len(running) >= jobs:
        return None
    large_running = sum(is_large(group.name) for group in running)
    return next((g for g in waiting if not is_large(g.name) or large_running < large_at_once), None)


def run(budget: float, jobs: int, names: list[str], pytest_args: list[str], large_at_once: int | None = None) -> bool:
    """Run the groups ``names``, at most ``jobs`` at a time (and at most ``large_at_once`` large ones), in that
    order as far as those limits allow; returns whether all passed."""
    large_at_once = jobs if large_at_once is None else large_at_once
    deadline = time.monotonic() + budget - STOP_MARGIN_S
    environment = dict(os.environ)
    # Each group is one of 20 processes on the machine: one BLAS thread each is plenty for the float64 checks, and
    # Inductor (the torch.compile groups) would otherwise start a compile worker per core in each of its processes.
    environment.setdefault("OMP_NUM_THREADS", "1")
    environment.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "4")
    with tempfile.TemporaryDirectory(prefix="unicl-gpu-tests-") as scratch:
        waiting = [Group(name, Path(scratch) / f"{name}.log") for name in names]
        groups: list[Group] = list(waiting)
        running: list[Group] = []
        print(f"{len(groups)} groups, {jobs} at a time, {budget:.0f} s: {' '.join(names)}", flush=True)
        previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while waiting or running:
                while (group := startable(waiting, running, jobs, large_at_once)) is not None:
                    waiting.remove(group)
                    start(group, pytest_args, environment)
                    running.append(group)
                for group in [g for g in running if g.process is not None and g.process.poll() is not None]:
                    running.remove(group)
                    finish(group)
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("interrupted: stopping every group", flush=True)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            for group in running:
                stop(group)
                finish(group, stopped=True)
            for group in waiting:
                group.stopped = True
        table, passed = summary(groups)
        print("\n" + table, flush=True)
    return passed


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=140.0, help="seconds for the whole suite (default 140)")
    parser.add_argument(
        "--jobs", type=int, default=len(GROUPS), help=f"processes at a time (default: every group, {len(GROUPS)})"
    )
    parser.add_argument(
        "--large-at-once",
        type=int,
        default=None,
        help="large groups (N = 131,072, about 25 GB of GPU memory each) running at a time (default: no limit "
        "beyond --jobs; gpu_check.sh takes 1 on an 80 GB H100)",
    )
    parser.add_argument(
        "--groups", default=",".join(GROUPS), help="comma-separated groups to run (default: all, heaviest first)"
    )
    parser.add_argument("--list", action="store_true", help="print the groups and the pytest command, run nothing")
    args, rest = parser.parse_known_args(argv)
    unknown = sorted(set(args.groups.split(",")) - set(GROUPS))
    if args.large_at_once is not None and args.large_at_once < 1:
        parser.error(f"--large-at-once must be at least 1; got {args.large_at_once}")
    if unknown:
        parser.error(f"unknown groups {', '.join(unknown)}; the groups are {', '.join(GROUPS)}")
    return args, rest or ["tests/gpu"]


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or list its groups); the exit status is 0 only if it passed."""
    args, pytest_args = parse_args(argv)
    names = args.groups.split(",")
    if args.list:
        print(" ".join(pytest_command(pytest_args)))
        print("\n".join(names))
        return 0
    return 0 if run(args.budget, max(1, args.jobs), names, pytest_args, args.large_at_once) else 1


if __name__ == "__main__":
    sys.exit(main())
