"""Remote profiles: download (download.py), cache, digest pinning and vendoring (profiles.py).

Every test talks to a real HTTP(S) server on 127.0.0.1 (tests/support/profile_server.py); vendoring
runs the stand-in auditor's `vendor` sub-command.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import ssl
import stat
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from scanfleet.core.errors import BadInput, ProfileMismatch, ProfileUnavailable
from scanfleet.core.logs import redact_text
from scanfleet.profiles.archives import deterministic_tar, remote_dependencies
from scanfleet.profiles.download import Limits, download
from scanfleet.profiles.fetch import (
    FetchConfig,
    ProfileCache,
    RunPins,
    fetch,
    fetch_for_run,
    file_sha256,
    pinned,
)
from tests.support.profile_server import (
    ProfileServer,
    Redirect,
    Status,
    profile_archive,
    self_signed,
)

PASSWORD = "s3cr3t-Pa55word"


def manifest(depends: str = "") -> str:
    return f"name: p\nversion: 1.0.0\n{depends}"


@pytest.fixture
def server() -> Iterator[ProfileServer]:
    with ProfileServer() as srv:
        srv.routes["/p.tar.gz"] = profile_archive(
            {"inspec.yml": manifest(), "controls/a.rb": "control 'a' do\nend\n"}, top="p-main"
        )
        yield srv


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed(tmp_path)


@pytest.fixture
def config(tmp_path: Path, standin_auditor: str) -> FetchConfig:
    return FetchConfig(auditor=standin_auditor, cache_dir=tmp_path / "cache", env=dict(os.environ))


class Recorder:
    """The run's digest record, in memory (first writer wins), as the plan in Redis does."""

    def __init__(self) -> None:
        self.digest: str | None = None
        self.calls = 0

    def __call__(self, digest: str) -> str:
        self.calls += 1
        if self.digest is None:
            self.digest = digest
        return self.digest


# -- download -----------------------------------------------------------------------------


def test_download_streams_to_a_private_file_and_returns_the_sha256(
    server: ProfileServer, tmp_path: Path
) -> None:
    dest = tmp_path / "got"
    digest = download(server.url("/p.tar.gz"), dest, Limits())
    body = server.routes["/p.tar.gz"]
    assert isinstance(body, bytes)
    assert dest.read_bytes() == body
    assert digest == hashlib.sha256(body).hexdigest()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert server.hits["/p.tar.gz"] == 1


def test_credentials_become_basic_auth_and_appear_in_no_log_or_error(
    server: ProfileServer, tmp_path: Path
) -> None:
    url = server.url("/p.tar.gz", userinfo=f"reader:{PASSWORD}")
    with capture_logs() as logs:
        download(url, tmp_path / "ok", Limits())
    expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    assert server.auth["/p.tar.gz"] == [expected]
    assert PASSWORD not in repr(logs)
    # Remembered for redaction wherever it might surface later (stdlib logging, stderr).
    assert PASSWORD not in redact_text(f"x {PASSWORD} {expected}")
    server.routes["/p.tar.gz"] = Status(401)
    with pytest.raises(ProfileUnavailable) as err:
        download(url, tmp_path / "denied", Limits())
    assert "HTTP 401" in str(err.value)
    assert PASSWORD not in str(err.value)
    assert "reader" not in str(err.value)
    assert not (tmp_path / "denied").exists()


@pytest.mark.parametrize("chunked", [False, True])
def test_the_size_cap_stops_the_download_and_leaves_no_file(tmp_path: Path, chunked: bool) -> None:
    with ProfileServer(chunked=chunked) as srv:
        srv.routes["/big.tar.gz"] = os.urandom(300_000)
        with pytest.raises(ProfileUnavailable, match="larger than 100000 bytes"):
            download(srv.url("/big.tar.gz"), tmp_path / "big", Limits(max_bytes=100_000))
    assert not (tmp_path / "big").exists()


def test_a_stalled_server_times_out(tmp_path: Path) -> None:
    with ProfileServer() as srv:
        srv.routes["/slow"] = b"x"
        srv.stall = threading.Event()
        with pytest.raises(ProfileUnavailable, match="failed"):
            download(srv.url("/slow"), tmp_path / "slow", Limits(timeout=0.3))
    assert not (tmp_path / "slow").exists()


def test_redirects_are_followed_only_to_https(server: ProfileServer, tmp_path: Path) -> None:
    server.routes["/moved"] = Redirect(server.url("/p.tar.gz"))  # http -> http
    with pytest.raises(ProfileUnavailable, match="only to https"):
        download(server.url("/moved", userinfo=f"u:{PASSWORD}"), tmp_path / "x", Limits())
    assert server.hits["/p.tar.gz"] == 0
    with pytest.raises(ProfileUnavailable, match="only http"):
        download("file:///etc/passwd", tmp_path / "y", Limits())


