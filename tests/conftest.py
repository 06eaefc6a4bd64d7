"""Shared pytest configuration.

`--update-golden` rewrites the expected files of the golden tests (tests/golden/<case>/
expected.yaml) from what meshgate produces now. Review the diff before committing it: the
expected files are the reviewed contract, not a snapshot to be refreshed blindly.

Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (default "ci"):
- "ci" (`make test`): derandomized and without the example database, so every run tries the
  same examples and a CI result never depends on an earlier run; no deadline (this machine
  has two cores and other tests run servers in threads).
- "fuzz" (`make fuzz`): random, FUZZ_SCALE (default 20) times the examples of "ci", and
  failures are kept in .hypothesis/ to be replayed first next time. tests/test_fuzz.py
  scales each test's budget by this profile's max_examples / 100.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

_SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=_SLOW_IS_FINE,
)  # fmt: skip
settings.register_profile(
    "fuzz", max_examples=100 * int(os.environ.get("FUZZ_SCALE", "20")), deadline=None,
    print_blob=True, suppress_health_check=_SLOW_IS_FINE,
)  # fmt: skip
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Lines for the "fuzz" section of the terminal summary (see the fuzz_summary fixture).
_FUZZ_SUMMARY = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*/expected.yaml from the current output (review the diff)",
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def fuzz_summary(request: pytest.FixtureRequest) -> list[str]:
    """Lines a test module appends to be printed in the terminal summary (example counts)."""
    return request.config.stash.setdefault(_FUZZ_SUMMARY, [])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FUZZ_SUMMARY, [])
    if lines:
        terminalreporter.section("fuzz")
        for line in lines:
            terminalreporter.write_line(line)
