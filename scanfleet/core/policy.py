"""Worker-side policy: what a run plan may ask a worker to do.

A run plan travels through Redis, and whoever can write Redis can edit it. So a worker
trusts nothing executable from it:

- the auditor executable and its environment come from the worker's own settings
  (`Settings.auditor`, the worker's environment), never from the plan (`RunPlan.auditor`
  is recorded for information only; `worker_plan` overwrites it);
- a fleet run's results directory must lie inside the worker's `SCANFLEET_RESULTS_DIR`
  (resolved, so a symlink cannot lead out);
- the profile must match `SCANFLEET_ALLOWED_PROFILES` (path and URL prefixes); a URL's
  credentials never travel in the plan: `RunPlan.profile` is stripped of user:password@,
  and a worker adds the credentials of the allow-list prefix that matches
  (`https://user:password@profiles.example/`, the worker's own setting, `credentialed`);
- a profile URL is compared, and downloaded, in its RFC 3986 normal form (`canonical_url`:
  scheme and host lower-cased, the default port dropped, percent-encoded unreserved
  characters decoded); a URL that could walk out of its prefix on the server is refused
  outright: a `.` or `..` path segment, an encoded `.`, `/` or `\\` (%2e, %2f, %5c), a
  backslash, whitespace or a control character anywhere;
- extra auditor arguments must be InSpec `exec` flags on `ALLOWED_FLAGS`, which select or
  parameterise controls but cannot re-target the scan (`-t`, `--host`, `--bastion-*`),
  change where or how results are written (`--reporter`, `--config`, `--log-location`),
  escalate (`--sudo*`) or bring credentials (`--password`, `--key-files`).

`submit`, `scan` and sweeps check the same rules when building a plan (BadInput, exit 2);
a worker finding a plan that breaks them records the target as an error of kind
`rejected` and runs nothing. Messages name the offending value, with URL credentials
removed. This module never reads the environment and never runs anything.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from scanfleet.core.errors import BadInput

DEFAULT_ALLOWED_PROFILES = ("/", "https://")
"""Any local path and any https URL (absolute or relative path; no git://, http://, ...)."""

# InSpec `exec` flags that only select or parameterise controls. Value: does it take values
# (one or more following arguments, until the next flag)?
ALLOWED_FLAGS: dict[str, bool] = {
    "--controls": True,
    "--tags": True,
    "--input": True,
    "--input-file": True,
    "--waiver-file": True,
    "--command-timeout": True,
    "--chef-license": True,
    "--no-color": False,
    "--color": False,
    "--no-create-lockfile": False,
    "--filter-empty-profiles": False,
}


class PolicyViolation(BadInput):
    """A plan asks for something the policy refuses (exit 2 at submit; `rejected` on a worker)."""


# Separators between allow-list entries: a comma, or os.pathsep (':' on POSIX) where it
# starts the next absolute path or URL; a URL's own colons (scheme, user:password, port)
# are followed by neither.
_SEPARATOR = re.compile(
    rf"\s*(?:,|{re.escape(os.pathsep)}(?=/(?!/)|[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z]:\\))\s*"
)


def parse_allowed_profiles(raw: str | None) -> tuple[str, ...]:
    """`SCANFLEET_ALLOWED_PROFILES`: absolute path and URL prefixes separated by commas or
    `os.pathsep`. Empty or unset: `DEFAULT_ALLOWED_PROFILES`."""
    parts = tuple(p for p in _SEPARATOR.split(raw or "") if p.strip())
    return parts or DEFAULT_ALLOWED_PROFILES


def safe_url(value: str) -> str:
    """`value` with any URL userinfo (user:password@) removed, for messages."""
    if "://" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:  # an unparseable authority: keep only the scheme
        return value.split("://", 1)[0] + "://<unparseable URL>"
    if "@" not in parts.netloc:
        return value
    # Everything after the last '@' is the host (how urllib, and so the download, reads it).
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_PERCENT = re.compile(r"%(..)?", re.DOTALL)
_WALKING = {"2E": ".", "2F": "/", "5C": "\\"}
"""Encoded characters that a server (or a proxy, or a CDN) may decode before it resolves
the path: allowed, they would let a URL leave its allow-list prefix there."""


def canonical_url(url: str) -> str:
    """`url` in RFC 3986 normal form (section 6.2.2): scheme and host in lower case, the
    scheme's default port dropped, percent-encoded unreserved characters decoded and other
    percent-encodings in upper case, an empty path as `/`; userinfo, query and fragment kept.

    PolicyViolation (naming the URL without credentials) for a URL whose path could mean
    another path once a server resolves it: a `.` or `..` segment (also as `..;x`), an
    encoded `.`, `/` or backslash, a backslash, whitespace or a control character anywhere,
    a malformed percent-encoding, or an unparseable host or port. (A URL without a host is
    left to the caller: an allow-list prefix such as `https://` has none.)
    """
    shown = safe_url(url)
    if "\\" in url:
        raise PolicyViolation(f"profile URL {shown!r} contains a backslash; refused")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise PolicyViolation(
            f"profile URL {shown!r} contains whitespace or a control character; refused"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise PolicyViolation(f"profile URL {shown!r} has an invalid host or port") from None
    scheme = parts.scheme.lower()

    def normal(m: re.Match[str]) -> str:
        hexa = (m.group(1) or "").upper()
        if len(hexa) != 2 or any(c not in string.hexdigits for c in hexa):
            raise PolicyViolation(f"profile URL {shown!r} has a malformed percent-encoding")
        if hexa in _WALKING:
            raise PolicyViolation(
                f"profile URL {shown!r} has an encoded {_WALKING[hexa]!r} (%{hexa}) in its "
                "path; refused, as a server may decode it and leave the allowed prefix"
            )
        char = chr(int(hexa, 16))
        return char if char in _UNRESERVED else f"%{hexa}"

    path = _PERCENT.sub(normal, parts.path) or "/"
    if any(seg.split(";", 1)[0] in (".", "..") for seg in path.split("/")):
        raise PolicyViolation(
            f"profile URL {shown!r} has a '.' or '..' path segment; refused, as it could "
            "walk out of its SCANFLEET_ALLOWED_PROFILES prefix"
        )
    userinfo, at, _ = parts.netloc.rpartition("@")
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return urlunsplit((scheme, f"{userinfo}{at}{host}", path, parts.query, parts.fragment))


def credentialed(profile: str, allowed: Iterable[str]) -> str | None:
    """`profile` with the credentials of the first allow-list URL prefix that matches it and
    carries user:password@ (a worker's own setting), or None when no such prefix matches."""
    if "://" not in profile or urlsplit(profile).password is not None:
        return None
    try:
        profile = canonical_url(profile)
    except PolicyViolation:
        return None  # refused by check_profile; no credentials for it
    for prefix in allowed:
        q = urlsplit(prefix) if "://" in prefix else None
        if q is not None and q.password is not None and _url_matches(profile, prefix):
            p = urlsplit(profile)
            return p._replace(netloc=f"{q.netloc.rsplit('@', 1)[0]}@{p.netloc}").geturl()
    return None


def _url_matches(profile: str, prefix: str) -> bool:
    """Does `profile` (in canonical form) lie under `prefix` (compared in canonical form;
    a prefix that has none matches nothing)?"""
    try:
        p, q = urlsplit(profile), urlsplit(canonical_url(prefix))
    except PolicyViolation:
        return False
    if p.scheme != q.scheme:
        return False
    if not q.netloc:
        return True
    if (p.hostname or "").lower() != (q.hostname or "").lower() or p.port != q.port:
        return False
    base = q.path if q.path.endswith("/") or not q.path else q.path + "/"
    return p.path == q.path or p.path.startswith(base) or not q.path


def _path_matches(profile: str, prefix: str) -> bool:
    return Path(profile).resolve().is_relative_to(Path(prefix).resolve())


def check_profile(profile: str, allowed: Iterable[str]) -> str:
    """The profile as it is matched and used (a URL in canonical form, a path unchanged);
    PolicyViolation unless it matches one of the `allowed` prefixes."""
    if not profile or profile.startswith("-") or any(c in profile for c in "\n\r\0"):
        raise PolicyViolation(f"profile {safe_url(profile)!r} is not a path or URL")
    is_url = "://" in profile
    canonical = canonical_url(profile) if is_url else profile
    if is_url and not urlsplit(canonical).hostname:
        raise PolicyViolation(f"profile URL {safe_url(profile)!r} has no host")
    for prefix in allowed:
        if "://" in prefix:
            if is_url and _url_matches(canonical, prefix):
                return canonical
        elif not is_url and _path_matches(profile, prefix):
            return profile
    raise PolicyViolation(
        f"profile {safe_url(profile)!r} is not allowed by SCANFLEET_ALLOWED_PROFILES "
        f"({', '.join(safe_url(a) for a in allowed)})"
    )


def check_auditor_args(args: Sequence[str]) -> None:
    """PolicyViolation naming the first argument that is not an allow-listed InSpec flag
    (or a value following a flag that takes values)."""
    takes_values = False
    for arg in args:
        if any(c in arg for c in "\n\r\0"):
            raise PolicyViolation(f"auditor argument {arg!r} contains a control character")
        if not arg.startswith("-"):
            if not takes_values:
                raise PolicyViolation(f"auditor argument {arg!r} is not a value of an allowed flag")
            continue
        name, has_value, _ = arg.partition("=")
        if name not in ALLOWED_FLAGS or (has_value and not ALLOWED_FLAGS[name]):
            raise PolicyViolation(
                f"auditor argument {arg!r} is not allowed; allowed flags: "
                f"{', '.join(sorted(ALLOWED_FLAGS))}"
            )
        takes_values = ALLOWED_FLAGS[name] and not has_value
