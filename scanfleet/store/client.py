"""The Redis client of the store and the one wrapper every Redis call goes through.

Owns `connect()` (a client that rides out a Redis restart) and `guarded(what)`, which turns
any `RedisError` into `StoreUnavailable` naming what failed. Must never be bypassed: code
that talks to Redis outside `with guarded(...)` can leak a RedisError into a scan's result.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from scanfleet.errors import StoreUnavailable

if TYPE_CHECKING:
    from redis import Redis


def connect(url: str, *, retry_seconds: float = 60.0) -> Redis:
    """A client that rides out a Redis restart: connection errors retried with backoff."""
    # Imported here: `scan` and `submit --local` keep run state in memory and never pay
    # for redis (and redis.asyncio) at start-up.
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from redis.retry import Retry

    attempts = max(1, int(retry_seconds / 2))
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), attempts),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class guarded:
    """`with guarded("what"):` — RedisError inside becomes StoreUnavailable naming `what`."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: object
    ) -> None:
        if e is not None and _is_redis_error(e):
            raise StoreUnavailable(
                f"Redis: {self.what}: {type(e).__name__}: {str(e)[:200]}"
            ) from e


def _is_redis_error(e: BaseException) -> bool:
    # A process that never imported redis cannot have raised one of its errors.
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(e, exceptions.RedisError)


def call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` under `guarded(what)`: for one-line calls and Lua scripts."""
    with guarded(what):
        return fn(*args, **kwargs)
