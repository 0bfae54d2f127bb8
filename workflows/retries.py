"""Retry decisions for a step's attempts: pure, so the workflow stays deterministic and unit
tests reach them without Temporal. Mirrors Temporal's activity retry policy semantics."""

from __future__ import annotations

from datetime import timedelta

from schemas.pipeline import RetryPolicy

DEFAULT_MAXIMUM_FACTOR = 100
"""Without `maximum_interval`, the wait is capped at 100 x initial_interval (as Temporal's)."""


def next_delay(
    policy: RetryPolicy, failed_attempt: int, error_type: str, retryable: bool
) -> timedelta | None:
    """The wait before the attempt after `failed_attempt`, or None when the step has failed."""
    if not retryable or error_type in policy.non_retryable_errors:
        return None
    if failed_attempt >= policy.max_attempts:
        return None
    cap = policy.maximum_interval or policy.initial_interval * DEFAULT_MAXIMUM_FACTOR
    seconds = policy.initial_interval.total_seconds() * policy.backoff_coefficient ** (
        failed_attempt - 1
    )
    return min(timedelta(seconds=min(seconds, cap.total_seconds())), cap)