def test_https_redirects_keep_credentials_on_the_same_origin_only(
    tls: tuple[Path, Path], tmp_path: Path
) -> None:
    ctx = ssl.create_default_context(cafile=str(tls[0]))
    body = profile_archive({"inspec.yml": manifest()})
    with ProfileServer(tls=tls) as srv:
        srv.routes["/final.tar.gz"] = body
        srv.routes["/same"] = Redirect(srv.url("/final.tar.gz"))
        srv.routes["/other"] = Redirect(srv.url("/final.tar.gz", host="localhost"))
        userinfo = f"u:{PASSWORD}"
        download(srv.url("/same", userinfo=userinfo), tmp_path / "a", Limits(ssl_context=ctx))
        download(srv.url("/other", userinfo=userinfo), tmp_path / "b", Limits(ssl_context=ctx))
        auth = srv.auth["/final.tar.gz"]
    assert auth[0] is not None
    assert auth[0].startswith("Basic ")
    assert auth[1] is None  # another origin (localhost): no credentials
    assert (tmp_path / "b").read_bytes() == body


def test_https_with_an_untrusted_certificate_fails(tls: tuple[Path, Path], tmp_path: Path) -> None:
    with ProfileServer(tls=tls) as srv:
        srv.routes["/p.tar.gz"] = b"x"
        with pytest.raises(ProfileUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            download(srv.url("/p.tar.gz"), tmp_path / "p", Limits())


# -- the archive and its dependencies -------------------------------------------------------


def test_remote_dependencies_are_everything_but_path() -> None:
    deps = [
        {"name": "a", "url": "https://x/a.tar.gz"},
        {"name": "b", "git": "https://g/b"},
        {"name": "c", "supermarket": "dev-sec/c"},
        {"name": "d", "compliance": "admin/d"},
        {"name": "e", "path": "../e"},
        {"name": "f", "path": "libs/f"},
        {"name": "dev-sec/ssh-baseline"},  # no source: a Supermarket name
    ]
    assert remote_dependencies({"depends": deps}) == ["a", "b", "c", "d", "dev-sec/ssh-baseline"]
    assert remote_dependencies({"depends": [{"name": "e", "path": "e"}]}) == []
    assert remote_dependencies({}) == []


def test_a_url_that_is_not_an_archive_is_refused(
    server: ProfileServer, config: FetchConfig
) -> None:
    server.routes["/page"] = b"<html>login</html>"
    with pytest.raises(ProfileUnavailable, match=r"not a \.tar\.gz or \.zip"):
        fetch(server.url("/page"), ProfileCache.open(config.cache_dir), config)


def test_an_archive_escaping_its_directory_is_refused(
    server: ProfileServer, config: FetchConfig
) -> None:
    server.routes["/dep.tar.gz"] = profile_archive({"inspec.yml": manifest()})
    server.routes["/evil.tar.gz"] = profile_archive(
        {
            "inspec.yml": manifest(
                f"depends:\n  - name: d\n    url: {server.url('/dep.tar.gz')}\n"
            ),
            "../../escaped": "x",
        }
    )
    with pytest.raises(ProfileUnavailable, match="cannot unpack"):
        fetch(server.url("/evil.tar.gz"), ProfileCache.open(config.cache_dir), config)
    assert not (config.cache_dir.parent / "escaped").exists()  # type: ignore[union-attr]


def test_deterministic_tar_depends_on_content_only(tmp_path: Path) -> None:
    def tree(root: Path, mtime: int) -> Path:
        (root / "controls").mkdir(parents=True)
        (root / "inspec.yml").write_text(manifest())
        (root / "controls" / "a.rb").write_text("control 'a'\n")
        for p in (root / "inspec.yml", root / "controls" / "a.rb", root / "controls"):
            os.utime(p, (mtime, mtime))
        return root

    deterministic_tar(tree(tmp_path / "one", 1_000), tmp_path / "one.tar.gz")
    deterministic_tar(tree(tmp_path / "two", 2_000_000), tmp_path / "two.tar.gz")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    (tmp_path / "two" / "controls" / "a.rb").write_text("control 'b'\n")
    deterministic_tar(tmp_path / "two", tmp_path / "three.tar.gz")
    assert (tmp_path / "three.tar.gz").read_bytes() != (tmp_path / "one.tar.gz").read_bytes()


# -- the cache ------------------------------------------------------------------------------


def test_the_cache_is_private_and_refuses_a_symlink(tmp_path: Path) -> None:
    cache = ProfileCache.open(tmp_path / "c")
    assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ProfileUnavailable, match="SCANFLEET_PROFILE_CACHE"):
        ProfileCache.open(tmp_path / "link")


def test_a_cached_file_changed_on_disk_is_never_used(
    server: ProfileServer, config: FetchConfig
) -> None:
    cache = ProfileCache.open(config.cache_dir)
    got = fetch(server.url("/p.tar.gz"), cache, config)
    assert cache.lookup(server.url("/p.tar.gz"), got.sha256) == got.path
    assert stat.S_IMODE(got.path.parent.stat().st_mode) == 0o700
    got.path.write_bytes(b"tampered")
    assert cache.lookup(server.url("/p.tar.gz"), got.sha256) is None
    assert not got.path.exists()


# -- one fetch per run, and pinning on workers ----------------------------------------------


