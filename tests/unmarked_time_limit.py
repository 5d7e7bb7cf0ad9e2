"""The quick tier stays quick: ``--max-unmarked-seconds S`` fails the run when a test not marked ``slow`` takes more
than ``S`` seconds (its setup and call together, as ``--durations`` counts them).

``python -m pytest -m "not slow"`` is the contributors' loop; a test that grows slow without the marker would
lengthen it unnoticed, so CI (``.ci/run``) runs the full suite with ``--max-unmarked-seconds 10``. Each offender gets
one line in the summary, naming the test, its time and the fix (mark it ``@pytest.mark.slow``), and the run's exit
status becomes nonzero even when every test passed. Without the option nothing is timed. Under pytest-xdist the
times are gathered on the controller, from the reports every worker sends it.

tests/conftest.py loads this module's hooks; ``-p unmarked_time_limit`` loads them elsewhere (its own tests do).
"""

from __future__ import annotations

from collections import defaultdict

import pytest

OPTION = "--max-unmarked-seconds"
MARKER = "slow"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"fail the run when a test not marked '{MARKER}' takes longer than SECONDS (setup + call)",
    )


def pytest_configure(config: pytest.Config) -> None:
    limit = config.getoption("max_unmarked_seconds")
    if limit is not None and not hasattr(config, "workerinput"):  # an xdist worker: its controller does the timing
        config.pluginmanager.register(UnmarkedTimeLimit(limit), "unmarked-time-limit")


class UnmarkedTimeLimit:
    """Adds up each unmarked test's setup and call times and fails the session if one exceeds ``limit``."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when in ("setup", "call") and MARKER not in report.keywords:
            self.seconds[report.nodeid] += report.duration

    def offenders(self) -> list[tuple[str, float]]:
        """``(node id, seconds)`` of each unmarked test over the limit, slowest first."""
        over = [(nodeid, seconds) for nodeid, seconds in self.seconds.items() if seconds > self.limit]
        return sorted(over, key=lambda item: -item[1])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.offenders() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        offenders = self.offenders()
        if not offenders:
            return
        terminalreporter.section(f"tests not marked {MARKER} over {self.limit:g} s", sep="=", red=True)
        for nodeid, seconds in offenders:
            terminalreporter.line(
                f"{nodeid} took {seconds:.1f} s (setup + call), over the {self.limit:g} s limit for tests not "
                f"marked {MARKER}: mark it @pytest.mark.{MARKER} (or make it quicker)",
                red=True,
            )
