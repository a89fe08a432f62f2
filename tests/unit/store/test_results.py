"""One contract, two results stores: a directory and an S3 bucket (moto's server on loopback).

Plus what only the object store has: private ACLs, one whole PUT per object (no multipart
upload left behind), a refused write and a slow endpoint ending in a clear error kind, and
credentials that never appear in a message.
"""

from __future__ import annotations

import dataclasses
import json
import stat
import time
from pathlib import Path
from typing import cast

import pytest

from scanfleet.core.errors import BadInput, ErrorKind, ResultsUnavailable, ResultsUnwritable
from scanfleet.core.settings import Settings
from scanfleet.store.files import GROUP_READ
from scanfleet.store.results import (
    RUN_FILE,
    LocalResults,
    ResultsStore,
    as_results,
    iter_summaries,
    latest_run_id,
    list_runs,
    open_results,
    read_json,
    summary_names,
    within,
)
from tests.support.fixtures_s3 import SECRET_KEY, S3Server, SlowProxy

RUN = "20250101T000000Z-abcdef"
OLDER = "20240101T000000Z-123456"


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return s3_server


def _settings(endpoint: str | None = None, timeout: float = 30.0) -> Settings:
    return dataclasses.replace(Settings(), s3_endpoint=endpoint, s3_timeout=timeout)


@pytest.fixture(params=["local", "s3"])
def results(request: pytest.FixtureRequest, tmp_path: Path) -> ResultsStore:
    if request.param == "local":
        return open_results(tmp_path / "results", _settings())
    server: S3Server = request.getfixturevalue("s3_env")
    bucket = server.bucket()
    return open_results(f"s3://{bucket}/scans/prod", _settings(server.endpoint))


def test_written_objects_read_back_and_replace(results: ResultsStore) -> None:
    results.write_json(RUN, "s1.json", {"scan_id": "s1", "status": "completed"})
    results.write_json(RUN, "s1.json", {"scan_id": "s1", "status": "error"})  # redelivery
    assert read_json(results, RUN, "s1.json") == {"scan_id": "s1", "status": "error"}
    assert results.exists(RUN, "s1.json")
    assert not results.exists(RUN, "s2.json")
    with pytest.raises(FileNotFoundError):
        results.read_bytes(RUN, "s2.json")


def test_names_runs_and_summaries(results: ResultsStore) -> None:
    for name in ("b.json", "a.json", "a.report.json", "run.json", "drift.json"):
        results.write_json(RUN, name, {"scan_id": name})
    results.write_json(OLDER, "x.json", {"scan_id": "x"})
    assert results.names(RUN) == ["a.json", "a.report.json", "b.json", "drift.json", "run.json"]
    assert summary_names(results.names(RUN)) == ["a.json", "b.json"]
    assert [s["scan_id"] for s in iter_summaries(results, RUN)] == ["a.json", "b.json"]
    assert results.run_ids() == [OLDER, RUN]
    assert results.names("20990101T000000Z-000000") == []


def test_staged_report_is_published_whole(results: ResultsStore) -> None:
    staged = results.staging(RUN) / "s1.report.json"
    body = json.dumps({"profiles": [], "pad": "x" * 200_000}).encode()
    staged.write_bytes(body)
    results.publish(RUN, "s1.report.json", staged)
    assert results.read_bytes(RUN, "s1.report.json") == body


def test_delete_run_removes_every_object(results: ResultsStore) -> None:
    for i in range(25):
        results.write_json(RUN, f"s{i}.json", {})
    results.write_json(OLDER, "keep.json", {})
    results.delete_run(RUN)
    assert results.names(RUN) == []
    assert results.run_ids() == [OLDER]


def test_a_bad_run_id_is_refused(results: ResultsStore) -> None:
    with pytest.raises(BadInput, match="invalid run id"):
        results.write_json("../etc", "x.json", {})


def test_local_results_are_private_files(tmp_path: Path) -> None:
    store = open_results(tmp_path / "r", _settings())
    assert isinstance(store, LocalResults)
    store.write_json(RUN, "s1.json", {})
    assert stat.S_IMODE((tmp_path / "r" / RUN / "s1.json").stat().st_mode) == 0o600
    assert store.location == str((tmp_path / "r").resolve())


