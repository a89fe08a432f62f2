"""Settings: one frozen dataclass, read from the environment here and nowhere else.

Owns every environment variable scanfleet reads (`Settings.from_env`, including the
sandbox's SCANFLEET_SANDBOX* and SCANFLEET_RESULTS_GROUP_READ; prometheus_client's
multiprocess directory, the one variable written for a library) and the snapshot of the
process environment the auditor's allowlist is filtered from (`Settings.environment`).
Command-line flags override these; library code receives a Settings value (or the value it
needs): no other module imports `os.environ` (tests/unit/test_layout.py checks).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from scanfleet.core.errors import BadInput
from scanfleet.core.policy import DEFAULT_ALLOWED_PROFILES, parse_allowed_profiles

TOKEN_TTL_MIN = 600
TOKEN_TTL_MAX = 86400
MINT_MARGIN = 120
"""Seconds a token must outlive the scan timeout by: minting, the access check (which
waits out RBAC propagation) and the revoke all happen inside the token's lifetime."""
REPORT_MAX_BYTES_ENV = "SCANFLEET_REPORT_MAX_BYTES"
DEFAULT_REPORT_MAX_BYTES = 256 * 1024 * 1024


SANDBOX_ENV = "SCANFLEET_SANDBOX"
ALLOW_READ_ENV = "SCANFLEET_SANDBOX_ALLOW_READ"
ALLOW_WRITE_ENV = "SCANFLEET_SANDBOX_ALLOW_WRITE"
PROTECT_ENV = "SCANFLEET_SANDBOX_PROTECT"
DEFAULT_PROTECT = ("/var/run/secrets", "/run/secrets")


