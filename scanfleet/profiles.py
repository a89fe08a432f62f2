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

Vendoring runs the worker's own auditor (never the plan's) outside Landlock, because it needs
the network, but with no capabilities, no_new_privs, a filtered environment (no broker URL,
no admin kubeconfig: KUBECONFIG is /dev/null) and a private HOME and TMPDIR; it resolves
dependencies and does not run the profile's controls.

The cache is a directory only this user can open (0700, refused otherwise): the
SCANFLEET_PROFILE_CACHE setting, else `<tmp>/scanfleet.profiles.<uid>` (not `scanfleet-*`,
which is the worker's scan directories). A cached file is re-hashed before every use.

What it must never do: give the auditor a URL; use bytes whose digest differs from the run's
recorded one; write the URL's credentials anywhere (they only become a request header in
download.py); extract an archive outside its scratch directory or without size limits.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml

from scanfleet import sandbox
from scanfleet.auditor import auditor_environment
from scanfleet.download import Limits, ProfileUnavailable, download
from scanfleet.errors import BadInput, Rejected
from scanfleet.logs import redact_text, remember_url
from scanfleet.policy import safe_url

REMOTE_SOURCES = ("url", "git", "supermarket", "compliance")
"""`depends:` keys that name a profile elsewhere (`path:` inside the archive needs nothing)."""
MANIFEST_MAX_BYTES = 1024 * 1024
EXTRACT_FACTOR = 8
"""An archive may unpack to at most this many times `Limits.max_bytes`."""
KEEP_PER_URL = 4
"""Cached digests kept per URL (the newest)."""
STDERR_TAIL = 1000

log = structlog.get_logger("scanfleet.profiles")


class ProfileMismatch(Rejected):
    """This worker fetched different bytes than the run recorded: nothing runs."""


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
    env: Mapping[str, str] | None = field(default=None, repr=False)
    """Base environment of the vendoring auditor, filtered by auditor_environment (None:
    this process's)."""
    cache_dir: Path | None = None
    """SCANFLEET_PROFILE_CACHE; None: `<tmp>/scanfleet.profiles.<uid>`."""


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
        root = configured or Path(tempfile.gettempdir()) / f"scanfleet.profiles.{os.getuid()}"
        with contextlib.suppress(FileExistsError):
            root.mkdir(mode=0o700, parents=configured is not None)
        st = os.lstat(root)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise ProfileUnavailable(
                f"profile cache {root} is not a directory owned by this user; remove it or "
                "set SCANFLEET_PROFILE_CACHE to a private directory")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(root, 0o700)
        return cls(root)

    def _dir(self, url: str) -> Path:
        return self.root / hashlib.sha256(safe_url(url).encode()).hexdigest()[:32]

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
            src = vendor(raw, suffix, work, config, shown)
            digest, suffix = file_sha256(src), ".tar.gz"
        path = cache.store(url, src, digest, suffix)
    log.info("profile.fetched", profile=shown, sha256=digest, vendored=bool(remote),
             dependencies=remote)
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
    url: str, recorded: str | None, record: Callable[[str], str], config: FetchConfig,
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
        log.warning("profile.mismatch", profile=fetched.url, run_sha256=winner,
                    fetched_sha256=fetched.sha256)
        raise ProfileMismatch(
            f"profile {fetched.url} now has sha256 {fetched.sha256}, but this run was pinned "
            f"to sha256 {winner} by its first fetch; refusing to scan with different bytes")
    return fetched


# -- the archive ------------------------------------------------------------------------

def archive_suffix(path: Path, shown: str) -> str:
    """`.tar.gz` or `.zip`, by the file's magic bytes (URLs need not say)."""
    with path.open("rb") as f:
        head = f.read(4)
    if head[:2] == b"\x1f\x8b":
        return ".tar.gz"
    if head == b"PK\x03\x04":
        return ".zip"
    raise ProfileUnavailable(
        f"profile {shown} is not a .tar.gz or .zip profile archive; point the URL at an "
        "archive (a git forge's archive link, for example)")


def read_manifest(path: Path, suffix: str, shown: str) -> dict[str, Any]:
    """The profile's inspec.yml (at the archive root, or in its single top directory)."""
    try:
        text = _manifest_bytes(path, suffix)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ProfileUnavailable(f"profile {shown}: cannot read the archive: {e}") from None
    if text is None:
        raise ProfileUnavailable(f"profile {shown}: the archive has no inspec.yml")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ProfileUnavailable(f"profile {shown}: inspec.yml is not valid YAML") from None
    return doc if isinstance(doc, dict) else {}