def test_local_results_take_the_group_read_modes_of_the_settings(tmp_path: Path) -> None:
    """SCANFLEET_RESULTS_GROUP_READ reaches every write through the store: summaries,
    run directories and published reports (files.Modes, never the environment)."""
    settings = dataclasses.replace(_settings(), results_group_read=True)
    store = open_results(tmp_path / "r", settings)
    store.write_json(RUN, "s1.json", {})
    staged = store.staging(OLDER) / ".incoming"
    staged.write_text("{}")
    store.publish(OLDER, "s2.report.json", staged)
    run = tmp_path / "r" / RUN
    assert stat.S_IMODE(run.stat().st_mode) == 0o750
    assert stat.S_IMODE((run / "s1.json").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "r" / OLDER / "s2.report.json").stat().st_mode) == 0o640
    wrapped = as_results(tmp_path / "w", GROUP_READ)  # a Path given with the host's modes
    wrapped.write_json(RUN, "s1.json", {})
    assert stat.S_IMODE((tmp_path / "w" / RUN / "s1.json").stat().st_mode) == 0o640


def test_runs_are_listed_and_the_latest_named_on_both_stores(results: ResultsStore) -> None:
    assert list_runs(results) == []
    assert latest_run_id(results) is None
    results.write_json(OLDER, RUN_FILE, {"source": "submit", "targets": {"total": 2}})
    results.write_json(OLDER, "s1.json", {})
    results.write_json(RUN, "s1.json", {})  # not finished
    rows = list_runs(results)
    assert [r["run_id"] for r in rows] == [RUN, OLDER]
    assert [r["state"] for r in rows] == ["unfinished", "finished"]
    assert rows[1]["targets"] == 2
    assert rows[0]["created_at"] == "2025-01-01T00:00:00Z"
    assert latest_run_id(results) == RUN


def test_the_location_chooses_the_store(tmp_path: Path) -> None:
    assert type(open_results(str(tmp_path), _settings())).__name__ == "LocalResults"
    assert type(open_results("s3://bkt/p/", _settings())).__name__ == "S3Results"
    assert open_results("s3://bkt/p/", _settings()).location == "s3://bkt/p"
    with pytest.raises(BadInput, match="gs://bkt"):
        open_results("gs://bkt/x", _settings())
    with pytest.raises(BadInput, match="never the URL") as e:
        open_results("s3://AKIA:secret@bkt/x", _settings())
    assert "secret" not in str(e.value)


def test_within_compares_locations_of_one_kind(tmp_path: Path) -> None:
    assert within("s3://bkt/p/run", "s3://bkt/p")
    assert within("s3://bkt/p", "s3://bkt/p/")
    assert not within("s3://bkt/px", "s3://bkt/p")
    assert not within(str(tmp_path), "s3://bkt/p")
    assert within(str(tmp_path / "a"), str(tmp_path))


def test_objects_are_private_and_never_multipart(s3_env: S3Server) -> None:
    bucket = s3_env.bucket()
    store = open_results(f"s3://{bucket}/r", _settings(s3_env.endpoint))
    staged = store.staging(RUN) / "big.report.json"
    staged.write_bytes(b"{" + b" " * (12 * 1024 * 1024) + b"}")  # over obstore's 5 MB chunk
    store.publish(RUN, "big.report.json", staged)
    assert not staged.exists()  # the local copy is gone once uploaded
    assert not staged.parent.exists()  # and its run's staging directory, left empty
    client = s3_env.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    grants = client.get_object_acl(Bucket=bucket, Key=f"r/{RUN}/big.report.json")["Grants"]
    assert [g["Permission"] for g in grants] == ["FULL_CONTROL"]
    assert all(g["Grantee"]["Type"] == "CanonicalUser" for g in grants)
    assert s3_env.keys(bucket) == [f"r/{RUN}/big.report.json"]


