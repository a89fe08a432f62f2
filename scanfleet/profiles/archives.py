"""Profile archives: what kind, what they depend on, and vendoring them into one archive.

    archive_suffix      .tar.gz or .zip, by magic bytes
    read_manifest       the inspec.yml at the root or in the single top directory
    remote_dependencies `depends:` entries that live outside the archive
    vendor              unpack, `$SCANFLEET_AUDITOR vendor DIR --overwrite` (InSpec's own
                        resolver fetches the dependencies into DIR/vendor and writes
                        inspec.lock), then `deterministic_tar`

`deterministic_tar` writes sorted entries with no timestamps, owners or gzip name, so two
workers that vendor the same profile and the same dependency bytes build the same archive
(and the same sha256). Vendoring runs the worker's own auditor outside Landlock, because it
needs the network, but with no capabilities, no_new_privs, its own session, death with this
thread, a filtered environment (no broker URL, no admin kubeconfig: KUBECONFIG=/dev/null) and
a private HOME and TMPDIR. It resolves dependencies; it does not run the profile's controls.

What it must never do: extract outside its scratch directory (tar: the `data` filter; zip:
zipfile's own path sanitising), unpack more than `EXTRACT_FACTOR` times the download cap,
read more than `MAX_MEMBERS` entries or `MAX_NAME_BYTES` of entry names (a 2.4 MB tar of
400,000 empty entries cost a worker 175 MB and 13 s before these caps; a zip's central
directory is checked from its end record before zipfile parses it; no single read of a tar
stream exceeds `_MAX_READ`, as tarfile reads a pax header whole), or put the auditor's
stderr into a message unredacted.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import struct
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import yaml

from scanfleet.core.errors import ProfileUnavailable, ScanError
from scanfleet.core.logs import redact_text
from scanfleet.core.policy import safe_url
from scanfleet.profiles.download import Limits
from scanfleet.sandbox.policy import ExecFailed, Policy, prepare_workdir, spawn
from scanfleet.scan.auditor import auditor_environment

REMOTE_SOURCES = ("url", "git", "supermarket", "compliance")
"""`depends:` keys that name a profile elsewhere. An entry with none of them and no `path:`
is a Supermarket name (InSpec's default source); `path:` (inside the archive) needs nothing."""
MANIFEST_MAX_BYTES = 1024 * 1024
EXTRACT_FACTOR = 8
"""An archive may unpack to at most this many times `Limits.max_bytes`."""
STDERR_TAIL = 1000
MAX_MEMBERS = 20_000
"""Most entries (files, directories, links) a profile archive may hold. Real profiles hold
hundreds; each entry costs memory and time outside the sandbox before anything runs."""
MAX_NAME_BYTES = 4 * 1024 * 1024
"""Most bytes of entry names, all entries together."""
_ZIP_ENTRY_BYTES = 46
"""Fixed size of a zip central-directory entry (before its name, extra and comment)."""
_ZIP_EOCD = struct.Struct("<4s4H2LH")
_MAX_READ = MAX_NAME_BYTES + MANIFEST_MAX_BYTES
"""Largest single read of a tar stream (a long-name header, the manifest)."""


@dataclass(frozen=True)
class Vendoring:
    """How to vendor: the worker's own auditor and environment, never the plan's."""

    auditor: str = "cinc-auditor"
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Base environment, filtered by auditor_environment (`Settings.environment`)."""
    timeout: float = 600.0
    limits: Limits = field(default_factory=Limits)


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
        "archive (a git forge's archive link, for example)"
    )


def read_manifest(path: Path, suffix: str, shown: str) -> dict[str, Any]:
    """The profile's inspec.yml (at the archive root, or in its single top directory)."""
    try:
        text = _manifest_bytes(path, suffix, shown)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise ProfileUnavailable(f"profile {shown}: cannot read the archive: {e}") from None
    if text is None:
        raise ProfileUnavailable(f"profile {shown}: the archive has no inspec.yml")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ProfileUnavailable(f"profile {shown}: inspec.yml is not valid YAML") from None
    return doc if isinstance(doc, dict) else {}


def _manifest_bytes(path: Path, suffix: str, shown: str) -> bytes | None:
    def depth(name: str) -> int:
        return name.removeprefix("./").strip("/").count("/")

    if suffix == ".zip":
        with _open_zip(path, shown) as z:
            zips = [
                i
                for i in z.infolist()
                if i.filename.rsplit("/", 1)[-1] == "inspec.yml" and depth(i.filename) <= 1
            ]
            if not zips:
                return None
            info = min(zips, key=lambda i: depth(i.filename))
            if info.file_size > MANIFEST_MAX_BYTES:
                return None
            return z.read(info)
    with _open_tar(path, shown) as t:
        found = [
            m
            for m in _tar_members(t, shown)
            if m.isfile()
            and m.name.rsplit("/", 1)[-1] == "inspec.yml"
            and depth(m.name) <= 1
            and m.size <= MANIFEST_MAX_BYTES
        ]
        if not found:
            return None
        f = t.extractfile(min(found, key=lambda m: depth(m.name)))
        return f.read() if f is not None else None


def _too_many(shown: str) -> ProfileUnavailable:
    return ProfileUnavailable(
        f"profile {shown}: the archive holds more than {MAX_MEMBERS} entries or more than "
        f"{MAX_NAME_BYTES} bytes of entry names and headers; refused (a profile holds hundreds)"
    )


def _tar_members(t: tarfile.TarFile, shown: str) -> Iterator[tarfile.TarInfo]:
    """The archive's entries, read one at a time and stopping at the budgets (getmembers()
    would read them all first)."""
    names = 0
    for count, member in enumerate(t, 1):
        names += len(member.name) + len(member.linkname)
        if count > MAX_MEMBERS or names > MAX_NAME_BYTES:
            raise _too_many(shown)
        yield member


class _BoundedReads:
    """A decompressed tar stream that refuses any single read over `_MAX_READ`: tarfile
    reads a pax or GNU long-name header whole, whatever size the archive declares (gzip
    turns 64 MB into gigabytes of zeros), while headers are 512 bytes, the manifest at
    most MANIFEST_MAX_BYTES and extraction copies 16 KiB at a time."""

    def __init__(self, raw: gzip.GzipFile, shown: str) -> None:
        self._raw, self._shown = raw, shown

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > _MAX_READ:
            raise _too_many(self._shown)
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


@contextlib.contextmanager
def _open_tar(path: Path, shown: str) -> Iterator[tarfile.TarFile]:
    with (
        gzip.open(path, "rb") as raw,
        # `_BoundedReads` has the read, seek and tell that tarfile's "r:" mode uses.
        tarfile.open(fileobj=cast(IO[bytes], _BoundedReads(raw, shown)), mode="r:") as tar,
    ):
        yield tar


def _open_zip(path: Path, shown: str) -> zipfile.ZipFile:
    """zipfile.ZipFile, once the end record says the central directory is within budget
    (zipfile reads and parses all of it on opening)."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 65536 - _ZIP_EOCD.size))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _ZIP_EOCD.size:
        raise zipfile.BadZipFile("no end of central directory record")
    entries, cd_bytes = _ZIP_EOCD.unpack_from(tail, at)[4:6]
    # A zip64 archive marks these 0xFFFF / 0xFFFFFFFF: over budget too.
    if entries > MAX_MEMBERS or cd_bytes > MAX_MEMBERS * (_ZIP_ENTRY_BYTES + 64) + MAX_NAME_BYTES:
        raise _too_many(shown)
    z = zipfile.ZipFile(path)
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS or sum(len(i.filename) for i in infos) > MAX_NAME_BYTES:
        z.close()
        raise _too_many(shown)
    return z


def remote_dependencies(manifest: Mapping[str, Any]) -> list[str]:
    """Names (or sources) of `depends:` entries that live outside the archive."""
    depends = manifest.get("depends")
    out = []
    for dep in depends if isinstance(depends, list) else []:
        if not isinstance(dep, dict) or (
            "path" in dep and not any(k in dep for k in REMOTE_SOURCES)
        ):
            continue
        source = next((str(dep[k]) for k in REMOTE_SOURCES if k in dep), "supermarket")
        out.append(str(dep.get("name") or safe_url(source)))
    return out


# -- vendoring --------------------------------------------------------------------------


def vendor(archive: Path, suffix: str, work: Path, how: Vendoring, shown: str) -> Path:
    """Unpack, `$auditor vendor DIR --overwrite`, and re-archive deterministically."""
    root = _unpack(archive, suffix, work / "profile", how.limits, shown)
    workdir = prepare_workdir(work)
    env = auditor_environment(Path(os.devnull), how.env, workdir=workdir)
    argv = [how.auditor, "vendor", str(root), "--overwrite"]
    _run(argv, env, how, shown)
    out = work / "vendored.tar.gz"
    deterministic_tar(root, out)
    return out


def _run(argv: list[str], env: Mapping[str, str], how: Vendoring, shown: str) -> None:
    # No Landlock (vendoring needs the network), but no capabilities, no_new_privs, its own
    # session and death with this process, like every auditor scanfleet starts.
    policy = Policy(landlock=False, drop_privileges=True)
    try:
        proc = spawn(policy, argv, env)
    except ExecFailed as e:
        raise ProfileUnavailable(
            f"vendoring profile {shown}: auditor {how.auditor!r} cannot be run ({e}); "
            "set SCANFLEET_AUDITOR"
        ) from None
    except ScanError as e:  # the launcher could not start it
        raise ProfileUnavailable(f"vendoring profile {shown}: {e}") from None
    err = _StderrTail(proc.stderr)
    try:
        code = proc.wait(timeout=how.timeout)
    except subprocess.TimeoutExpired:
        raise ProfileUnavailable(
            f"vendoring profile {shown} took longer than {how.timeout:g} s"
        ) from None
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # on a timeout, and anything it left behind
    if code != 0:
        raise ProfileUnavailable(
            f"vendoring profile {shown} failed (auditor exit {code}): {err.text()}"
        )


class _StderrTail:
    """Drains a pipe in a thread (so a chatty auditor never blocks), keeping its end."""

    def __init__(self, pipe: IO[bytes] | None) -> None:
        self._buf = bytearray()
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[bytes] | None) -> None:
        if pipe is None:
            return
        with contextlib.suppress(OSError, ValueError), pipe:
            while chunk := pipe.read(65536):
                self._buf += chunk
                del self._buf[: max(0, len(self._buf) - 4 * STDERR_TAIL)]

    def text(self) -> str:
        self._thread.join(2)  # the group is gone: EOF is imminent
        return redact_text(self._buf.decode("utf-8", "replace"))[-STDERR_TAIL:].strip()


def _unpack(archive: Path, suffix: str, dest: Path, limits: Limits, shown: str) -> Path:
    """Extract safely (no paths outside `dest`, no devices, bounded size); the profile root."""
    budget = limits.max_bytes * EXTRACT_FACTOR
    dest.mkdir(mode=0o700)
    try:
        if suffix == ".zip":
            with _open_zip(archive, shown) as z:
                if sum(i.file_size for i in z.infolist()) > budget:
                    raise ProfileUnavailable(f"profile {shown} unpacks to more than {budget} B")
                z.extractall(dest)  # noqa: S202 - zipfile drops absolute paths and '..'
        else:
            with _open_tar(archive, shown) as t:
                if sum(m.size for m in _tar_members(t, shown)) > budget:
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
    with (
        out.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
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