@dataclass(frozen=True)
class SandboxSettings:
    """The operator's auditor-sandbox settings (`scanfleet.sandbox.policy.SandboxSettings`)."""

    enabled: bool = True
    """False only with SCANFLEET_SANDBOX=off: the auditor runs unconfined."""
    allow_read: tuple[Path, ...] = ()
    """Extra read+execute paths (SCANFLEET_SANDBOX_ALLOW_READ, os.pathsep-separated)."""
    allow_write: tuple[Path, ...] = ()
    """Extra read+write paths (SCANFLEET_SANDBOX_ALLOW_WRITE, os.pathsep-separated)."""
    protect: tuple[Path, ...] = tuple(Path(p) for p in DEFAULT_PROTECT)
    """Paths no allow rule may cover (SCANFLEET_SANDBOX_PROTECT; default the service
    account secret mounts)."""
    broker_url_file: Path | None = None
    """SCANFLEET_BROKER_URL_FILE: no rule may cover it either."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SandboxSettings:
        raw = (env.get(SANDBOX_ENV) or "on").strip().lower()
        if raw not in ("on", "off", "landlock"):
            raise BadInput(f"{SANDBOX_ENV}={raw!r} must be 'on' (the default) or 'off'")
        protect = _paths(env.get(PROTECT_ENV)) or cls().protect
        broker_file = (env.get("SCANFLEET_BROKER_URL_FILE") or "").strip()
        return cls(
            raw != "off",
            _paths(env.get(ALLOW_READ_ENV)),
            _paths(env.get(ALLOW_WRITE_ENV)),
            protect,
            Path(broker_file) if broker_file else None,
        )


def allowed_inputs(raw: str | None) -> tuple[Path, ...]:
    """SCANFLEET_ALLOWED_INPUTS: absolute path prefixes, separated by os.pathsep or commas."""
    parts = [p.strip() for chunk in (raw or "").split(os.pathsep) for p in chunk.split(",")]
    for p in parts:
        if p and not os.path.isabs(p):
            raise BadInput(f"SCANFLEET_ALLOWED_INPUTS entry {p!r} must be an absolute path")
    return tuple(Path(p) for p in parts if p)


def _paths(raw: str | None) -> tuple[Path, ...]:
    return tuple(Path(p) for p in (raw or "").split(os.pathsep) if p.strip())


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
    """Seconds a scan token lives; 600..86400 and at least the scan timeout plus MINT_MARGIN
    (SCANFLEET_TOKEN_TTL)."""
    scan_timeout: int = 1800
    """Seconds before the auditor's process group is terminated (SCANFLEET_SCAN_TIMEOUT)."""
    log_format: str = "auto"
    """`json` (one object per line), `console` (human lines), or `auto`: console when
    stderr is a terminal, else json (SCANFLEET_LOG_FORMAT)."""
    retention_days: int = 30
    """Runs older than this are pruned from Redis and the results dir (SCANFLEET_RETENTION_DAYS)."""
    key_prefix: str = "scanfleet"
    """Prefix of every Redis key scanfleet writes (SCANFLEET_KEY_PREFIX)."""
    kubeconfig: str = field(default_factory=lambda: str(Path("~/.kube/config").expanduser()))
    """Admin kubeconfig when no --kubeconfig is given: $KUBECONFIG (may be a ':'-separated
    list), else ~/.kube/config."""
    visibility_timeout: int | None = None
    """Seconds an unacknowledged Celery message waits before redelivery; None: derived from
    the scan timeout (SCANFLEET_VISIBILITY_TIMEOUT)."""
    lease_seconds: int = 60
    """A cluster-slot lease's lifetime between heartbeats (SCANFLEET_LEASE_SECONDS)."""
    early_revoke_after: int = 300
    """The workers' janitor revokes a fleet scan's identity whose scan holds no live lease
    once it is this many seconds old, before its expiry; 0: never early
    (SCANFLEET_EARLY_REVOKE_AFTER)."""
    allowed_profiles: tuple[str, ...] = DEFAULT_ALLOWED_PROFILES
    """Profile path and URL prefixes a plan may name (SCANFLEET_ALLOWED_PROFILES, separated
    by os.pathsep or commas; default: any local path and https URL). See policy.py."""
    metrics_port: int = 0
    """Serve Prometheus /metrics on this port from `worker` and `beat`; 0: off.

    (SCANFLEET_METRICS_PORT)"""
    metrics_per_namespace: bool = False
    """Beat's compliance gauges also per namespace (SCANFLEET_METRICS_PER_NAMESPACE=1)."""
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    """The auditor sandbox (SCANFLEET_SANDBOX, SCANFLEET_SANDBOX_ALLOW_READ/_WRITE/_PROTECT)."""
    results_group_read: bool = False
    """Results 0750/0640 instead of 0700/0600 (SCANFLEET_RESULTS_GROUP_READ=1)."""
    profile_cache: Path | None = None
    """Private (0700) cache of fetched URL profiles; None: `<tmp>/scanfleet.profiles.fetch.<uid>`
    (SCANFLEET_PROFILE_CACHE)."""
    profile_max_bytes: int = 64 * 1024 * 1024
    """Largest profile archive downloaded, bytes (SCANFLEET_PROFILE_MAX_BYTES)."""
    profile_timeout: int = 120
    """Seconds a profile download may take in all (SCANFLEET_PROFILE_TIMEOUT)."""
    retry_delay_scale: float = 1.0
    """Multiplies the fleet's retry pauses of `clock.RETRY_DELAYS` (those not derived from
    the lease): 0.01 turns 15..120 s into 0.15..1.2 s, for tests (SCANFLEET_RETRY_DELAY_SCALE)."""
    kube_retries: int = 5
    """Retries of one Kubernetes API request in a worker (connection errors, 429, 5xx; with
    urllib3's backoff, 5 take about 15 s) before the scan is re-queued (SCANFLEET_KUBE_RETRIES)."""
    allowed_inputs: tuple[Path, ...] = ()
    """Absolute path prefixes of the input and waiver files a worker grants a plan
    (SCANFLEET_ALLOWED_INPUTS, os.pathsep- or comma-separated; default none: a worker
    refuses a plan naming any). See scanfleet/sandbox/inputs.py."""
    report_max_bytes: int = DEFAULT_REPORT_MAX_BYTES
    """Largest auditor report read, bytes; a larger one is `invalid_report`
    (SCANFLEET_REPORT_MAX_BYTES; `report_max_bytes()` reads it below a Settings value)."""
    no_color: bool = False
    """No colour in log lines and summaries, whatever the terminal (NO_COLOR set, not empty:
    https://no-color.org)."""
    environment: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    """The process environment `from_env` read (a copy): the base the auditor's and the
    profile vendoring's allowlisted environments are filtered from. Never logged."""
    results_url: str = ""
    """SCANFLEET_RESULTS_DIR as given: a directory, or `s3://bucket/prefix` (store.results);
    empty: `results_dir` (a Settings built in code names its directory there)."""
    s3_endpoint: str | None = None
    """S3 endpoint for MinIO/Ceph (SCANFLEET_S3_ENDPOINT); None: the AWS default chain's."""
    s3_timeout: float = 30.0
    """Seconds one S3 request may take before it is retried (SCANFLEET_S3_TIMEOUT)."""

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
            log_format=_choice(
                env, "SCANFLEET_LOG_FORMAT", d.log_format, ("json", "console", "auto")
            ),
            retention_days=env_int(env, "SCANFLEET_RETENTION_DAYS", d.retention_days, 1),
            key_prefix=env.get("SCANFLEET_KEY_PREFIX") or d.key_prefix,
            kubeconfig=env.get("KUBECONFIG") or d.kubeconfig,
            visibility_timeout=(
                env_int(env, "SCANFLEET_VISIBILITY_TIMEOUT", 0, 1)
                if env.get("SCANFLEET_VISIBILITY_TIMEOUT")
                else None
            ),
            lease_seconds=env_int(env, "SCANFLEET_LEASE_SECONDS", d.lease_seconds, 1),
            early_revoke_after=env_int(
                env, "SCANFLEET_EARLY_REVOKE_AFTER", d.early_revoke_after, 0
            ),
            allowed_profiles=parse_allowed_profiles(env.get("SCANFLEET_ALLOWED_PROFILES")),
            metrics_port=env_int(env, "SCANFLEET_METRICS_PORT", d.metrics_port, 0),
            metrics_per_namespace=_choice(env, "SCANFLEET_METRICS_PER_NAMESPACE", "0", ("0", "1"))
            == "1",
            sandbox=SandboxSettings.from_env(env),
            results_group_read=results_group_read(env),
            profile_cache=Path(env["SCANFLEET_PROFILE_CACHE"])
            if env.get("SCANFLEET_PROFILE_CACHE")
            else None,
            profile_max_bytes=env_int(env, "SCANFLEET_PROFILE_MAX_BYTES", d.profile_max_bytes, 1),
            profile_timeout=env_int(env, "SCANFLEET_PROFILE_TIMEOUT", d.profile_timeout, 1),
            retry_delay_scale=env_float(env, "SCANFLEET_RETRY_DELAY_SCALE", d.retry_delay_scale),
            kube_retries=env_int(env, "SCANFLEET_KUBE_RETRIES", d.kube_retries, 0),
            allowed_inputs=allowed_inputs(env.get("SCANFLEET_ALLOWED_INPUTS")),
            report_max_bytes=report_max_bytes(env),
            no_color=bool(env.get("NO_COLOR")),
            environment=dict(env),
            results_url=env.get("SCANFLEET_RESULTS_DIR") or d.results_url,
            s3_endpoint=env.get("SCANFLEET_S3_ENDPOINT") or None,
            s3_timeout=env_float(env, "SCANFLEET_S3_TIMEOUT", d.s3_timeout),
        )


