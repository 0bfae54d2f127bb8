"""The workflow's retry decisions (Temporal's activity retry semantics, computed by hand)."""

from __future__ import annotations

from datetime import timedelta

from schemas.pipeline import RetryPolicy
from workflows.retries import next_delay


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, initial_interval=1, backoff_coefficient=2,
                         maximum_interval=5)  # fmt: skip
    delays = [next_delay(policy, n, "E", True) for n in range(1, 6)]
    assert delays == [timedelta(seconds=s) for s in (1, 2, 4, 5, 5)]


def test_default_cap_is_100_times_the_initial_interval() -> None:
    policy = RetryPolicy(max_attempts=100, initial_interval=1, backoff_coefficient=10)
    assert next_delay(policy, 50, "E", True) == timedelta(seconds=100)


def test_no_retry_after_the_last_attempt_or_for_non_retryable_errors() -> None:
    policy = RetryPolicy(max_attempts=3, non_retryable_errors=["Bad"])
    assert next_delay(policy, 2, "E", True) is not None
    assert next_delay(policy, 3, "E", True) is None
    assert next_delay(policy, 1, "Bad", True) is None
    assert next_delay(policy, 1, "E", False) is None
