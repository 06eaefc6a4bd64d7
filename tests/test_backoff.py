"""The watch loop's retry delay: doubling, capped, jittered (a pure function)."""

from __future__ import annotations

import pytest

from webhook.watch import backoff_delay


def test_no_failure_no_delay() -> None:
    assert backoff_delay(0, 0.5) == 0.0


@pytest.mark.parametrize(
    ("failures", "full"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (50, 30.0), (10_000, 30.0)],
)
def test_doubles_from_base_and_is_capped(failures: int, full: float) -> None:
    # jitter → 1.0 gives the full delay, jitter 0 half of it
    assert backoff_delay(failures, 0.0) == pytest.approx(full / 2)
    assert backoff_delay(failures, 0.999999) == pytest.approx(full, rel=1e-5)


def test_jitter_spreads_replicas_within_half_to_full() -> None:
    delays = [backoff_delay(5, j / 100) for j in range(100)]
    assert min(delays) == pytest.approx(4.0)
    assert max(delays) < 8.0
    assert len(set(delays)) == 100  # no two replicas in lockstep


def test_grows_monotonically_until_the_cap() -> None:
    delays = [backoff_delay(n, 0.5) for n in range(1, 12)]
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(30.0 * 0.75)


def test_custom_base_and_cap() -> None:
    assert backoff_delay(3, 0.0, base=0.1, cap=1.0) == pytest.approx(0.2)
    assert backoff_delay(20, 0.0, base=0.1, cap=1.0) == pytest.approx(0.5)
