"""The Redis client of the store and the one wrapper every Redis call goes through.

Owns `connect()` (a client that rides out a Redis restart, but gives up at once when Redis
refuses its credentials) and `guarded(what)`, which turns any `RedisError` into
`StoreUnavailable` naming what failed. Must never be bypassed: code
that talks to Redis outside `with guarded(...)` can leak a RedisError into a scan's result.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from scanfleet.core.errors import BadInput, StoreUnavailable

if TYPE_CHECKING:
    from redis import Redis
    from redis.retry import Retry

T = TypeVar("T")


def _login_final(backoff: Any, attempts: int) -> Retry:
    """redis-py's Retry, except that a refused login is final: AuthenticationError is a
    ConnectionError to redis-py, and retrying a wrong password only delays the error."""
    from redis.exceptions import AuthenticationError
    from redis.retry import Retry

    class LoginFinal(Retry):
        def call_with_retry(
            self,
            do: Callable[[], T],
            fail: Callable[..., Any],
            is_retryable: Callable[[Exception], bool] | None = None,
            with_failure_count: bool = False,
        ) -> T:
            def retryable(e: Exception) -> bool:
                return not isinstance(e, AuthenticationError) and (
                    is_retryable is None or is_retryable(e)
                )

            return super().call_with_retry(do, fail, retryable, with_failure_count)

    return LoginFinal(backoff, attempts)


def connect(url: str, *, retry_seconds: float = 60.0) -> Redis:
    """A client that rides out a Redis restart: connection errors retried with backoff;
    a refused password or ACL user fails the first call."""
    # Imported here: `scan` and `submit --local` keep run state in memory and never pay
    # for redis (and redis.asyncio) at start-up.
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    check_url(url)
    attempts = max(1, int(retry_seconds / 2))
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=30,
        socket_connect_timeout=5,
        health_check_interval=10,
        retry=_login_final(ExponentialBackoff(cap=2.0, base=0.1), attempts),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


REACH_TIMEOUT = 3.0
"""Seconds `check_reachable` waits for Redis to connect and answer PING (one attempt)."""


def check_url(url: str) -> None:
    """BadInput (exit 2) naming the broker URL, without its credentials, when redis-py
    cannot use it: a wrong scheme, a port that is not a number, a bad database number."""
    from redis.connection import parse_url

    from scanfleet.core.logs import redact_text

    try:
        parse_url(url)  # type: ignore[no-untyped-call]
        _address(url)
    except (ValueError, TypeError) as e:
        raise BadInput(
            f"malformed broker URL {redact_text(url)!r} (SCANFLEET_BROKER_URL): {e}; expected "
            "redis://[:password@]host[:port][/db], rediss://... or unix:///path"
        ) from None


def _address(url: str) -> str:
    """host:port (or the socket path) that `url` points at, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def check_reachable(url: str, timeout: float = REACH_TIMEOUT) -> None:
    """One connect and PING within about `timeout` seconds, no retries: StoreUnavailable
    naming host:port and the reason (refused, timed out, name not known, TLS, a refused
    login) when Redis cannot be used now. Commands call it first, so an unreachable
    broker costs seconds, not the minute `connect()`'s retries would ride out."""
    import redis

    check_url(url)
    where = _address(url)
    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=None,
        retry_on_error=[],
    )
    try:
        client.ping()
    except redis.exceptions.AuthenticationError:
        raise StoreUnavailable(
            f"Redis at {where} refused scanfleet's credentials (wrong or missing password "
            "or ACL user in SCANFLEET_BROKER_URL / SCANFLEET_BROKER_URL_FILE)"
        ) from None
    except (redis.exceptions.RedisError, OSError) as e:
        raise StoreUnavailable(f"Redis at {where} is unreachable: {_reason(e)}") from None
    finally:
        client.close()


def _reason(e: BaseException) -> str:
    """The cause of a failed connection in a few words (errno text, timeout, TLS)."""
    from scanfleet.core.logs import redact_text

    text = " ".join(str(e).split()) or type(e).__name__
    return redact_text(text)[:200]


def login_refused(url: str) -> str | None:
    """Why Redis at `url` refuses scanfleet's credentials, or None (accepted, or not
    reachable right now: a start-up may wait for Redis, never for a wrong password)."""
    client = connect(url, retry_seconds=2)
    try:
        with guarded("login"):
            client.ping()
    except StoreUnavailable as e:
        return str(e) if e.__cause__ is not None and _is_login_refused(e.__cause__) else None
    finally:
        client.close()
    return None


class guarded:
    """`with guarded("what"):` — RedisError inside becomes StoreUnavailable naming `what`."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if e is not None and _is_login_refused(e):
            raise StoreUnavailable(
                f"Redis: {self.what}: the broker refused scanfleet's credentials "
                "(wrong or missing password or ACL user in SCANFLEET_BROKER_URL / "
                "SCANFLEET_BROKER_URL_FILE)"
            ) from e
        if e is not None and _is_redis_error(e):
            raise StoreUnavailable(f"Redis: {self.what}: {type(e).__name__}: {str(e)[:200]}") from e


def _is_login_refused(e: BaseException) -> bool:
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(e, exceptions.AuthenticationError)


def _is_redis_error(e: BaseException) -> bool:
    # A process that never imported redis cannot have raised one of its errors.
    exceptions = sys.modules.get("redis.exceptions")
    return exceptions is not None and isinstance(e, exceptions.RedisError)


def call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` under `guarded(what)`: for one-line calls and Lua scripts."""
    with guarded(what):
        return fn(*args, **kwargs)
