"""Results in an S3 bucket (AWS, MinIO, Ceph RGW, GCS's S3 API): `s3://bucket/prefix`.

The client is obstore (Rust's object_store): chosen by measurement over boto3 and minio
(bench/bench_s3_client.py; docs/operations.md "Results in an object store"): it imports in
a few milliseconds where boto3 takes over a hundred, and spends the least CPU per object.
It is imported here only, and this module only when an `s3://` location is opened.

- Credentials, region and endpoint: the library's default chain (AWS_ACCESS_KEY_ID/
  AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_REGION, AWS_WEB_IDENTITY_TOKEN_FILE with
  AWS_ROLE_ARN, the ECS or EC2 instance role); SCANFLEET_S3_ENDPOINT names a MinIO/Ceph
  endpoint (path-style requests; http allowed for such an endpoint).
- Each object is one whole PUT (`use_multipart=False`): a reader never sees half an object,
  and no multipart upload is ever left behind. No ACL header is sent, so every object gets
  S3's default `private` ACL (owner only), also in buckets that enforce bucket ownership.
- Every request has a timeout (SCANFLEET_S3_TIMEOUT, default 30 s) and is retried a few
  times with backoff within four timeouts; then the write raises ResultsUnwritable (a read
  ResultsUnavailable), whose message names the object, never a credential.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from scanfleet.core.errors import BadInput, ResultsUnavailable, ResultsUnwritable
from scanfleet.core.logs import redact_text
from scanfleet.store import files
from scanfleet.store.results import S3_SCHEME

RETRIES = 3
READ_THREADS = 64
"""GETs in flight at most; READ_AHEAD times as many are submitted ahead of the reader, so
memory stays bounded. Finalize and `report` read every summary of a run, and S3 answers a GET in
tens of milliseconds: how many are in flight is what bounds them (bench/bench_s3_reads.py:
10,000 summaries at 20 ms take 14 s with 16, 3.5 s with 64). 64 at 20 ms is at most
3,200 GETs/s (2,900 measured), within S3's 5,500 per prefix."""
READ_AHEAD = 4


