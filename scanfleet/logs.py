"""Logging: structlog configuration and the redaction processor.

Library code only gets loggers (`structlog.get_logger()`) and binds context; the CLI and
the worker call `configure()` once. The redaction processor drops tokens and kubeconfig
content whatever key they arrive under — by key name and by value shape — so a mistake
elsewhere cannot leak a credential into a log line.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

REDACTED = "[REDACTED]"
_SECRET_KEYS = re.compile(
    r"(token|authorization|password|secret|kubeconfig|client[-_]key|bearer|credential)",
    re.IGNORECASE,
)
# A JWT (service account tokens are JWTs), a Bearer header, or an inline kubeconfig.
_SECRET_VALUES = re.compile(
    r"(eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|Bearer\s+\S+"
    r"|(?:client-key-data|token|certificate-authority-data)\s*:\s*\S+)",
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
_live_lock = threading.Lock()


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


def redact_text(text: str, *extra: str) -> str:
    """Replace anything shaped like a token, bearer header or kubeconfig secret, every
    live secret, and the `extra` values given."""
    text = _SECRET_VALUES.sub(REDACTED, text)
    with _live_lock:
        values = [*_live_secrets, *extra]
    for v in values:
        if v:
            text = text.replace(v, REDACTED)
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


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure structlog (and stdlib logging, for libraries) once, at an entry point."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
        structlog.processors.format_exc_info,
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
    # urllib3 logs retries with full URLs (no credentials), but keep it quiet and scrubbed.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("kubernetes").setLevel(logging.ERROR)
