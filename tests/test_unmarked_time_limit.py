"""``--max-unmarked-seconds`` (tests/unmarked_time_limit.py) fails a run with an unmarked test over the limit, names
it, and lets a test marked ``slow`` or a run without the option take as long as it takes."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import time

import pytest


def test_quick():
    pass


def test_sleepy():
    time.sleep(0.3)


@pytest.mark.slow
def test_marked():
    time.sleep(0.3)


class TestGroup:
    def test_sleepy_setup(self, sleepy_fixture):
        pass


@pytest.fixture
def sleepy_fixture():
    time.sleep(0.3)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini("[pytest]\nmarkers =\n    slow: a test left out of the quick tier\naddopts = --strict-markers\n")
    pytester.makepyfile(test_timed=TESTS)
    return pytester


def test_an_unmarked_test_over_the_limit_fails_the_run_and_is_named(suite):
    result = suite.runpytest("-p", "unmarked_time_limit", "--max-unmarked-seconds", "0.15")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=4)
    offenders = [line for line in result.outlines if "over the 0.15 s limit" in line]
    assert sorted(line.split(" took ")[0] for line in offenders) == [
        "test_timed.py::TestGroup::test_sleepy_setup",  # a slow fixture counts: setup + call
        "test_timed.py::test_sleepy",
    ]
    assert all("mark it @pytest.mark.slow" in line for line in offenders)


def test_marked_and_quick_tests_pass_the_limit(suite):
    result = suite.runpytest("-p", "unmarked_time_limit", "--max-unmarked-seconds", "0.15", "-k", "quick or marked")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    assert "over the 0.15 s limit" not in result.stdout.str()


def test_without_the_option_nothing_is_timed(suite):
    result = suite.runpytest("-p", "unmarked_time_limit")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=4)


def test_a_failing_run_keeps_its_own_exit_status(suite):
    suite.makepyfile(test_failing="def test_fails():\n    assert False\n")
    result = suite.runpytest("-p", "unmarked_time_limit", "--max-unmarked-seconds", "0.15")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=4, failed=1)
    assert "test_timed.py::test_sleepy took" in result.stdout.str()