def _why(e: BaseException) -> str:
    """One short line: the library's first line, without anything secret."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return redact_text(f"{type(e).__name__}: {first}")[:300]


class S3Results:
    """A `ResultsStore` on one bucket and prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint: str | None = None,
        timeout: float = 30.0,
        in_flight: int = READ_THREADS,
    ) -> None:
        self.bucket = bucket
        self.in_flight = in_flight
        self.prefix = prefix.strip("/")
        self.location = f"{S3_SCHEME}{bucket}/{self.prefix}".rstrip("/")
        client: dict[str, Any] = {
            "timeout": timedelta(seconds=timeout),
            "connect_timeout": timedelta(seconds=min(timeout, 10.0)),
        }
        config: dict[str, Any] = {}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
            client["allow_http"] = endpoint.startswith("http://")
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=client,  # type: ignore[arg-type]
            retry_config={
                "max_retries": RETRIES,
                "retry_timeout": timedelta(seconds=timeout * (RETRIES + 1)),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=5),
                    "base": 2,
                },
            },
        )

    @classmethod
    def from_url(cls, url: str, *, endpoint: str | None, timeout: float) -> S3Results:
        rest = url[len(S3_SCHEME) :]
        bucket, _, prefix = rest.partition("/")
        if not bucket or "@" in bucket or ":" in bucket:
            raise BadInput(
                f"results location {S3_SCHEME}{bucket.rpartition('@')[2]}/...: expected "
                "s3://bucket/prefix (credentials come from the AWS variables, never the URL)"
            )
        if any(p in ("", ".", "..") for p in prefix.strip("/").split("/")) and prefix.strip("/"):
            raise BadInput(f"results location {url!r}: empty, '.' or '..' prefix segment")
        return cls(bucket, prefix, endpoint=endpoint, timeout=timeout)

    def _key(self, run_id: str, name: str) -> str:
        return f"{files.check_run_id(run_id)}/{name}"

    def staging(self, run_id: str) -> Path:
        """`<tmp>/scanfleet.results.staging.<uid>/<run_id>`, 0700: the auditor's report
        waits there until `publish` uploads it."""
        root = Path(tempfile.gettempdir()) / f"scanfleet.results.staging.{os.getuid()}"
        root.mkdir(mode=0o700, exist_ok=True)
        st = root.lstat()
        if not root.is_dir() or root.is_symlink() or st.st_uid != os.getuid():
            raise ResultsUnwritable(f"staging directory {root} is not this user's own")
        os.chmod(root, 0o700)
        d = root / files.check_run_id(run_id)
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def _put(self, run_id: str, name: str, body: bytes) -> None:
        key = self._key(run_id, name)
        try:
            obstore.put(self._store, key, body, use_multipart=False)
        except (BaseError, OSError) as e:
            raise ResultsUnwritable(f"cannot write {key} to {self.location}: {_why(e)}") from None

    def publish(self, run_id: str, name: str, path: Path) -> None:
        try:
            self._put(run_id, name, path.read_bytes())
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            with contextlib.suppress(OSError):  # the run's last one: no empty dirs pile up
                path.parent.rmdir()  # (a scan still to come makes it again: copy_report)

    def write_json(self, run_id: str, name: str, data: Any) -> None:
        self._put(run_id, name, (json.dumps(data, indent=2) + "\n").encode())

    def read_bytes(self, run_id: str, name: str) -> bytes:
        key = self._key(run_id, name)
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (NotFoundError, FileNotFoundError):
            raise FileNotFoundError(f"{self.location}/{key}") from None
        except (BaseError, OSError) as e:
            raise ResultsUnavailable(f"cannot read {key} from {self.location}: {_why(e)}") from None

    def read_many(
        self, run_id: str, names: Iterable[str]
    ) -> Iterator[tuple[str, bytes | OSError | ResultsUnavailable]]:
        """Up to `in_flight` GETs at once (obstore releases the GIL), results in order:
        a run of 10,000 summaries is not 10,000 round trips one after the other."""

        def one(name: str) -> tuple[str, bytes | OSError | ResultsUnavailable]:
            try:
                return name, self.read_bytes(run_id, name)
            except (OSError, ResultsUnavailable) as e:
                return name, e

        with ThreadPoolExecutor(max_workers=self.in_flight) as pool:
            window: deque[Future[tuple[str, bytes | OSError | ResultsUnavailable]]] = deque()
            for name in names:
                window.append(pool.submit(one, name))
                if len(window) >= READ_AHEAD * self.in_flight:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()

    def exists(self, run_id: str, name: str) -> bool:
        key = self._key(run_id, name)
        try:
            obstore.head(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return False
        except (BaseError, OSError) as e:
            raise ResultsUnavailable(f"cannot read {key} from {self.location}: {_why(e)}") from None
        return True

    def _keys(self, run_id: str) -> list[str]:
        prefix = f"{files.check_run_id(run_id)}/"
        try:
            return [
                str(meta["path"])
                for batch in obstore.list(self._store, prefix, chunk_size=1000)
                for meta in batch
            ]
        except (BaseError, OSError) as e:
            raise ResultsUnavailable(
                f"cannot list {prefix} in {self.location}: {_why(e)}"
            ) from None

    def names(self, run_id: str) -> list[str]:
        prefix = f"{run_id}/"
        return sorted(k[len(prefix) :] for k in self._keys(run_id) if "/" not in k[len(prefix) :])

    def run_ids(self) -> list[str]:
        try:
            listed = obstore.list_with_delimiter(self._store, None)
        except (BaseError, OSError) as e:
            raise ResultsUnavailable(f"cannot list {self.location}: {_why(e)}") from None
        found = (p.rstrip("/").rpartition("/")[2] for p in listed["common_prefixes"])
        return sorted(p for p in found if files.RUN_ID_RE.fullmatch(p))

    def delete_run(self, run_id: str) -> None:
        """DeleteObjects, up to 1000 keys a request."""
        keys = self._keys(run_id)
        if not keys:
            return
        try:
            obstore.delete(self._store, keys)
        except (BaseError, OSError) as e:
            raise ResultsUnwritable(
                f"cannot delete run {run_id} from {self.location}: {_why(e)}"
            ) from None