def test_a_refused_write_is_results_unwritable(s3_env: S3Server) -> None:
    bucket = s3_env.bucket(deny_put=True)
    store = open_results(f"s3://{bucket}/r", _settings(s3_env.endpoint))
    with pytest.raises(ResultsUnwritable) as e:
        store.write_json(RUN, "s1.json", {"x": 1})
    assert e.value.kind == ErrorKind.RESULTS_UNWRITABLE
    assert f"{RUN}/s1.json" in str(e.value)
    assert "PermissionDenied" in str(e.value)
    assert SECRET_KEY not in str(e.value)
    assert "AKIA" not in str(e.value)
    assert s3_env.keys(bucket) == []


def test_a_slow_endpoint_times_out_with_retries(s3_env: S3Server) -> None:
    bucket = s3_env.bucket()
    host, _, port = s3_env.endpoint.removeprefix("http://").partition(":")
    proxy = SlowProxy((host, int(port)), delay=3.0)
    try:
        store = open_results(f"s3://{bucket}/r", _settings(proxy.endpoint, timeout=0.5))
        t0 = time.monotonic()
        with pytest.raises(ResultsUnwritable, match=r"s1\.json"):
            store.write_json(RUN, "s1.json", {})
        took = time.monotonic() - t0
        with pytest.raises(ResultsUnavailable):
            store.read_bytes(RUN, "s1.json")
    finally:
        proxy.close()
    assert took < 0.5 * 4 + 5  # retry_timeout (4 timeouts) plus backoff, never the 3 s delays
    assert proxy.connections >= 2  # retried, not given up at the first timeout


def test_a_worker_takes_only_locations_within_its_own(tmp_path: Path) -> None:
    from scanfleet.core.policy import PolicyViolation
    from scanfleet.store.results import check_results_location

    settings = _settings("http://127.0.0.1:1")
    own = open_results("s3://bkt/fleet", settings)
    assert check_results_location(None, own, settings) is own
    assert check_results_location("s3://bkt/fleet", own, settings) is own
    assert check_results_location("s3://bkt/fleet/team-a", own, settings).location == (
        "s3://bkt/fleet/team-a"
    )
    for outside in ("s3://bkt/other", "s3://evil/fleet", str(tmp_path)):
        with pytest.raises(PolicyViolation, match="outside this worker's"):
            check_results_location(outside, own, settings)
    local = open_results(tmp_path / "r", settings)
    with pytest.raises(PolicyViolation):
        check_results_location("s3://bkt/fleet", local, settings)
    assert check_results_location(str(tmp_path / "r" / "sub"), local, settings).location == str(
        (tmp_path / "r" / "sub").resolve()
    )


def test_read_many_keeps_the_order_and_reports_each_failure(results: ResultsStore) -> None:
    names = [f"s{i:03}.json" for i in range(150)]  # more than one read-ahead window
    for n in names:
        results.write_json(RUN, n, {"scan_id": n})
    asked = [*names[:70], "gone.json", *names[70:]]
    got = list(results.read_many(RUN, asked))
    assert [n for n, _ in got] == asked
    assert isinstance(dict(got)["gone.json"], FileNotFoundError)
    bodies = [b for n, b in got if n != "gone.json"]
    assert all(isinstance(b, bytes) for b in bodies)
    assert [json.loads(cast(bytes, b))["scan_id"] for b in bodies] == names


def test_read_many_keeps_a_bounded_number_of_gets_in_flight(s3_env: S3Server) -> None:
    """A run's summaries are read READ_THREADS at a time, not one round trip after another
    (S3 answers in tens of ms: 10,000 of them one by one are minutes) and not all at once.
    Each GET in flight needs a connection of its own, so the proxy's peak tells."""
    from scanfleet.store.s3results import READ_THREADS

    bucket = s3_env.bucket()
    names = [f"s{i:03}.json" for i in range(3 * READ_THREADS)]
    direct = open_results(f"s3://{bucket}/r", _settings(s3_env.endpoint))
    for n in names:
        direct.write_json(RUN, n, {"scan_id": n})
    host, _, port = s3_env.endpoint.removeprefix("http://").partition(":")
    proxy = SlowProxy((host, int(port)), delay=0.3)
    try:
        store = open_results(f"s3://{bucket}/r", _settings(proxy.endpoint))
        got = list(store.read_many(RUN, names))
    finally:
        proxy.close()
    assert [n for n, b in got if isinstance(b, bytes)] == names
    # moto closes a connection after each answer; the next GET's may open a moment before
    # the proxy counts the old one closed. All 192 at once would be unbounded.
    assert READ_THREADS * 0.9 <= proxy.peak < READ_THREADS * 1.5


