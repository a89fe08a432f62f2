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
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

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
    parts = urlsplit(value)
    if parts.username is None and parts.password is None:
        return value
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def credentialed(profile: str, allowed: Iterable[str]) -> str | None:
    """`profile` with the credentials of the first allow-list URL prefix that matches it and
    carries user:password@ (a worker's own setting), or None when no such prefix matches."""
    if "://" not in profile or urlsplit(profile).password is not None:
        return None
    for prefix in allowed:
        q = urlsplit(prefix) if "://" in prefix else None
        if q is not None and q.password is not None and _url_matches(profile, prefix):
            p = urlsplit(profile)
            return p._replace(netloc=f"{q.netloc.rsplit('@', 1)[0]}@{p.netloc}").geturl()
    return None


def _url_matches(profile: str, prefix: str) -> bool:
    p, q = urlsplit(profile), urlsplit(prefix)
    if p.scheme.lower() != q.scheme.lower():
        return False
    if not q.netloc:
        return True
    if (p.hostname or "").lower() != (q.hostname or "").lower() or p.port != q.port:
        return False
    base = q.path if q.path.endswith("/") or not q.path else q.path + "/"
    return p.path == q.path or p.path.startswith(base) or not q.path


def _path_matches(profile: str, prefix: str) -> bool:
    return Path(profile).resolve().is_relative_to(Path(prefix).resolve())


def check_profile(profile: str, allowed: Iterable[str]) -> None:
    """PolicyViolation unless `profile` matches one of the `allowed` prefixes."""
    if not profile or profile.startswith("-") or any(c in profile for c in "\n\r\0"):
        raise PolicyViolation(f"profile {safe_url(profile)!r} is not a path or URL")
    is_url = "://" in profile
    for prefix in allowed:
        if "://" in prefix:
            if is_url and _url_matches(profile, prefix):
                return
        elif not is_url and _path_matches(profile, prefix):
            return
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


def check_results_dir(results_dir: Path, root: Path) -> None:
    """PolicyViolation unless `results_dir` (resolved) lies inside `root` (resolved)."""
    if not results_dir.resolve().is_relative_to(root.resolve()):
        raise PolicyViolation(
            f"results directory {str(results_dir)!r} is outside this worker's "
            f"SCANFLEET_RESULTS_DIR {str(root)!r}"
        )
