"""Remote profiles: fetched once by scanfleet, pinned by sha256, given to the auditor as a file.

A URL profile is never handed to the auditor: the sandboxed auditor has no network beyond
the API server. scanfleet downloads it (download.py), vendors it when its `inspec.yml`
depends on other remote profiles, and passes the auditor the local archive:

    scan, submit --local   `fetch_for_run`: once per run, before any identity is minted; a
                           failure is bad input (exit 2, nothing started)
    a fleet worker         `pinned`: from its private cache (by URL and digest) when the
                           run's digest is known and cached, else downloaded; the first
                           fetch of the run records its digest (first writer wins, in the
                           plan in Redis) and every other fetch must match it, or the target
                           gets an error result naming both digests and no auditor runs

The digest (`profile_sha256` of the plan, run.json and every summary) is the sha256 of the
archive the auditor gets: the downloaded bytes, or for a vendored profile the archive
scanfleet builds after `$SCANFLEET_AUDITOR vendor DIR --overwrite` — deterministically
(sorted entries, no timestamps, owners or gzip name), so workers that fetch the same profile
and dependencies build the same bytes.

Vendoring (archives.py) runs the worker's own auditor, never the plan's.

The cache is a directory only this user can open (0700, refused otherwise): the
SCANFLEET_PROFILE_CACHE setting, else `<tmp>/scanfleet.profiles.fetch.<uid>` (not `scanfleet-*`,
which is the worker's scan directories). A cached file is re-hashed before every use.

What it must never do: give the auditor a URL; use bytes whose digest differs from the run's
recorded one; write the URL's credentials anywhere (they only become a request header in
download.py); extract an archive outside its scratch directory or without size limits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from scanfleet.core.errors import BadInput, ProfileMismatch, ProfileUnavailable
from scanfleet.core.logs import remember_url
from scanfleet.core.policy import safe_url
from scanfleet.core.settings import Settings
from scanfleet.profiles.archives import (
    Vendoring,
    archive_suffix,
    read_manifest,
    remote_dependencies,
    vendor,
)
from scanfleet.profiles.download import Limits, download
from scanfleet.scan.plan import RunPlan

KEEP_PER_URL = 4
"""Cached digests kept per URL (the newest)."""

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LocalProfile:
    """A remote profile as the auditor gets it."""

    path: Path
    sha256: str
    url: str
    """The profile URL without credentials."""


@dataclass(frozen=True)
class FetchConfig:
    """How this process fetches and vendors profiles (the worker's own settings)."""

    auditor: str = "cinc-auditor"
    limits: Limits = field(default_factory=Limits)
    vendor_timeout: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Base environment of the vendoring auditor, filtered by auditor_environment
    (`Settings.environment`)."""
    cache_dir: Path | None = None
    """SCANFLEET_PROFILE_CACHE; None: `<tmp>/scanfleet.profiles.fetch.<uid>`."""


def fetch_config(settings: Settings) -> FetchConfig:
    """This process's FetchConfig: its own auditor, limits and cache; the vendoring
    auditor's environment is filtered from `settings.environment`."""
    return FetchConfig(
        auditor=settings.auditor,
        limits=Limits(settings.profile_max_bytes, float(settings.profile_timeout)),
        cache_dir=settings.profile_cache,
        env=settings.environment,
    )


def pin_for_run(plan: RunPlan, config: FetchConfig) -> RunPlan:
    """`scan` and `submit --local`: the plan with its URL profile fetched once and pinned
    (the auditor gets `profile_path`). BadInput when it cannot be fetched."""
    got = fetch_for_run(plan.profile_url or plan.profile, config)
    if got is None:
        return plan
    return plan.pinned(got.sha256, str(got.path))


def pin_for_scan(plan: RunPlan, pins: RunPins, record: Callable[[str], str]) -> RunPlan:
    """A fleet worker, before each scan: the plan with the run's pinned archive (from the
    cache, or fetched and checked). Raises ProfileUnavailable or ProfileMismatch: the
    target gets that error as its result and no auditor runs."""
    if not is_remote(plan.profile):
        return plan
    got = pins.profile(plan.run_id, plan.profile_url or plan.profile, plan.profile_sha256, record)
    return plan.pinned(got.sha256, str(got.path))


def is_remote(profile: str) -> bool:
    return "://" in profile


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


class ProfileCache:
    """Fetched archives, `<root>/<sha256 of the URL>/<digest><.tar.gz|.zip>`; root 0700."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, configured: Path | None = None) -> ProfileCache:
        root = configured or Path(tempfile.gettempdir()) / f"scanfleet.profiles.fetch.{os.getuid()}"
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700, parents=configured is not None)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ProfileUnavailable(
                f"profile cache {root} is not a directory owned by this user; remove it or "
                "set SCANFLEET_PROFILE_CACHE to a private directory"
            )
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(root, 0o700)
        return cls(root)

    def _dir(self, url: str) -> Path:
        return self.root / hashlib.sha256(safe_url(url).encode()).hexdigest()[:32]

    def entry(self, url: str, digest: str, suffix: str = ".tar.gz") -> Path:
        """Where the archive of `url` with this digest is (or would be) cached."""
        return self._dir(url) / f"{digest}{suffix}"

    def lookup(self, url: str, digest: str) -> Path | None:
        """The cached archive of `url` with this digest, re-hashed; None when absent."""
        for suffix in (".tar.gz", ".zip"):
            path = self._dir(url) / f"{digest}{suffix}"
            if path.is_file() and not path.is_symlink():
                if file_sha256(path) == digest:
                    return path
                path.unlink(missing_ok=True)  # changed on disk: never used
        return None

    def store(self, url: str, src: Path, digest: str, suffix: str) -> Path:
        d = self._dir(url)
        d.mkdir(mode=0o700, exist_ok=True)
        final = d / f"{digest}{suffix}"
        os.replace(src, final)
        old = sorted((p for p in d.iterdir() if p != final), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - (KEEP_PER_URL - 1))]:
            p.unlink(missing_ok=True)
        return final

    def discard(self, url: str, digest: str) -> None:
        for suffix in (".tar.gz", ".zip"):
            (self._dir(url) / f"{digest}{suffix}").unlink(missing_ok=True)

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Path]:
        work = Path(tempfile.mkdtemp(prefix=".work-", dir=self.root))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)


def fetch(url: str, cache: ProfileCache, config: FetchConfig) -> LocalProfile:
    """Download `url`, vendor it if its dependencies are remote, and cache the result."""
    remember_url(url)
    shown = safe_url(url)
    with cache.scratch() as work:
        raw = work / "download"
        digest = download(url, raw, config.limits)
        suffix = archive_suffix(raw, shown)
        src = raw
        remote = remote_dependencies(read_manifest(raw, suffix, shown))
        if remote:
            how = Vendoring(config.auditor, config.env, config.vendor_timeout, config.limits)
            src = vendor(raw, suffix, work, how, shown)
            digest, suffix = file_sha256(src), ".tar.gz"
        path = cache.store(url, src, digest, suffix)
    log.info(
        "profile.fetched", profile=shown, sha256=digest, vendored=bool(remote), dependencies=remote
    )
    return LocalProfile(path, digest, shown)


def fetch_for_run(profile: str, config: FetchConfig) -> LocalProfile | None:
    """`scan` and `submit --local`: the run's one fetch; None for a local profile.

    Raises BadInput (exit 2, nothing started) when the profile cannot be fetched.
    """
    if not is_remote(profile):
        return None
    try:
        return fetch(profile, ProfileCache.open(config.cache_dir), config)
    except ProfileUnavailable as e:
        raise BadInput(f"{e}; nothing was started") from None


def pinned(
    url: str,
    recorded: str | None,
    record: Callable[[str], str],
    config: FetchConfig,
    cache: ProfileCache | None = None,
) -> LocalProfile:
    """A fleet worker's profile for one scan, pinned to the run's digest.

    `recorded` is the digest the run's plan holds (None until a first fetch), `record` stores
    a digest unless one is there already and returns the run's digest (first writer wins).
    Raises ProfileUnavailable, or ProfileMismatch naming both digests.
    """
    cache = cache or ProfileCache.open(config.cache_dir)
    if recorded is not None and (hit := cache.lookup(url, recorded)) is not None:
        return LocalProfile(hit, recorded, safe_url(url))
    fetched = fetch(url, cache, config)
    winner = recorded if recorded is not None else record(fetched.sha256)
    if winner != fetched.sha256:
        cache.discard(url, fetched.sha256)
        log.warning(
            "profile.mismatch",
            profile=fetched.url,
            run_sha256=winner,
            fetched_sha256=fetched.sha256,
        )
        raise ProfileMismatch(
            f"profile {fetched.url} now has sha256 {fetched.sha256}, but this run was pinned "
            f"to sha256 {winner} by its first fetch; refusing to scan with different bytes",
            pinned=winner,
        )
    return fetched


class RunPins:
    """A worker process's view of each run's pinned digest, so that once it is known the
    run's later scans here use the cache instead of downloading again."""

    def __init__(self, config: FetchConfig) -> None:
        self.config = config
        self._known: dict[str, str] = {}
        self._lock = threading.Lock()  # one fetch at a time in this process

    def profile(
        self, run_id: str, url: str, recorded: str | None, record: Callable[[str], str]
    ) -> LocalProfile:
        """`pinned` for one scan of `run_id`. Raises ProfileUnavailable, ProfileMismatch."""
        with self._lock:
            got = pinned(url, recorded or self._known.get(run_id), record, self.config)
            if len(self._known) > 256:
                self._known.clear()
            self._known[run_id] = got.sha256
            return got
