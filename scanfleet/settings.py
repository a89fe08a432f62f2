"""Settings: one frozen dataclass, read from the environment in one place.

Command-line flags override these; library code receives a Settings value and never reads
the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scanfleet.errors import BadInput
from scanfleet.policy import DEFAULT_ALLOWED_PROFILES, parse_allowed_profiles

TOKEN_TTL_MIN = 600
TOKEN_TTL_MAX = 86400


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://localhost:6379/0"
    """Celery broker and run-state store (SCANFLEET_BROKER_URL)."""
    results_dir: Path = Path("scanfleet-results")
    """Where run directories are written (SCANFLEET_RESULTS_DIR)."""
    auditor: str = "cinc-auditor"
    """The auditor executable (SCANFLEET_AUDITOR)."""
    cluster_concurrency: int = 10
    """Most scans at once against one cluster, all workers together.

    (SCANFLEET_CLUSTER_CONCURRENCY)"""
    token_ttl: int = 3600
    """Seconds a scan token lives; 600..86400 and above the scan timeout (SCANFLEET_TOKEN_TTL)."""
    scan_timeout: int = 1800
    """Seconds before the auditor's process group is terminated (SCANFLEET_SCAN_TIMEOUT)."""
    log_format: str = "json"
    """`json` (one object per line) or `console` (SCANFLEET_LOG_FORMAT)."""
    retention_days: int = 30
    """Runs older than this are pruned from Redis and the results dir (SCANFLEET_RETENTION_DAYS)."""
    key_prefix: str = "scanfleet"
    """Prefix of every Redis key scanfleet writes (SCANFLEET_KEY_PREFIX)."""
    allowed_profiles: tuple[str, ...] = DEFAULT_ALLOWED_PROFILES
    """Profile path and URL prefixes a plan may name (SCANFLEET_ALLOWED_PROFILES, separated
    by os.pathsep or commas; default: any local path and https URL). See policy.py."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port from `worker` and `beat`; 0: off.

    (SCANFLEET_METRICS_PORT)"""
    metrics_per_namespace: bool = False
    """Beat's compliance gauges also per namespace (SCANFLEET_METRICS_PER_NAMESPACE=1)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        d = cls()
        return cls(
            broker_url=broker_url(env) or d.broker_url,
            results_dir=Path(env.get("SCANFLEET_RESULTS_DIR") or d.results_dir),
            auditor=env.get("SCANFLEET_AUDITOR") or d.auditor,
            cluster_concurrency=env_int(
                env, "SCANFLEET_CLUSTER_CONCURRENCY", d.cluster_concurrency, 1
            ),
            token_ttl=env_int(env, "SCANFLEET_TOKEN_TTL", d.token_ttl, 1),
            scan_timeout=env_int(env, "SCANFLEET_SCAN_TIMEOUT", d.scan_timeout, 1),
            log_format=_choice(env, "SCANFLEET_LOG_FORMAT", d.log_format, ("json", "console")),
            retention_days=env_int(env, "SCANFLEET_RETENTION_DAYS", d.retention_days, 1),
            key_prefix=env.get("SCANFLEET_KEY_PREFIX") or d.key_prefix,
            allowed_profiles=parse_allowed_profiles(env.get("SCANFLEET_ALLOWED_PROFILES")),
            metrics_port=env_int(env, "SCANFLEET_METRICS_PORT", d.metrics_port, 0),
            metrics_per_namespace=_choice(
                env, "SCANFLEET_METRICS_PER_NAMESPACE", "0", ("0", "1")
            ) == "1",
        )


def broker_url(env: Mapping[str, str]) -> str | None:
    """SCANFLEET_BROKER_URL if set and not empty, else the first line of the file named by
    SCANFLEET_BROKER_URL_FILE (a mounted Secret holding a URL with a password), else None."""
    url = env.get("SCANFLEET_BROKER_URL", "").strip()
    if url:
        return url
    path = env.get("SCANFLEET_BROKER_URL_FILE", "").strip()
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BadInput(
            f"SCANFLEET_BROKER_URL_FILE={path!r} cannot be read: {e.strerror}"
        ) from None
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first:
        raise BadInput(f"SCANFLEET_BROKER_URL_FILE={path!r} is empty")
    return first


def check_ttl(token_ttl: int, scan_timeout: int) -> None:
    """The token must outlive the scan, within the bounds the TokenRequest API accepts."""
    if not TOKEN_TTL_MIN <= token_ttl <= TOKEN_TTL_MAX:
        raise BadInput(
            f"token TTL {token_ttl}s is out of range: allowed {TOKEN_TTL_MIN}..{TOKEN_TTL_MAX}"
        )
    if scan_timeout < 1:
        raise BadInput(f"scan timeout {scan_timeout}s must be positive")
    if token_ttl <= scan_timeout:
        raise BadInput(f"token TTL {token_ttl}s must exceed the scan timeout {scan_timeout}s")


def env_int(env: Mapping[str, str], key: str, default: int, minimum: int = 1) -> int:
    """A whole-number setting; BadInput naming the variable and value when it is not."""
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInput(f"{key}={raw!r} is not a whole number") from None
    if value < minimum:
        raise BadInput(f"{key}={raw!r} must be at least {minimum}")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(key)
    if not raw:
        return default
    if raw not in allowed:
        raise BadInput(f"{key}={raw!r} must be one of {', '.join(allowed)}")
    return raw
