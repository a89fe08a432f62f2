"""An authenticated broker, TLS end to end, and no secret anywhere after a fleet run.

Real redis-server processes (with `requirepass`, and with TLS only: `--port 0 --tls-port`,
a test CA and server certificate made here with `cryptography`), real `scanfleet worker`
and `scanfleet beat` processes, `submit --wait` and `status`. After the run, a leak search
over every log, stdout/stderr, every result file and a dump of every Redis key: the broker
password and the profile URL's credentials appear in none of them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scanfleet.core.errors import BadInput
from scanfleet.core.settings import Settings
from scanfleet.worker.app import broker_tls
from tests.support.fixtures_fleet import CLI, FleetClusters, Worker, free_port, run_cli, wait_for
from tests.support.profile_server import ProfileServer, profile_archive
from tests.support.redis_dump import dump_redis
from tests.support.tools import require_tool

PASSWORD = "br0ker-Pa55-d8f1c2"
PROFILE_SECRET = "pr0file-s3cret-77a1"
ALLOW_SECRET = "all0w-s3cret-19be"
SECRETS = (PASSWORD, PROFILE_SECRET, ALLOW_SECRET)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(200)]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_tls(directory: Path) -> dict[str, Path]:
    """A test CA and a server certificate for localhost / 127.0.0.1, as PEM files."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("scanfleet test CA"))
        .issuer_name(_name("scanfleet test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "ca": directory / "ca.pem",
        "cert": directory / "server.pem",
        "key": directory / "server-key.pem",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class SecureRedis:
    """redis-server with a password, optionally reachable over TLS only."""

    def __init__(self, directory: Path, tls: dict[str, Path] | None) -> None:
        server = require_tool("redis-server")  # a failure under CI=true, a skip elsewhere
        self.port = free_port()
        self.tls = tls
        args = [
            server,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--requirepass",
            PASSWORD,
        ]
        if tls:
            args += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(tls["cert"]),
                "--tls-key-file",
                str(tls["key"]),
                "--tls-ca-cert-file",
                str(tls["ca"]),
                "--tls-auth-clients",
                "no",
            ]
        else:
            args += ["--port", str(self.port)]
        directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 10, "redis-server to answer PING")

    @property
    def url(self) -> str:
        if self.tls:
            return (
                f"rediss://:{PASSWORD}@localhost:{self.port}/0"
                f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls['ca']}"
            )
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def _up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def secure_redis(tmp_path: Path) -> Iterator[Callable[[bool], SecureRedis]]:
    started: list[SecureRedis] = []

    def factory(tls: bool) -> SecureRedis:
        files = make_tls(tmp_path / "tls") if tls else None
        server = SecureRedis(tmp_path / f"redis-{len(started)}", files)
        started.append(server)
        return server

    yield factory
    for s in started:
        s.stop()


def leak_search(*texts: str, dirs: tuple[Path, ...] = ()) -> list[str]:
    """Every (secret, where) pair found."""
    found = [f"{s} in text #{i}" for i, t in enumerate(texts) for s in SECRETS if s in t]
    for d in dirs:
        for f in d.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                found += [f"{s} in {f}" for s in SECRETS if s.encode() in data]
    return found


def _env(
    fleet_env: dict[str, str], url: str, profiles: str = "https://profiles.example/"
) -> dict[str, str]:
    allow = profiles.replace("://", f"://bot:{ALLOW_SECRET}@", 1)
    return {**fleet_env, "SCANFLEET_BROKER_URL": url, "SCANFLEET_ALLOWED_PROFILES": f"/,{allow}"}


@pytest.fixture
def profiles() -> Iterator[ProfileServer]:
    """The profile server the workers download from (scanfleet fetches URL profiles itself)."""
    with ProfileServer() as srv:
        srv.routes["/p.tar.gz"] = profile_archive({"inspec.yml": "name: p\n"})
        yield srv


