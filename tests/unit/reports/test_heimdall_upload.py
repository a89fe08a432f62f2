"""`report --format hdf --heimdall-url`: each target's file is POSTed to a local server that
checks the request exactly as Heimdall's backend reads it (path /evaluations, header
`Authorization: Api-Key <key>`, multipart fields data/filename/public/evaluationTags); 5xx
and dropped connections are retried, then reported without changing the exit code; the key
never appears in any output or file."""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.settings import heimdall_api_key
from scanfleet.reports.heimdall import check_heimdall_url
from scanfleet.store.files import run_dir
from scanfleet.store.results import LocalResults
from tests.support.fixtures_s3 import S3Server
from tests.support.report_runs import FULL, RUN_ID, write_run

KEY = "hk-5ecret-Key-0123456789abcdef"


class FakeHeimdall(ThreadingHTTPServer):
    """Records every upload; answers per file name from `plan` (a list of status codes, or
    "drop" to close the connection without an answer), else 201."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.plan: dict[str, list[int | str]] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/heimdall"


class _Handler(BaseHTTPRequestHandler):
    server: FakeHeimdall

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        raw = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode() + body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        parts: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            parts[str(name)] = {
                "filename": part.get_filename(),
                "content_type": part.get_content_type(),
                "body": part.get_payload(decode=True),
            }
        req = {
            "method": "POST",
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "content_type": message.get_content_type(),
            "parts": parts,
        }
        name = parts.get("filename", {}).get("body", b"").decode()
        with self.server.lock:
            self.server.requests.append(req)
            plan = self.server.plan.get(name) or [201]
            answer = plan.pop(0) if len(plan) > 1 else plan[0]
        if answer == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if answer == 201:
            out = json.dumps({"id": str(len(self.server.requests)), "filename": name}).encode()
        else:  # a hostile server echoes what it was sent
            out = f"broken; you sent {self.headers.get('Authorization')}".encode()
        self.send_response(int(answer))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def heimdall() -> Iterator[FakeHeimdall]:
    server = FakeHeimdall()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def scanfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from scanfleet.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "SCANFLEET_LOG_FORMAT": "console", **env},
        timeout=120,
        check=False,
    )


@pytest.fixture
def results(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    run_dir(out, RUN_ID).mkdir(parents=True)
    run = write_run(out, FULL)
    run["source"] = "sweep:nightly"
    (run_dir(out, RUN_ID) / "run.json").write_text(json.dumps(run))
    return out


@pytest.mark.timeout(120)
def test_every_target_is_uploaded_as_heimdall_defines_it(
    heimdall: FakeHeimdall, results: Path, tmp_path: Path
) -> None:
    heimdall.plan = {
        "prod-east_payments_api-7d9f_app.json": [503, 502, 201],  # retried, then accepted
        "prod-west_db_redis-0_redis.json": [500],  # always fails
        "prod-east_web_frontend-6f4d_nginx.json": ["drop", 201],  # a dropped connection
    }
    out = tmp_path / "hdf"
    p = scanfleet(
        "report", RUN_ID, "--results-dir", str(results), "--format", "hdf",
        "--output", str(out), "--heimdall-url", heimdall.url,
        env={"SCANFLEET_HEIMDALL_API_KEY": KEY},
    )  # fmt: skip
    assert p.returncode == 1, p.stderr  # the run's own verdict, whatever the upload did
    assert "heimdall: uploaded 6 of 8 evaluations" in p.stderr
    assert "prod-west_db_redis-0_redis.json not uploaded: HTTP 500" in p.stderr
    assert "(after 3 attempts)" in p.stderr
    assert "prod-west_db_backup-cron_app.json not uploaded: could not be scanned" in p.stderr

    by_name: dict[str, list[dict[str, Any]]] = {}
    for req in heimdall.requests:
        assert req["method"] == "POST"
        assert req["path"] == "/heimdall/evaluations"
        assert req["authorization"] == f"Api-Key {KEY}"
        assert req["content_type"] == "multipart/form-data"
        assert set(req["parts"]) == {"data", "filename", "public", "evaluationTags"}
        name = req["parts"]["filename"]["body"].decode()
        by_name.setdefault(name, []).append(req)
    assert {n: len(r) for n, r in by_name.items()} == {
        f.name: {
            "prod-east_payments_api-7d9f_app.json": 3,
            "prod-west_db_redis-0_redis.json": 3,
            "prod-east_web_frontend-6f4d_nginx.json": 2,
        }.get(f.name, 1)
        for f in out.iterdir()
    }
    for name, reqs in by_name.items():
        parts = reqs[-1]["parts"]
        assert parts["data"]["filename"] == name
        assert parts["data"]["content_type"] == "application/json"
        assert json.loads(parts["data"]["body"]) == json.loads((out / name).read_bytes())
        assert parts["public"]["body"] == b"false"
        meta = json.loads(parts["data"]["body"])["passthrough"]["scanfleet"]
        assert parts["evaluationTags"]["body"].decode().split(",") == [
            f"run:{RUN_ID}",
            f"context:{meta['context']}",
            f"namespace:{meta['namespace']}",
            "sweep:nightly",
        ]

    # the key is in no output and no file, even though the failing server echoed it back
    assert KEY not in p.stdout + p.stderr
    for f in [*results.rglob("*"), *out.rglob("*")]:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_key_from_a_file_and_refused_without_one(
    heimdall: FakeHeimdall, results: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(f"{KEY}\n")
    p = scanfleet(
        "report", RUN_ID, "--results-dir", str(results), "--format", "hdf",
        "--heimdall-url", heimdall.url,
        env={"SCANFLEET_HEIMDALL_API_KEY_FILE": str(key_file)},
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert "heimdall: uploaded 7 of 8 evaluations" in p.stderr
    assert {r["authorization"] for r in heimdall.requests} == {f"Api-Key {KEY}"}
    sent = len(heimdall.requests)

    env = {k: "" for k in ("SCANFLEET_HEIMDALL_API_KEY", "SCANFLEET_HEIMDALL_API_KEY_FILE")}
    p = scanfleet(
        "report", RUN_ID, "--results-dir", str(results), "--format", "hdf",
        "--heimdall-url", heimdall.url, env=env,
    )  # fmt: skip
    assert p.returncode == 2
    assert "--heimdall-url needs an API key" in p.stderr
    assert len(heimdall.requests) == sent  # nothing sent


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/x", "must be http:// or https://"),
        (f"https://user:{KEY}@h", "must not carry credentials"),
        ("https://h/?token=1", "must not have a query"),
    ],
)
def test_bad_heimdall_url_is_refused_without_the_key(url: str, message: str) -> None:
    with pytest.raises(BadInput, match=message) as e:
        check_heimdall_url(url)
    assert KEY not in str(e.value)


def test_api_key_sources(tmp_path: Path) -> None:
    assert heimdall_api_key({"SCANFLEET_HEIMDALL_API_KEY": f" {KEY} "}) == KEY
    assert heimdall_api_key({}) is None
    with pytest.raises(BadInput, match="cannot be read"):
        heimdall_api_key({"SCANFLEET_HEIMDALL_API_KEY_FILE": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadInput, match="is empty"):
        heimdall_api_key({"SCANFLEET_HEIMDALL_API_KEY_FILE": str(tmp_path / "empty")})


# --- a sweep's `upload:` ------------------------------------------------------------------


def test_sweeps_file_upload_key_is_validated(tmp_path: Path) -> None:
    from scanfleet.core.errors import SweepsFileError
    from scanfleet.sweeps.spec import Sweep, load_sweeps

    def sweeps(upload: object) -> Path:
        path = tmp_path / "sweeps.yml"
        base = {"name": "nightly", "schedule": "0 2 * * *", "all_namespaces": True}
        path.write_text(json.dumps([{**base, "profile": "/p", "upload": upload}]))
        return path

    (s,) = load_sweeps(sweeps({"heimdall_url": "https://heimdall.example/base/"}))
    assert s.upload == "https://heimdall.example/base"
    assert Sweep.from_dict(s.to_dict()) == s
    for bad, words in [
        ({"heimdall_url": f"https://u:{KEY}@h"}, "must not carry credentials"),
        ({"heimdall": "https://h"}, "must be a mapping with 'heimdall_url'"),
        ("https://h", "must be a mapping with 'heimdall_url'"),
        ({"heimdall_url": "file:///etc"}, "must be http:// or https://"),
    ]:
        with pytest.raises(SweepsFileError, match=words) as e:
            load_sweeps(sweeps(bad))
        assert "sweep 'nightly': key 'upload'" in str(e.value)
        assert KEY not in str(e.value)


@pytest.mark.timeout(120)
def test_a_sweep_run_uploads_when_its_worker_finalizes_it(
    heimdall: FakeHeimdall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    import structlog

    from scanfleet.runs.pipeline import finalize
    from scanfleet.scan.plan import RunPlan
    from scanfleet.sweeps.spec import Sweep
    from scanfleet.sweeps.tick import finalize_hooks, with_upload, write_drift

    results = tmp_path / "results"
    run_dir(results, RUN_ID).mkdir(parents=True)
    write_run(results, FULL, finished=False)  # summaries and reports, no run.json yet
    sweep = Sweep(name="nightly", schedule="0 2 * * *", profile="p", upload=heimdall.url)
    plain = RunPlan(RUN_ID, "sweep:nightly", "p", "2026-03-01T10:15:00Z")
    assert finalize_hooks(plain) == (write_drift,)
    plan = RunPlan.from_dict(with_upload(plain, sweep).to_dict())  # as the worker reads it
    assert plan.extra == {"upload": {"heimdall_url": heimdall.url}}
    assert KEY not in json.dumps(plan.to_dict())
    heimdall.plan = {"prod-west_db_redis-0_redis.json": [500]}
    monkeypatch.setenv("SCANFLEET_HEIMDALL_API_KEY", KEY)
    monkeypatch.setattr("scanfleet.reports.heimdall.HeimdallServer.wait_s", 0.0)

    with structlog.testing.capture_logs() as logs:
        run = finalize(plan, results, lambda: datetime(2026, 3, 1, 11, tzinfo=UTC),
                       finalize_hooks(plan))  # fmt: skip
    assert run["exit_code"] == 1  # the failed upload does not change the verdict
    assert json.loads((run_dir(results, RUN_ID) / "run.json").read_text()) == run
    [done] = [e for e in logs if e["event"] == "heimdall.uploaded"]
    assert done["uploaded"] == 6
    assert {f.split(":")[0] for f in done["failed"]} == {
        "prod-west_db_redis-0_redis.json",
        "prod-west_db_backup-cron_app.json",
    }
    tags = {r["parts"]["evaluationTags"]["body"].decode() for r in heimdall.requests}
    assert all(t.startswith(f"run:{RUN_ID},context:") for t in tags)
    assert all(t.endswith(",sweep:nightly") for t in tags)
    assert {r["authorization"] for r in heimdall.requests} == {f"Api-Key {KEY}"}
    assert KEY not in repr(logs)


@pytest.mark.timeout(120)
def test_a_sweep_run_in_a_bucket_uploads_and_gets_its_drift(
    heimdall: FakeHeimdall,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The finalize hooks read and write through the results store: with results in
    s3://, the HDF files come from the bucket's summaries and reports, and drift.json
    lands next to run.json in the bucket."""
    from datetime import UTC, datetime

    import structlog

    from scanfleet.core.settings import Settings
    from scanfleet.runs.pipeline import finalize
    from scanfleet.scan.plan import RunPlan
    from scanfleet.store.results import open_results, read_json
    from scanfleet.sweeps.spec import Sweep
    from scanfleet.sweeps.tick import finalize_hooks, with_upload

    local = tmp_path / "results"
    run_dir(local, RUN_ID).mkdir(parents=True)
    write_run(local, FULL, finished=False)
    bucket = s3_server.bucket()
    client = s3_server.client()
    for path in run_dir(local, RUN_ID).iterdir():
        client.put_object(Bucket=bucket, Key=f"r/{RUN_ID}/{path.name}", Body=path.read_bytes())
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    store = open_results(f"s3://{bucket}/r", Settings(s3_endpoint=s3_server.endpoint))
    sweep = Sweep(name="nightly", schedule="0 2 * * *", profile="p", upload=heimdall.url)
    plain = RunPlan(RUN_ID, "sweep:nightly", "p", "2026-03-01T10:15:00Z")
    plan = RunPlan.from_dict(with_upload(plain, sweep).to_dict())
    monkeypatch.setenv("SCANFLEET_HEIMDALL_API_KEY", KEY)

    with structlog.testing.capture_logs() as logs:
        run = finalize(plan, store, lambda: datetime(2026, 3, 1, 11, tzinfo=UTC),
                       finalize_hooks(plan))  # fmt: skip
    [done] = [e for e in logs if e["event"] == "heimdall.uploaded"]
    # every scanned target's report came from the bucket; the errored one has none
    assert done["uploaded"] == len(heimdall.requests) == 7
    assert done["failed"] == ["prod-west_db_backup-cron_app.json: could not be scanned: no report"]
    assert read_json(store, RUN_ID, "run.json") == run
    drift = read_json(store, RUN_ID, "drift.json")
    assert (drift["source"], drift["run_a"], drift["run_b"]) == ("sweep:nightly", None, RUN_ID)
    assert KEY not in repr(logs)


def test_a_sweep_upload_without_a_key_is_skipped_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import structlog

    from scanfleet.sweeps.tick import upload_to_heimdall

    monkeypatch.delenv("SCANFLEET_HEIMDALL_API_KEY", raising=False)
    monkeypatch.delenv("SCANFLEET_HEIMDALL_API_KEY_FILE", raising=False)
    with structlog.testing.capture_logs() as logs:
        upload_to_heimdall("http://127.0.0.1:9", LocalResults(tmp_path), {"run_id": RUN_ID})
    assert [e["event"] for e in logs] == ["heimdall.upload_skipped"]
