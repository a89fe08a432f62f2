"""The clock module: RFC 3339 text and the one retry-delay table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from scanfleet.core.clock import RETRY_DELAYS, backoff, iso, retry_delay, rfc3339
from scanfleet.core.errors import (
    ClusterApiError,
    ClusterUnavailable,
    NoSlot,
    SlotBusy,
    StoreUnavailable,
    TargetNotFound,
)


def test_iso_and_rfc3339_are_utc_with_z() -> None:
    t = datetime(2026, 1, 2, 4, 5, 6, 500000, tzinfo=timezone(timedelta(hours=1)))
    assert iso(t) == "2026-01-02T03:05:06.500000Z"
    assert rfc3339(t) == "2026-01-02T03:05:06Z"
    assert rfc3339(datetime(2026, 1, 2, tzinfo=UTC)) == "2026-01-02T00:00:00Z"


def test_retry_delay_follows_retryable_and_the_most_specific_class() -> None:
    assert retry_delay(TargetNotFound("x")) is None
    assert retry_delay(ClusterApiError("x")) is None  # same kind, not retryable
    assert retry_delay(ClusterUnavailable("x")) is RETRY_DELAYS[ClusterUnavailable]
    assert retry_delay(SlotBusy("x")) is RETRY_DELAYS[SlotBusy]
    assert retry_delay(NoSlot("x")) is RETRY_DELAYS[NoSlot]
    assert retry_delay(StoreUnavailable("x")) is RETRY_DELAYS[StoreUnavailable]


def test_backoff_doubles_up_to_its_cap_and_follows_the_lease() -> None:
    unavailable = RETRY_DELAYS[ClusterUnavailable]
    assert [backoff(unavailable, n) for n in range(6)] == [15, 30, 60, 120, 240, 300]
    assert unavailable.attempts == 4
    assert backoff(RETRY_DELAYS[SlotBusy], 0, lease_seconds=60) == 30
    assert backoff(RETRY_DELAYS[SlotBusy], 0, lease_seconds=3) == 1
    assert backoff(RETRY_DELAYS[NoSlot], 0, rand=lambda: 0.5) == 1.5
    assert backoff(RETRY_DELAYS[StoreUnavailable], 7) == 5
