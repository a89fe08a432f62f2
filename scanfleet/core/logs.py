"""Logging: structlog configuration and the redaction processor.

Library code only gets loggers (`structlog.get_logger()`) and binds context; the CLI and
the worker call `configure()` once. The redaction processor drops tokens and kubeconfig
content whatever key they arrive under — by key name and by value shape — so a mistake
elsewhere cannot leak a credential into a log line.

Redaction is by value and by shape:
- by value: every secret the process knows — scan tokens while they live (`secret()`), and
  for the process's life (`remember()`, `remember_url()`) the broker URL's password and
  the admin credential's token or password;
- by shape: PEM blocks, JWTs, `Bearer`/`Basic` credentials, URL userinfo
  (`scheme://user:password@`), and token/password/secret/key-data fields (and the cloud
  providers' secret names: `aws_secret_access_key`, `client_secret`, `private_key`,
  `AccountKey`, ...) of JSON, YAML, INI or key=value text, quoted or not.
Control characters and escape sequences are stripped before either, so a secret split by
them is still found.
It applies to structlog (a processor, plus a last pass over the rendered line) and to
stdlib logging alike: `configure()` wraps the formatter of every root handler, where
Celery's, kombu's and urllib3's records end up. It must never print a secret it was given
(it has no debug output of its own).
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import structlog

from scanfleet.core.textsafe import strip_controls

REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(
    r"(token|authorization|password|secret|kubeconfig|client[-_]key|bearer|credential|"
    r"private[-_]?key|access[-_]?key|account[-_]?key)",
    re.IGNORECASE,
)
# Names of fields that hold a secret (the key ends with one): generic, kubeconfig, and the
# cloud providers' (AWS access keys, Azure client secrets and storage/SAS keys, GCP
# service-account private keys).
_CREDENTIAL_FIELDS = (
    r"(?:token|password|passwd|secret|client-key-data|certificate-authority-data|"
    r"client-certificate-data|api[_-]?key|secret[_-]?access[_-]?key|private[_-]?key(?:[_-]?id)?|"
    r"account[_-]?key|shared[_-]?access[_-]?key|access[_-]?key|connection[_-]?string)"
)
# A key, bare or in double or single quotes.
_KEY = (
    rf"(?:\"[A-Za-z0-9_.-]*{_CREDENTIAL_FIELDS}\"|'[A-Za-z0-9_.-]*{_CREDENTIAL_FIELDS}'"
    rf"|\b[A-Za-z0-9_.-]*{_CREDENTIAL_FIELDS})"
)
# Shapes of a credential, whatever the process knows about it. Each pattern's group 1 (if
# any) is kept, so the reader still sees what kind of thing was removed.
_SECRET_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM blocks (private keys, certificates: a client cert identifies an admin too).
    (re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.S), REDACTED),
    # JWTs (service account tokens are JWTs).
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Authorization headers and the like: Bearer / Basic credentials.
    (re.compile(r"\b((?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=:-]{6,}", re.I), rf"\1{REDACTED}"),
    # URL userinfo: scheme://user:password@host, scheme://:password@host.
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/\s@:]*:[^/\s@]*@"), rf"\1{REDACTED}@"),
    # Quoted values, whatever quotes the key: JSON `"token": "..."`, YAML `token: "..."` or
    # `password: 'x'`, `secret = "..."`.
    (
        re.compile(rf"({_KEY}\s*[:=]\s*)\"(?:[^\"\\]|\\.)*\"", re.I),
        rf'\1"{REDACTED}"',
    ),
    (
        re.compile(rf"({_KEY}\s*[:=]\s*)'(?:[^'\\]|\\.)*'", re.I),
        rf"\1'{REDACTED}'",
    ),
    # Unquoted YAML / key=value / INI text: token: x, password=x, aws_secret_access_key = x.
    (
        re.compile(rf"({_KEY}\s*[:=]\s*)(?!\[REDACTED\])[^\s,;}}\]\"']+", re.I),
        rf"\1{REDACTED}",
    ),
)
_SAFE_KEYS = {
    "event",
    "level",
    "timestamp",
    "logger",
    "scan_id",
    "run_id",
    "token_ttl",
    "kubeconfig_path",
}


_live_secrets: set[str] = set()
_known_secrets: set[str] = set()
_live_lock = threading.Lock()
_MIN_SECRET_LEN = 4
"""Shorter values are not redacted by value (replacing every "ab" would wreck the text)."""


@contextmanager
def secret(value: str) -> Iterator[None]:
    """While inside, `value` itself is redacted from every log line and scrubbed text.

    Shape rules catch JWTs; this catches a credential of any shape (a cluster may issue
    opaque tokens) for as long as it lives.
    """
    with _live_lock:
        _live_secrets.add(value)
    try:
        yield
    finally:
        with _live_lock:
            _live_secrets.discard(value)


def remember(*values: str | None) -> None:
    """Redact these values for the rest of the process's life (the broker password, the
    admin credential's token or key): secrets the process holds from start to end."""
    with _live_lock:
        _known_secrets.update(v for v in values if v and len(v) >= _MIN_SECRET_LEN)


