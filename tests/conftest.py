"""Shared pytest configuration.

`--update-golden` rewrites the expected files of the golden tests (tests/golden/<case>/
expected.yaml) from what meshgate produces now. Review the diff before committing it: the
expected files are the reviewed contract, not a snapshot to be refreshed blindly.
"""

from __future__ import annotations

import pytest


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
