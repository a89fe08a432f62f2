"""Time for scanfleet: the clock, RFC 3339 text, and the fleet's one retry policy.

- `utcnow()` is the default clock; services take `now=` so tests inject their own.
- `iso()` is the timestamp format of every result file (RFC 3339, UTC, `Z`, sub-second
  precision kept); `rfc3339()` the whole-second form Kubernetes annotations and logs use.
- `RETRY_DELAYS` is the one table of retry delays, keyed by the error class a driver
  retries, and `backoff()` the one function turning an attempt number into a delay.

Pure: never sleeps, never reads the environment, never logs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from scanfleet.core.errors import ClusterUnavailable, NoSlot, SlotBusy, StoreUnavailable

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, keeping sub-second precision (result files)."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def rfc3339(t: datetime) -> str:
    """RFC 3339 in UTC to the whole second (annotations, schedules, log fields)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Delay:
    """How long to wait before retry `attempt` (0-based): base·2^attempt, capped, plus jitter.

    `attempts` bounds the retries (None: retry for as long as the condition lasts);
    `lease_fraction`, when set, replaces `base` and `cap` with that fraction of the
    cluster-slot lease (a redelivered scan checks back once the other copy could end).
    """

    base: float
    cap: float
    jitter: float = 0.0
    attempts: int | None = None
    lease_fraction: float | None = None


RETRY_DELAYS: dict[type[Exception], Delay] = {
    # Most specific first: the first class the error is an instance of wins.
    ClusterUnavailable: Delay(base=15, cap=300, attempts=4),
    SlotBusy: Delay(base=1, cap=1, lease_fraction=0.5),
    NoSlot: Delay(base=1, cap=1, jitter=1.0),
    StoreUnavailable: Delay(base=5, cap=5),
}


RBAC_PROPAGATION = Delay(base=0.1, cap=2.0)
"""Between reads of a scan's pod with its new token while the authorizer has not caught up
with the new RoleBinding (401/403), until the access check's deadline."""


def retry_delay(error: BaseException) -> Delay | None:
    """The row of `RETRY_DELAYS` for a retryable error; None when it must not be retried."""
    if not getattr(error, "retryable", False):
        return None
    for cls, delay in RETRY_DELAYS.items():
        if isinstance(error, cls):
            return delay
    return None


def backoff(
    delay: Delay,
    attempt: int,
    *,
    lease_seconds: float = 60.0,
    rand: Callable[[], float] = random.random,
    scale: float = 1.0,
) -> float:
    """Seconds to wait before retry number `attempt` (0-based) under `delay`.

    `scale` (Settings.retry_delay_scale) multiplies the table's pauses; a lease-derived
    row follows the lease instead, which has its own setting."""
    if delay.lease_fraction is not None:
        return max(1.0, float(int(lease_seconds * delay.lease_fraction)))
    return scale * float(min(delay.cap, delay.base * 2**attempt) + delay.jitter * rand())
