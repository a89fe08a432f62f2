"""A profile server for tests: http.server on 127.0.0.1 in a thread, counting requests.

    with ProfileServer() as srv:
        srv.routes["/p.tar.gz"] = profile_archive({"inspec.yml": "name: p\\n"})
        srv.url("/p.tar.gz")          # http://127.0.0.1:PORT/p.tar.gz
        srv.hits["/p.tar.gz"]         # how many GETs it served
        srv.auth["/p.tar.gz"]         # the Authorization headers it received

A route is bytes (200), a list of bytes (one per request, the last one repeated: the file
changes under the run), `Redirect(location)` (302) or `Status(code)`. `tls=(cert, key)`
serves https. `stall` (an Event) makes every response wait until it is set.
"""

from __future__ import annotations

import datetime
import gzip
import io
import ipaddress
import ssl
import tarfile
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Redirect:
    location: str


@dataclass(frozen=True)
class Status:
    code: int


class ProfileServer:
    def __init__(self, tls: tuple[Path, Path] | None = None, chunked: bool = False) -> None:
        self.routes: dict[str, bytes | list[bytes] | Redirect | Status] = {}
        self.hits: Counter[str] = Counter()
        self.auth: defaultdict[str, list[str | None]] = defaultdict(list)
        self.stall: threading.Event | None = None
        self.chunked = chunked
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1", userinfo: str = "") -> str:
        at = f"{userinfo}@" if userinfo else ""
        return f"{self.scheme}://{at}{host}:{self.port}{path}"

    def __enter__(self) -> ProfileServer:
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.stall is not None:
            self.stall.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                try:
                    self._get()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (size cap, timeout)

            def _get(self) -> None:
                path = self.path
                with server._lock:
                    server.hits[path] += 1
                    server.auth[path].append(self.headers.get("Authorization"))
                if server.stall is not None:
                    server.stall.wait(60)
                route = server.routes.get(path, Status(404))
                if isinstance(route, list):
                    route = route[min(server.hits[path], len(route)) - 1]
                if isinstance(route, Redirect):
                    self.send_response(302)
                    self.send_header("Location", route.location)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif isinstance(route, Status):
                    self.send_response(route.code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._send(route)

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                if not server.chunked:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(body), 4096):
                    part = body[i : i + 4096]
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def profile_archive(files: Mapping[str, str | bytes], top: str = "", mtime: int = 0) -> bytes:
    """A tar.gz of `files` (name -> content), under directory `top` when given."""
    buf = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buf, mode="wb", mtime=mtime) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size, info.mtime, info.mode = len(data), mtime, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost that is its own CA: (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scanfleet test profiles")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "profiles-cert.pem", directory / "profiles-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