def remember_url(url: str | None) -> None:
    """Remember the userinfo (user name and password) of a URL such as the broker URL."""
    if not url or "://" not in url:
        return
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password else None
    remember(parts.password, password)


def redact_text(text: str, *extra: str) -> str:
    """Replace credential shapes (PEM blocks, JWTs, Bearer/Basic credentials, URL userinfo,
    token/password fields of JSON and YAML text), every live or remembered secret, and the
    `extra` values given.

    Escape sequences and control characters (newline and tab kept) are removed first: a
    token split by `ESC[0m`, NUL or BEL reads whole on a terminal, so it must be found whole.
    """
    text = strip_controls(text)
    with _live_lock:
        values = sorted({*_live_secrets, *_known_secrets, *extra}, key=len, reverse=True)
    for v in values:
        if v:
            text = text.replace(v, REDACTED)
    for pattern, repl in _SECRET_SHAPES:
        text = pattern.sub(repl, text)
    return text


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: (REDACTED if _is_secret_key(k) else _redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(repr(value))
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and key not in _SAFE_KEYS and bool(_SECRET_KEYS.search(key))


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: drop secret-named keys, scrub secret-shaped values."""
    for key in list(event_dict):
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


def _redact_rendered(_logger: Any, _name: str, event_dict: Any) -> Any:
    # After rendering (exceptions formatted into text): one last scrub of the whole line.
    return redact_text(event_dict) if isinstance(event_dict, str) else event_dict


def configure(
    fmt: str = "json", level: int | None = None, *, colors: bool = False, verbosity: int = 0
) -> str:
    """Configure structlog (and stdlib logging, for libraries) once, at an entry point.

    `fmt`: "json" (one object per line), "console" (human lines; colour if `colors`), or
    "auto": console when stderr is a terminal, else json. `level` defaults to WARNING for
    console (a terminal shows the progress bar, not every scan's events) and INFO for
    json; each `verbosity` step (-v) lowers it one level, each negative step (-q) raises
    it. Returns the format chosen ("json" or "console").
    """
    if fmt == "auto":
        fmt = "console" if _is_terminal(sys.stderr) else "json"
    if level is None:
        level = logging.WARNING if fmt == "console" else logging.INFO
    level = min(logging.CRITICAL, max(logging.DEBUG, level - 10 * verbosity))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        # Once, after exceptions are formatted into text (it covers every key then).
        redact_processor,
        renderer,
        _redact_rendered,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    install_stdlib_redaction()
    # urllib3 logs retries with full URLs (no credentials), but keep it quiet and scrubbed.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.ERROR)
    return fmt


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: the whole formatted record (message, arguments,
    traceback) is scrubbed by `redact_text` before it is written."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter("%(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(self.inner.format(record))


def install_stdlib_redaction(logger: logging.Logger | None = None) -> None:
    """Scrub every handler of `logger` (default: the root logger, where Celery, kombu and
    urllib3 records end up). Safe to call again after handlers are added."""
    for handler in (logger or logging.getLogger()).handlers:
        if not isinstance(handler.formatter, RedactingFormatter):
            handler.setFormatter(RedactingFormatter(handler.formatter))