def _manifest_bytes(path: Path, suffix: str) -> bytes | None:
    def depth(name: str) -> int:
        return name.removeprefix("./").strip("/").count("/")

    if suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            zips = [i for i in z.infolist()
                    if i.filename.rsplit("/", 1)[-1] == "inspec.yml" and depth(i.filename) <= 1]
            if not zips:
                return None
            info = min(zips, key=lambda i: depth(i.filename))
            if info.file_size > MANIFEST_MAX_BYTES:
                return None
            return z.read(info)
    with tarfile.open(path, "r:gz") as t:
        found = [m for m in t.getmembers()
                 if m.isfile() and m.name.rsplit("/", 1)[-1] == "inspec.yml"
                 and depth(m.name) <= 1 and m.size <= MANIFEST_MAX_BYTES]
        if not found:
            return None
        f = t.extractfile(min(found, key=lambda m: depth(m.name)))
        return f.read() if f is not None else None


def remote_dependencies(manifest: Mapping[str, Any]) -> list[str]:
    """Names (or sources) of `depends:` entries that live outside the archive."""
    depends = manifest.get("depends")
    out = []
    for dep in depends if isinstance(depends, list) else []:
        if isinstance(dep, dict) and any(k in dep for k in REMOTE_SOURCES):
            source = next(str(dep[k]) for k in REMOTE_SOURCES if k in dep)
            out.append(str(dep.get("name") or safe_url(source)))
    return out


# -- vendoring --------------------------------------------------------------------------

def vendor(archive: Path, suffix: str, work: Path, config: FetchConfig, shown: str) -> Path:
    """Unpack, `$auditor vendor DIR --overwrite`, and re-archive deterministically."""
    root = _unpack(archive, suffix, work / "profile", config.limits, shown)
    workdir = sandbox.prepare_workdir(work)
    env = auditor_environment(Path(os.devnull), config.env, workdir=workdir)
    argv = [config.auditor, "vendor", str(root), "--overwrite"]
    _run(argv, env, config, shown)
    out = work / "vendored.tar.gz"
    deterministic_tar(root, out)
    return out


def _run(argv: list[str], env: Mapping[str, str], config: FetchConfig, shown: str) -> None:
    # No Landlock (vendoring needs the network), but no capabilities, no_new_privs, its own
    # session and death with this thread, like every auditor scanfleet starts.
    policy = sandbox.Policy(landlock=False, drop_privileges=True)
    try:
        proc = sandbox.spawn(policy, argv, env)
    except sandbox.ExecFailed as e:
        raise ProfileUnavailable(
            f"vendoring profile {shown}: auditor {config.auditor!r} cannot be run ({e}); "
            "set SCANFLEET_AUDITOR") from None
    try:
        _, err = proc.communicate(timeout=config.vendor_timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise ProfileUnavailable(
            f"vendoring profile {shown} took longer than {config.vendor_timeout:g} s") from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left in its session
    if proc.returncode != 0:
        tail = redact_text(err.decode("utf-8", "replace"))[-STDERR_TAIL:].strip()
        raise ProfileUnavailable(
            f"vendoring profile {shown} failed (auditor exit {proc.returncode}): {tail}")


def _unpack(archive: Path, suffix: str, dest: Path, limits: Limits, shown: str) -> Path:
    """Extract safely (no paths outside `dest`, no devices, bounded size); the profile root."""
    budget = limits.max_bytes * EXTRACT_FACTOR
    dest.mkdir(mode=0o700)
    try:
        if suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                if sum(i.file_size for i in z.infolist()) > budget:
                    raise ProfileUnavailable(f"profile {shown} unpacks to more than {budget} B")
                z.extractall(dest)  # noqa: S202 - zipfile drops absolute paths and '..'
        else:
            with tarfile.open(archive, "r:gz") as t:
                if sum(m.size for m in t.getmembers()) > budget:
                    raise ProfileUnavailable(f"profile {shown} unpacks to more than {budget} B")
                t.extractall(dest, filter="data")
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ProfileUnavailable(f"profile {shown}: cannot unpack the archive: {e}") from None
    if (dest / "inspec.yml").is_file():
        return dest
    tops = [p for p in dest.iterdir() if p.is_dir() and (p / "inspec.yml").is_file()]
    if len(tops) != 1:
        raise ProfileUnavailable(f"profile {shown}: the archive has no single inspec.yml")
    return tops[0]


def deterministic_tar(root: Path, out: Path) -> None:
    """A tar.gz of `root`'s files and directories whose bytes depend on their content only."""
    with out.open("wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                continue
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                continue
            info.size, info.mode = path.stat().st_size, 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