def test_fetch_for_run_downloads_once_and_fails_as_bad_input(
    server: ProfileServer, config: FetchConfig, tmp_path: Path
) -> None:
    assert fetch_for_run(str(tmp_path), config) is None  # a local profile: nothing to do
    got = fetch_for_run(server.url("/p.tar.gz"), config)
    assert got is not None
    assert got.path.is_file()
    assert got.sha256 == file_sha256(got.path)
    assert server.hits["/p.tar.gz"] == 1
    with pytest.raises(BadInput, match=r"HTTP 404.*nothing was started"):
        fetch_for_run(server.url("/missing.tar.gz"), config)


def test_pinned_records_the_first_digest_and_refuses_other_bytes(
    server: ProfileServer, config: FetchConfig, tmp_path: Path
) -> None:
    url = server.url("/p.tar.gz")
    record = Recorder()
    worker_a = ProfileCache.open(tmp_path / "a")
    first = pinned(url, None, record, config, worker_a)
    assert record.digest == first.sha256
    # The same worker, later targets: from its cache, no download.
    again = pinned(url, record.digest, record, config, worker_a)
    assert again.path == first.path
    assert server.hits["/p.tar.gz"] == 1
    # The server changes the bytes mid-run: a worker that has to download refuses.
    server.routes["/p.tar.gz"] = profile_archive({"inspec.yml": manifest("# changed\n")})
    changed = hashlib.sha256(server.routes["/p.tar.gz"]).hexdigest()  # type: ignore[arg-type]
    worker_b = ProfileCache.open(tmp_path / "b")
    with pytest.raises(ProfileMismatch) as err:
        pinned(url, record.digest, record, config, worker_b)
    assert first.sha256 in str(err.value)
    assert changed in str(err.value)
    assert err.value.kind == "rejected"
    assert worker_b.lookup(url, changed) is None  # the refused bytes are not kept
    # A worker that fetches before it saw the recorded digest loses the race the same way.
    with pytest.raises(ProfileMismatch):
        pinned(url, None, record, config, ProfileCache.open(tmp_path / "c"))
    assert record.digest == first.sha256


def test_run_pins_remember_the_digest_so_later_scans_use_the_cache(
    server: ProfileServer, config: FetchConfig
) -> None:
    url, record, pins = server.url("/p.tar.gz"), Recorder(), RunPins(config)
    first = pins.profile("run-1", url, None, record)
    # The worker's cached plan still says None: the pin it learned is used, no download.
    again = pins.profile("run-1", url, None, record)
    assert again == first
    assert server.hits["/p.tar.gz"] == 1
    assert record.calls == 1


def test_a_profile_with_remote_dependencies_is_vendored_once_deterministically(
    server: ProfileServer, config: FetchConfig, tmp_path: Path, auditor_log: object
) -> None:
    dep = profile_archive({"inspec.yml": "name: dep\nversion: 0.1.0\n"})
    server.routes["/dep.tar.gz"] = dep
    server.routes["/meta.tar.gz"] = profile_archive(
        {
            "inspec.yml": manifest(
                f"depends:\n  - name: dep\n    url: {server.url('/dep.tar.gz')}\n"
                "  - name: local\n    path: libs/local\n"
            ),
            "libs/local/inspec.yml": "name: local\n",
        },
        top="meta-main",
    )
    url = server.url("/meta.tar.gz")
    record = Recorder()
    a = pinned(url, None, record, config, ProfileCache.open(tmp_path / "a"))
    with tarfile.open(a.path, "r:gz") as t:
        names = set(t.getnames())
        lock = t.extractfile("inspec.lock").read().decode()  # type: ignore[union-attr]
    assert f"vendor/{hashlib.sha256(dep).hexdigest()}.tar.gz" in names
    assert "libs/local/inspec.yml" in names
    assert "inspec.yml" in names
    assert hashlib.sha256(dep).hexdigest() in lock
    assert a.sha256 == file_sha256(a.path) == record.digest
    assert a.sha256 != hashlib.sha256(server.routes["/meta.tar.gz"]).hexdigest()  # type: ignore[arg-type]
    assert server.hits["/dep.tar.gz"] == 1
    # Another worker vendors the same profile and dependency into the same bytes.
    b = pinned(url, record.digest, record, config, ProfileCache.open(tmp_path / "b"))
    assert b.sha256 == a.sha256
    assert server.hits["/dep.tar.gz"] == 2


def test_vendoring_failure_is_reported_with_the_auditors_words(
    server: ProfileServer, config: FetchConfig
) -> None:
    server.routes["/meta.tar.gz"] = profile_archive(
        {
            "inspec.yml": manifest(
                f"depends:\n  - name: gone\n    url: {server.url('/gone.tar.gz')}\n"
            )
        }
    )
    with pytest.raises(ProfileUnavailable, match=r"vendoring profile .* failed .*404"):
        fetch(server.url("/meta.tar.gz"), ProfileCache.open(config.cache_dir), config)


def test_archives_are_read_from_zip_too(server: ProfileServer, config: FetchConfig) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("p/inspec.yml", manifest())
    server.routes["/p.zip"] = buf.getvalue()
    got = fetch(server.url("/p.zip"), ProfileCache.open(config.cache_dir), config)
    assert got.path.name.endswith(".zip")
