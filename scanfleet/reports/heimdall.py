"""Upload a run's HDF files to a Heimdall server (mitre/heimdall2), one evaluation per target.

Heimdall's API, as its backend defines it (apps/backend/src/evaluations/
evaluations.controller.ts, interceptors/create-evaluation-interceptor.ts,
authn/apikey.strategy.ts): `POST <url>/evaluations`, `multipart/form-data` with the file in
field `data` and the form fields `filename`, `public` (`true`/`false`) and `evaluationTags`
(one string, tags separated by commas); authenticated by the header
`Authorization: Api-Key <key>`. Each target's evaluation is tagged `run:<run id>`,
`context:<context>`, `namespace:<namespace>` and, for a sweep's run, `sweep:<name>`.

A 5xx, 429, timeout or connection error is retried (tenacity: MAX_ATTEMPTS, exponential
wait); anything else, or the last failure, is recorded for that target and the upload goes
on with the next. Uploading never changes a run's verdict or exit code.

The API key is a secret: it is only ever put in the request header; every message this
module produces is scrubbed of it (a server that echoes the header back cannot make it
appear in a log), and `HeimdallServer`'s repr hides it. This module does network I/O; the
rest of `scanfleet.reports` stays pure.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from scanfleet.core.errors import BadInput
from scanfleet.reports.hdf import HdfFile

MAX_ATTEMPTS = 3
TIMEOUT_S = 60.0
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def check_heimdall_url(url: str) -> str:
    """The server's base URL: http(s), a host, no credentials, query or fragment."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as e:
        raise BadInput(f"Heimdall URL is not a URL: {e}") from None
    if parts.username is not None or parts.password is not None:
        raise BadInput(
            "Heimdall URL must not carry credentials: give the API key in "
            "SCANFLEET_HEIMDALL_API_KEY or SCANFLEET_HEIMDALL_API_KEY_FILE"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"Heimdall URL {url!r} must be http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise BadInput(f"Heimdall URL {url!r} must not have a query or fragment")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class HeimdallServer:
    url: str
    api_key: str = field(repr=False)
    public: bool = False
    wait_s: float = 1.0
    """First wait between attempts (doubling); tests set 0."""

    def scrub(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text


class _Retryable(Exception):
    """A failure worth another attempt (5xx, 429, timeout, connection)."""


class UploadFailed(Exception):
    """A failure that is not retried (4xx), or the last retryable one."""


def _tag(value: object) -> str:
    # Heimdall splits evaluationTags on commas.
    return str(value or "").replace(",", ";").strip()


def evaluation_tags(summary: Mapping[str, Any], run_id: str, sweep: str | None) -> list[str]:
    target = summary.get("target") or {}
    tags = [
        f"run:{_tag(run_id)}",
        f"context:{_tag(target.get('context'))}",
        f"namespace:{_tag(target.get('namespace'))}",
    ]
    if sweep:
        tags.append(f"sweep:{_tag(sweep)}")
    return tags


def multipart(fields: Iterable[tuple[str, str]], filename: str, data: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body: the text fields, then the file in field `data`."""
    boundary = f"scanfleet-{secrets.token_hex(16)}"
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode("utf-8") + b"\r\n"
    quoted = filename.replace('"', "%22").replace("\r", "").replace("\n", "")
    out += (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="data"; filename="{quoted}"\r\n'
        "Content-Type: application/json\r\n\r\n"
    ).encode()
    out += data + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def _post_once(server: HeimdallServer, body: bytes, content_type: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) only: check_heimdall_url
        f"{server.url}/evaluations",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Api-Key {server.api_key}",
            "Content-Type": content_type,
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 - idem
            raw = response.read()
    except urllib.error.HTTPError as e:
        detail = server.scrub(e.read(300).decode("utf-8", "replace").strip())
        message = f"HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")
        if e.code in RETRY_STATUSES:
            raise _Retryable(message) from None
        raise UploadFailed(message) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise _Retryable(server.scrub(f"cannot reach {server.url}: {reason}")) from None
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        answer = {}
    return answer if isinstance(answer, dict) else {}


def upload_file(server: HeimdallServer, name: str, data: bytes, tags: list[str]) -> dict[str, Any]:
    """POST one evaluation; Heimdall's answer (its id) or UploadFailed saying why."""
    fields = [
        ("filename", name),
        ("public", "true" if server.public else "false"),
        ("evaluationTags", ",".join(tags)),
    ]
    body, content_type = multipart(fields, name, data)

    def last(state: RetryCallState) -> dict[str, Any]:
        error = state.outcome.exception() if state.outcome else None
        raise UploadFailed(f"{error} (after {state.attempt_number} attempts)")

    retrying = Retrying(
        stop=stop_after_attempt(MAX_ATTEMPTS),
        wait=wait_exponential(multiplier=server.wait_s, max=30 * server.wait_s),
        retry=retry_if_exception(lambda e: isinstance(e, _Retryable)),
        retry_error_callback=last,
        reraise=False,
    )
    result: dict[str, Any] = retrying(_post_once, server, body, content_type)
    return result


@dataclass
class UploadReport:
    uploaded: list[tuple[str, str]] = field(default_factory=list)
    """(file name, Heimdall's evaluation id)."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(file name, why): HTTP errors after retries, or no HDF file for the target."""

    def lines(self) -> list[str]:
        total = len(self.uploaded) + len(self.failed)
        out = [f"heimdall: uploaded {len(self.uploaded)} of {total} evaluations"]
        out += [f"heimdall: {name} not uploaded: {why}" for name, why in self.failed[:20]]
        if len(self.failed) > 20:
            out.append(f"heimdall: … and {len(self.failed) - 20} more not uploaded")
        return out


def upload_files(
    server: HeimdallServer,
    files: Iterable[HdfFile],
    run_id: str,
    sweep: str | None = None,
    on_file: Callable[[HdfFile], None] | None = None,
) -> UploadReport:
    """Upload each target's file; one target's failure never stops the others."""
    report = UploadReport()
    for item in files:
        if on_file is not None:
            on_file(item)
        if item.data is None:
            report.failed.append((item.name, item.problem or "no HDF file"))
            continue
        tags = evaluation_tags(item.summary, run_id, sweep)
        try:
            answer = upload_file(server, item.name, item.data, tags)
        except UploadFailed as e:
            report.failed.append((item.name, server.scrub(str(e))))
            continue
        report.uploaded.append((item.name, str(answer.get("id") or "")))
    return report