def test_tls_and_password_worker_submit_status_beat_and_no_secret_anywhere(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    secure_redis: Callable[[bool], SecureRedis],
    tmp_path: Path,
    profiles: ProfileServer,
) -> None:
    server = secure_redis(True)
    env = _env(fleet_env, server.url, profiles.url("/"))
    worker = make_worker(env, concurrency=2)
    profile = profiles.url("/p.tar.gz", userinfo=f"scanuser:{PROFILE_SECRET}")
    sub = run_cli(
        ["submit", "--context", "east", "apps/api/app", "--profile", profile, "--wait"], env
    )
    assert sub.returncode == 0, sub.stderr[-2000:]
    run_id = sub.stdout.splitlines()[0].strip()
    st = run_cli(["status", run_id, "--json"], env)
    assert st.returncode == 0, st.stderr[-2000:]
    assert '"finished"' in st.stdout

    sweeps = tmp_path / "sweeps.yml"
    sweeps.write_text(
        "- name: minutely\n  schedule: '* * * * *'\n  contexts: [west]\n"
        "  namespaces: [apps]\n  selector: app=api\n"
        f"  profile: {profiles.url('/p.tar.gz')}\n"
    )
    beat_log = tmp_path / "beat.log"
    with beat_log.open("wb") as out:
        beat = subprocess.Popen(
            [*CLI, "beat", "--sweeps", str(sweeps)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            results = Path(env["SCANFLEET_RESULTS_DIR"])
            swept = wait_for(
                lambda: [
                    p for p in results.glob("*/run.json") if '"sweep:minutely"' in p.read_text()
                ],
                100,
                "the beat-scheduled sweep run to finish",
                every=0.5,
            )
        finally:
            beat.terminate()
            beat.wait(20)
    assert swept
    # The sweep's profile got the worker's allow-list credentials, which stay out of files.
    dump = dump_redis(server.client())
    assert run_id in dump
    leaks = leak_search(
        sub.stdout,
        sub.stderr,
        st.stdout,
        st.stderr,
        dump,
        worker.log.read_text(errors="replace"),
        beat_log.read_text(errors="replace"),
        dirs=(Path(env["SCANFLEET_RESULTS_DIR"]),),
    )
    assert leaks == []


def test_password_from_a_url_file_and_a_wrong_password_is_refused(
    fleet_env: dict[str, str],
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    secure_redis: Callable[[bool], SecureRedis],
    tmp_path: Path,
) -> None:
    server = secure_redis(False)
    url_file = tmp_path / "broker-url"
    url_file.write_text(server.url + "\n")
    env = _env(fleet_env, "")
    env["SCANFLEET_BROKER_URL_FILE"] = str(url_file)
    worker = make_worker(env, concurrency=1)
    sub = run_cli(
        ["submit", "--context", "east", "apps/api/app", "--profile", "/srv/profiles/p", "--wait"],
        env,
    )
    assert sub.returncode == 0, sub.stderr[-2000:]
    wrong = {
        **env,
        "SCANFLEET_BROKER_URL": f"redis://:not-{PASSWORD[:4]}@127.0.0.1:{server.port}/0",
    }
    refused = run_cli(
        ["submit", "--context", "east", "apps/api/app", "--profile", "/srv/profiles/p"], wrong
    )
    assert refused.returncode == 3
    assert (
        leak_search(
            sub.stdout,
            sub.stderr,
            refused.stderr,
            worker.log.read_text(errors="replace"),
            dump_redis(server.client()),
            dirs=(Path(env["SCANFLEET_RESULTS_DIR"]),),
        )
        == []
    )


def test_broker_url_file_rules(tmp_path: Path) -> None:
    f = tmp_path / "url"
    f.write_text("redis://:pw@h:6379/0\n")
    assert Settings.from_env({"SCANFLEET_BROKER_URL_FILE": str(f)}).broker_url == (
        "redis://:pw@h:6379/0"
    )
    explicit = {"SCANFLEET_BROKER_URL": "redis://x:6379/0", "SCANFLEET_BROKER_URL_FILE": str(f)}
    assert Settings.from_env(explicit).broker_url == "redis://x:6379/0"
    for bad in (tmp_path / "missing", tmp_path / "empty"):
        if bad.name == "empty":
            bad.write_text("\n")
        with pytest.raises(BadInput, match="SCANFLEET_BROKER_URL_FILE"):
            Settings.from_env({"SCANFLEET_BROKER_URL_FILE": str(bad)})


def test_rediss_without_options_verifies_the_certificate() -> None:
    assert broker_tls("rediss://:pw@h:6380/0") == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert broker_tls("rediss://h:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/ca") is None
    assert broker_tls("redis://h:6379/0") is None


def test_workers_have_remote_control_off() -> None:
    from scanfleet.core.settings import Settings
    from scanfleet.worker.app import create_app

    assert create_app(Settings()).conf.worker_enable_remote_control is False