def environment_snapshot() -> dict[str, str]:
    """A copy of this process's environment, for code without a Settings value that must
    pass variables on to a child (scanfleet.testing); never the live mapping."""
    return dict(os.environ)


def report_max_bytes(env: Mapping[str, str] | None = None) -> int:
    """SCANFLEET_REPORT_MAX_BYTES (default 256 MiB), for code below a Settings value (the
    scan reading its report); BadInput naming the value when it is not a whole number >= 1."""
    env = os.environ if env is None else env
    return env_int(env, REPORT_MAX_BYTES_ENV, DEFAULT_REPORT_MAX_BYTES, 1)


RESULTS_GROUP_READ_ENV = "SCANFLEET_RESULTS_GROUP_READ"
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def results_group_read(env: Mapping[str, str]) -> bool:
    """SCANFLEET_RESULTS_GROUP_READ: 1 makes results 0750/0640 instead of 0700/0600."""
    raw = env.get(RESULTS_GROUP_READ_ENV, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("", "0", "false", "no", "off"):
        return False
    raise BadInput(f"{RESULTS_GROUP_READ_ENV}={raw!r} must be 1 or 0")


def prometheus_multiproc_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR: where prometheus_client's forked children count, if set."""
    return os.environ.get(PROMETHEUS_MULTIPROC_ENV) or None


def set_prometheus_multiproc_dir(directory: str) -> None:
    """Export PROMETHEUS_MULTIPROC_DIR to this process and every child forked after it
    (prometheus_client reads it from the environment)."""
    os.environ[PROMETHEUS_MULTIPROC_ENV] = directory


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
        raise BadInput(f"SCANFLEET_BROKER_URL_FILE={path!r} cannot be read: {e.strerror}") from None
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
    if token_ttl < scan_timeout + MINT_MARGIN:
        raise BadInput(
            f"token TTL {token_ttl}s must exceed the scan timeout {scan_timeout}s by at least "
            f"{MINT_MARGIN}s (the time to mint, check access and revoke): use a TTL of at "
            f"least {scan_timeout + MINT_MARGIN}s or a shorter timeout"
        )


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


def env_float(env: Mapping[str, str], key: str, default: float) -> float:
    """A positive number setting; BadInput naming the variable and value when it is not."""
    raw = env.get(key)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadInput(f"{key}={raw!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise BadInput(f"{key}={raw!r} must be a positive number")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(key)
    if not raw:
        return default
    if raw not in allowed:
        raise BadInput(f"{key}={raw!r} must be one of {', '.join(allowed)}")
    return raw


HEIMDALL_API_KEY_ENV = "SCANFLEET_HEIMDALL_API_KEY"
HEIMDALL_API_KEY_FILE_ENV = "SCANFLEET_HEIMDALL_API_KEY_FILE"


def heimdall_api_key(env: Mapping[str, str] | None = None) -> str | None:
    """The Heimdall API key (`report --heimdall-url`, a sweep's `upload:`): SCANFLEET_HEIMDALL_
    API_KEY if set, else the first line of the file SCANFLEET_HEIMDALL_API_KEY_FILE names (a
    mounted Secret), else None. Never a command-line flag; errors never carry the key."""
    env = os.environ if env is None else env
    key = env.get(HEIMDALL_API_KEY_ENV, "").strip()
    if key:
        return key
    path = env.get(HEIMDALL_API_KEY_FILE_ENV, "").strip()
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise BadInput(f"{HEIMDALL_API_KEY_FILE_ENV}={path!r} cannot be read: {why}") from None
    first = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not first:
        raise BadInput(f"{HEIMDALL_API_KEY_FILE_ENV}={path!r} is empty")
    return first
