"""Fixtures for results in an object store: a real S3 API server on loopback.

- `s3_server`: moto's server mode (`ThreadedMotoServer`) on a free loopback port, for the
  test session; `.bucket(name)` makes a fresh bucket, `.client()` a boto3 client for the
  test's own checks, `.env()` the AWS variables a scanfleet process needs.
- `s3_bucket`: a fresh bucket of that server (its name is unique per test).
- `SlowProxy(upstream, delay)`: a loopback TCP proxy that holds every response `delay`
  seconds (a slow endpoint); counts the connections it accepted and the most open at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

ACCESS_KEY = "AKIAOBJECTSTORETEST"
SECRET_KEY = "s3cr3t-objectstore-test-key-do-not-log"
_names = itertools.count()


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SCANFLEET_S3_ENDPOINT": self.endpoint,
        }

    def client(self) -> Any:
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    def bucket(self, deny_put: bool = False) -> str:
        name = f"results-{next(_names)}-{int(time.time() * 1000) % 100000}"
        c = self.client()
        c.create_bucket(Bucket=name)
        if deny_put:
            c.put_bucket_policy(
                Bucket=name,
                Policy=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [
                            {
                                "Effect": "Deny",
                                "Principal": "*",
                                "Action": "s3:PutObject",
                                "Resource": f"arn:aws:s3:::{name}/*",
                            }
                        ],
                    }
                ),
            )
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []))

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.bucket()


class SlowProxy:
    """Forwards loopback TCP to `upstream` (host, port), holding each response `delay` s."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.connections = 0
        self.open = 0
        self.peak = 0  # the most connections open at once
        self._count = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            conn.close()
            return

        def pump(src: socket.socket, dst: socket.socket, hold: float) -> None:
            try:
                while data := src.recv(65536):
                    if hold and self._stop.wait(hold):
                        break
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.close()

        with self._count:
            self.open += 1
            self.peak = max(self.peak, self.open)
        threading.Thread(target=pump, args=(conn, up, 0.0), daemon=True).start()
        pump(up, conn, self.delay)
        with self._count:
            self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
