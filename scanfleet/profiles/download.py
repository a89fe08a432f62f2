"""Downloading a profile archive over HTTP(S): the only place scanfleet speaks HTTP itself.

    download(url, dest, limits) -> sha256 of the bytes written to `dest` (0600)

The URL's userinfo (`https://user:password@host/...`) becomes an `Authorization: Basic`
header of the first request alone (and of a redirect to the same https origin); both the
password and the header value are remembered by `logs` for redaction. Only `http` and
`https` URLs are fetched (the allow-list decides whether `http` is acceptable: policy.py),
and redirects are followed only to `https` (at most `MAX_REDIRECTS`). The URL is requested in
its canonical form (policy.canonical_url), and one that could walk out of its allow-list
prefix on the server (`..`, `%2e`, `%2f`, `%5c`, a backslash) is refused before any request.
The body is streamed to disk and hashed on the way, and the download stops once it
passes `Limits.max_bytes` or takes longer than `Limits.timeout` seconds in all.
Proxies come from the standard `HTTPS_PROXY`/`NO_PROXY` variables, as for any urllib client.

What it must never do: put the URL's credentials, the Authorization header or the body into
a log line or an error message (messages name the URL without userinfo); send the
Authorization header to another origin or over plain http after a redirect; keep a partial
file after a failure.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit, urlunsplit

from scanfleet.core.errors import ProfileUnavailable
from scanfleet.core.logs import redact_text, remember, remember_url
from scanfleet.core.policy import PolicyViolation, canonical_url, safe_url

MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """How much and how long a download may take."""

    max_bytes: int = 64 * 1024 * 1024
    """Largest archive accepted, in bytes (SCANFLEET_PROFILE_MAX_BYTES)."""
    timeout: float = 120.0
    """Seconds for the whole download, and for each network operation in it
    (SCANFLEET_PROFILE_TIMEOUT)."""
    ssl_context: ssl.SSLContext | None = None
    """TLS trust for https (None: the system's default verification)."""


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


def basic_auth(url: str) -> str | None:
    """The `Basic ...` header value for the URL's userinfo, or None without one."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    value = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    remember(password, value, value.split(" ", 1)[1])
    return value


def without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


class _HttpsRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https; re-send credentials only to the same https origin."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, shown: str, start: str, auth: str | None) -> None:
        self.shown, self.origin, self.auth = shown, origin(start), auth

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme.lower() != "https":
            fp.close()
            raise ProfileUnavailable(
                f"profile {self.shown} redirects to {safe_url(newurl)}: scanfleet follows "
                "redirects only to https URLs"
            )
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        # newurl is https here, so an equal origin is the same https host and port.
        if new is not None and self.auth and origin(newurl) == self.origin:
            new.add_unredirected_header("Authorization", self.auth)
        return new


def download(url: str, dest: Path, limits: Limits) -> str:
    """Fetch `url` into `dest` (a new file, 0600); the sha256 (hex) of its bytes.

    Raises ProfileUnavailable, with a message that names the URL without credentials.
    """
    shown = safe_url(url)
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ProfileUnavailable(f"profile {shown}: only http(s) URLs are downloaded")
    try:
        url = canonical_url(url)  # the form the allow-list compared; refuses '..' and kin
    except PolicyViolation as e:
        raise ProfileUnavailable(str(e)) from None
    remember_url(url)
    start = without_userinfo(url)
    # The scheme is http or https (checked above); redirects are limited to https.
    request = urllib.request.Request(start, headers={"User-Agent": "scanfleet"})  # noqa: S310
    auth = basic_auth(url)
    if auth:
        request.add_unredirected_header("Authorization", auth)
    opener = urllib.request.build_opener(
        _HttpsRedirects(shown, start, auth),
        urllib.request.HTTPSHandler(context=limits.ssl_context),
    )
    try:
        with opener.open(request, timeout=limits.timeout) as response:
            return _save(response, dest, shown, limits, time.monotonic() + limits.timeout)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the response (and its socket)
        dest.unlink(missing_ok=True)
        raise ProfileUnavailable(
            f"downloading profile {shown} failed: HTTP {e.code}"
            f"{' (check the credentials of its allow-list entry)' if e.code in (401, 403) else ''}"
        ) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        dest.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise ProfileUnavailable(
            f"downloading profile {shown} failed: {redact_text(str(reason))[:300]}"
        ) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def _save(response: IO[bytes], dest: Path, shown: str, limits: Limits, deadline: float) -> str:
    length = getattr(response, "headers", {}).get("Content-Length")
    if length and length.isdigit() and int(length) > limits.max_bytes:
        raise ProfileUnavailable(_too_big(shown, limits))
    digest, size = hashlib.sha256(), 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > limits.max_bytes:
                raise ProfileUnavailable(_too_big(shown, limits))
            if time.monotonic() > deadline:
                raise ProfileUnavailable(
                    f"downloading profile {shown} took longer than {limits.timeout:g} s "
                    "(SCANFLEET_PROFILE_TIMEOUT)"
                )
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _too_big(shown: str, limits: Limits) -> str:
    return f"profile {shown} is larger than {limits.max_bytes} bytes (SCANFLEET_PROFILE_MAX_BYTES)"