def test_a_run_of_more_than_one_listing_page_is_listed_and_deleted(s3_env: S3Server) -> None:
    """S3 lists 1,000 keys a page and deletes 1,000 a request: a 10k-target run needs both."""
    bucket = s3_env.bucket()
    store = open_results(f"s3://{bucket}/big", _settings(s3_env.endpoint))
    client = s3_env.client()
    for i in range(1005):  # boto3 straight to the server: the setup, not the code under test
        client.put_object(Bucket=bucket, Key=f"big/{RUN}/s{i:04}.json", Body=b"{}")
    assert len(store.names(RUN)) == 1005
    assert len(list(iter_summaries(store, RUN))) == 1005
    store.delete_run(RUN)
    assert s3_env.keys(bucket) == []


def test_the_auditor_never_gets_the_s3_credentials(tmp_path: Path) -> None:
    """The worker holds the keys for the results store; the auditor (a profile's code) not."""
    from scanfleet.scan.auditor import auditor_environment

    env = auditor_environment(
        tmp_path / "kubeconfig",
        {
            "PATH": "/usr/bin",
            "AWS_ACCESS_KEY_ID": "AKIAX",
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_SESSION_TOKEN": "t",
            "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
            "AWS_ROLE_ARN": "arn:aws:iam::1:role/r",
            "SCANFLEET_S3_ENDPOINT": "http://minio:9000",
            "SCANFLEET_RESULTS_DIR": "s3://bkt/p",
        },
    )
    assert env["PATH"] == "/usr/bin"
    assert [k for k in env if k.startswith(("AWS_", "SCANFLEET_S3", "SCANFLEET_RESULTS"))] == []


def test_finalize_counts_missing_results_as_errors(results: ResultsStore) -> None:
    """Targets whose summary the store refused still count: as errors, and the run says why."""
    from scanfleet.runs.pipeline import finalize
    from scanfleet.scan.plan import RunPlan

    plan = RunPlan(run_id=RUN, source="test", profile="p", created_at="2025-01-01T00:00:00Z")
    results.write_json(RUN, "s1.json", _completed("s1"))
    whole = finalize(plan, results, expected=1)
    assert "error" not in whole
    assert whole["exit_code"] == 0
    short = finalize(plan, results, expected=3)
    assert short["targets"]["total"] == 3
    assert short["targets"]["error"] == 2
    assert short["error"]["kind"] == "results_unwritable"
    assert "2 of 3 target results are missing" in short["error"]["message"]
    assert short["exit_code"] == 3
    assert read_json(results, RUN, "run.json") == short


def test_missing_results_leave_a_failed_threshold_at_exit_1(tmp_path: Path) -> None:
    from scanfleet.runs.pipeline import finalize
    from scanfleet.scan.plan import RunPlan
    from tests.support.summaries import summary

    store = open_results(tmp_path, _settings())
    plan = RunPlan(run_id=RUN, source="test", profile="p", created_at="2025-01-01T00:00:00Z")
    store.write_json(RUN, "s1.json", {**summary(1, passed=False), "run_id": RUN})
    run = finalize(plan, store, expected=2)
    assert run["error"]["kind"] == "results_unwritable"
    assert run["exit_code"] == 1  # SPEC §5: a threshold not met is 1, errors or not


def _completed(scan_id: str) -> dict[str, object]:
    from tests.support.summaries import summary

    return {**summary(1), "scan_id": scan_id, "run_id": RUN}
