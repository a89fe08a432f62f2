"""Remote profiles end to end: `scan`, `submit --local` and the fleet fetch a URL profile once,
pin its sha256 (plan, run.json, every summary) and hand the auditor a local archive.

The profile server is http.server on 127.0.0.1 (tests/support/profile_server.py), allow-listed with
SCANFLEET_ALLOWED_PROFILES; it counts the requests it serves.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import ProfileMismatch
from scanfleet.profiles.fetch import FetchConfig, ProfileCache, RunPins, pin_for_scan
from scanfleet.scan.plan import RunPlan
from scanfleet.store.files import iter_summaries
from scanfleet.store.pins import record_profile_digest
from scanfleet.store.state import RunStore
from tests.support.fixtures_auditor import STANDIN
from tests.support.fixtures_fleet import FleetClusters, RedisServer, Worker, run_cli
from tests.support.profile_server import ProfileServer, profile_archive

PASSWORD = "Pr0file-Passw0rd-x9"
PROFILE = profile_archive(
    {"inspec.yml": "name: p\nversion: 1.0.0\n", "controls/a.rb": "control 'a' do\nend\n"},
    top="p-main",
)
DIGEST = hashlib.sha256(PROFILE).hexdigest()
DISCOVER = ["--all-contexts", "--all-namespaces", "--exclude-namespace", "kube-system"]


@pytest.fixture
def server() -> Iterator[ProfileServer]:
    with ProfileServer() as srv:
        srv.routes["/p.tar.gz"] = PROFILE
        yield srv


@pytest.fixture
def env(
    fleet_env: dict[str, str], server: ProfileServer, tmp_path: Path, standin_io: Path
) -> dict[str, str]:
    return {
        **fleet_env,
        "SCANFLEET_ALLOWED_PROFILES": server.url("/"),
        "SCANFLEET_PROFILE_CACHE": str(tmp_path / "profile-cache"),
        "SCANFLEET_STANDIN_LOG": str(standin_io / "standin-log.jsonl"),
    }


def run_of(stdout: str) -> tuple[str, dict[str, Any]]:
    run = json.loads(stdout)  # --json: one document, holding the run id
    return run["run_id"], run


def summaries(env: dict[str, str], run_id: str) -> list[dict[str, Any]]:
    return list(iter_summaries(Path(env["SCANFLEET_RESULTS_DIR"]) / run_id))


def standin_calls(env: dict[str, str]) -> list[dict[str, Any]]:
    log = Path(env["SCANFLEET_STANDIN_LOG"])
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def audited_profiles(env: dict[str, str]) -> list[str]:
    """The PROFILE argument of every `exec` the stand-in auditor ran."""
    return [c["profile"] for c in standin_calls(env) if "profile" in c]


def test_scan_and_submit_local_fetch_once_per_run_and_pin_the_digest(
    env: dict[str, str], server: ProfileServer, fleet_clusters: FleetClusters
) -> None:
    url = server.url("/p.tar.gz")
    proc = run_cli(["scan", "apps/api/app", "--context", "east", "--profile", url, "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, run = run_of(proc.stdout)
    assert server.hits["/p.tar.gz"] == 1
    assert run["profile"] == url
    assert run["profile_sha256"] == DIGEST
    assert [s["profile_sha256"] for s in summaries(env, run_id)] == [DIGEST]

    proc = run_cli(
        ["submit", *DISCOVER, "--profile", url, "--local", "--concurrency", "4", "--json"], env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, run = run_of(proc.stdout)
    assert server.hits["/p.tar.gz"] == 2  # once more: once per run, not once per target
    assert run["targets"]["total"] == 8
    assert run["profile_sha256"] == DIGEST
    assert [s["profile_sha256"] for s in summaries(env, run_id)] == [DIGEST] * 8
    # The auditor never got the URL: it got the archive, which holds exactly those bytes.
    profiles = audited_profiles(env)
    assert len(profiles) == 9
    for p in profiles:
        assert "://" not in p
        assert hashlib.sha256(Path(p).read_bytes()).hexdigest() == DIGEST


def test_the_sandboxed_auditor_reads_the_archive_and_cannot_reach_the_profile_server(
    env: dict[str, str], server: ProfileServer, fleet_clusters: FleetClusters, standin_io: Path
) -> None:
    url = server.url("/p.tar.gz")
    archive = ProfileCache(Path(env["SCANFLEET_PROFILE_CACHE"])).entry(url, DIGEST)
    probes = standin_io / "probes.json"
    env = {
        **env,
        "SCANFLEET_AUDITOR": str(STANDIN.with_name("hostile-auditor")),
        "SCANFLEET_STANDIN_PROBES": str(probes),
        "SCANFLEET_STANDIN_HOSTILE": json.dumps(
            {
                "read": {"archive": str(archive)},
                "connect": {"profile_server": ["127.0.0.1", server.port]},
            }
        ),
    }
    proc = run_cli(["scan", "apps/api/app", "--context", "east", "--profile", url], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(probes.read_text())
    assert outcome["archive"] == "ok"  # the policy's read list has the fetched archive
    assert outcome["profile_server"].startswith("denied")  # no network but the API server
    assert server.hits["/p.tar.gz"] == 1  # scanfleet's one download, not the auditor's


def test_credentials_reach_the_server_as_basic_auth_and_nowhere_else(
    env: dict[str, str], server: ProfileServer, fleet_clusters: FleetClusters, tmp_path: Path
) -> None:
    url = server.url("/p.tar.gz", userinfo=f"reader:{PASSWORD}")
    proc = run_cli(["submit", *DISCOVER, "--profile", url, "--local", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    assert server.auth["/p.tar.gz"] == [expected]
    _run_id, run = run_of(proc.stdout)
    assert run["profile"] == server.url("/p.tar.gz")
    leaks = [proc.stdout, proc.stderr, Path(env["SCANFLEET_STANDIN_LOG"]).read_text()]
    leaks += [
        p.read_text(errors="replace")
        for p in tmp_path.rglob("*")
        if p.is_file() and "standin-" not in p.name and p.suffix != ".gz"
    ]
    for text in leaks:
        assert PASSWORD not in text
        assert expected.split()[1] not in text


def test_a_profile_that_cannot_be_downloaded_is_bad_input_and_starts_nothing(
    env: dict[str, str], server: ProfileServer, fleet_clusters: FleetClusters
) -> None:
    proc = run_cli(
        ["scan", "apps/api/app", "--context", "east", "--profile", server.url("/missing.tar.gz")],
        env,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "HTTP 404" in proc.stderr
    assert proc.stdout == ""  # no run id: no run
    assert not Path(env["SCANFLEET_RESULTS_DIR"]).exists()
    for c in fleet_clusters.all.values():
        assert c.scanfleet_objects() == []


def test_a_profile_with_a_remote_dependency_is_vendored_once_per_run(
    env: dict[str, str], server: ProfileServer, fleet_clusters: FleetClusters
) -> None:
    dep = profile_archive({"inspec.yml": "name: dep\nversion: 0.1.0\n"})
    server.routes["/dep.tar.gz"] = dep
    server.routes["/meta.tar.gz"] = profile_archive(
        {
            "inspec.yml": (
                "name: meta\nversion: 1.0.0\ndepends:\n"
                f"  - name: dep\n    url: {server.url('/dep.tar.gz')}\n"
            )
        }
    )
    proc = run_cli(
        [
            "submit",
            *DISCOVER,
            "--profile",
            server.url("/meta.tar.gz"),
            "--local",
            "--concurrency",
            "4",
            "--json",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, run = run_of(proc.stdout)
    assert server.hits["/meta.tar.gz"] == 1
    assert server.hits["/dep.tar.gz"] == 1  # vendored once, before the scans
    assert len([c for c in standin_calls(env) if "vendor" in c]) == 1
    digests = {s["profile_sha256"] for s in summaries(env, run_id)}
    assert digests == {run["profile_sha256"]}
    profiles = set(audited_profiles(env))
    assert len(profiles) == 1
    archive = Path(profiles.pop())
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == run["profile_sha256"]
    with tarfile.open(archive, "r:gz") as t:
        assert f"vendor/{hashlib.sha256(dep).hexdigest()}.tar.gz" in t.getnames()


# -- the fleet -----------------------------------------------------------------------------


def dump_redis(client: Any) -> str:
    from tests.support.redis_dump import dump_redis as dump

    return dump(client)


def test_workers_pin_the_first_digest_in_the_redis_plan_and_refuse_other_bytes(
    redis_server: RedisServer, server: ProfileServer, tmp_path: Path, standin_auditor: str
) -> None:
    store = RunStore(redis_server.client(), "sfprofiles", 1)
    url = server.url("/p.tar.gz")
    plan = RunPlan(
        run_id="20250101T000000Z-abcdef",
        source="test",
        profile=url,
        created_at="2025-01-01T00:00:00Z",
        auditor=standin_auditor,
    )
    store.create_run(
        plan.run_id, plan.to_dict(), [], {}, 0, created_at=plan.created_at, results_dir=None
    )

    def record(d: str) -> str:
        return record_profile_digest(store, plan.run_id, d)

    def worker(name: str) -> RunPins:
        return RunPins(FetchConfig(auditor=standin_auditor, cache_dir=tmp_path / name))

    a = worker("a")
    first = pin_for_scan(plan, a, record)
    assert first.profile_sha256 == DIGEST
    assert first.scan_options.profile == first.profile_path
    stored = store.plan(plan.run_id)
    assert stored is not None
    assert stored["profile_sha256"] == DIGEST
    assert redis_server.client().ttl(store.key(plan.run_id, "plan")) > 0  # TTL kept
    # Mid-run the server's file changes.
    server.routes["/p.tar.gz"] = profile_archive({"inspec.yml": "name: p\nversion: 2.0.0\n"})
    changed = hashlib.sha256(server.routes["/p.tar.gz"]).hexdigest()  # type: ignore[arg-type]
    # Later targets on worker a: its cached bytes, no download.
    assert pin_for_scan(plan, a, record).profile_path == first.profile_path
    assert server.hits["/p.tar.gz"] == 1
    # Worker b reads the plan from Redis (digest recorded) and must download: it refuses.
    with pytest.raises(ProfileMismatch) as err:
        pin_for_scan(RunPlan.from_dict(stored), worker("b"), record)
    assert DIGEST in str(err.value)
    assert changed in str(err.value)
    assert err.value.pinned == DIGEST
    # Worker c holds a plan read before the digest was recorded: the record refuses it too.
    with pytest.raises(ProfileMismatch):
        pin_for_scan(plan, worker("c"), record)
    assert store.plan(plan.run_id)["profile_sha256"] == DIGEST  # type: ignore[index]
    store.delete_run(plan.run_id)


def test_the_first_recorded_digest_wins_a_race(redis_server: RedisServer) -> None:
    store = RunStore(redis_server.client(), "sfrace", 1)
    run_id = "20250101T000000Z-fedcba"
    store.create_run(
        run_id,
        {"run_id": run_id, "profile_sha256": None},
        [],
        {},
        0,
        created_at="2025-01-01T00:00:00Z",
        results_dir=None,
    )
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(8)]
    winners: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(len(digests))

    def racer(d: str) -> None:
        other = RunStore.from_url(redis_server.url, "sfrace", 1)
        go.wait()
        try:
            won = record_profile_digest(other, run_id, d)
        finally:
            other.r.close()
        with lock:
            winners.append(won)

    threads = [threading.Thread(target=racer, args=(d,)) for d in digests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(winners)) == 1
    assert len(winners) == len(digests)
    assert store.plan(run_id) == {"run_id": run_id, "profile_sha256": winners[0]}
    with pytest.raises(ValueError, match="sha256"):
        record_profile_digest(store, run_id, "not-a-digest")
    store.delete_run(run_id)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fleet_workers_fetch_with_their_own_credentials_and_refuse_changed_bytes(
    env: dict[str, str],
    server: ProfileServer,
    fleet_clusters: FleetClusters,
    make_worker: Callable[..., Worker],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    v2 = profile_archive({"inspec.yml": "name: p\nversion: 2.0.0\n"})
    v2_digest = hashlib.sha256(v2).hexdigest()
    server.routes["/p.tar.gz"] = [PROFILE, v2]  # the file changes after the first download
    allowed = server.url("/", userinfo=f"reader:{PASSWORD}")
    env = {**env, "SCANFLEET_ALLOWED_PROFILES": allowed, "SCANFLEET_STANDIN_SLEEP": "1"}
    for name in ("a", "b"):  # two workers, each with its own cache
        make_worker(
            {**env, "SCANFLEET_PROFILE_CACHE": str(tmp_path / f"cache-{name}")}, concurrency=1
        )
    url = server.url("/p.tar.gz")  # no credentials: the workers add their own
    proc = run_cli(["submit", *DISCOVER, "--profile", url, "--wait", "--json"], env, timeout=150)
    run_id, run = run_of(proc.stdout)
    expected = "Basic " + base64.b64encode(f"reader:{PASSWORD}".encode()).decode()
    assert set(server.auth["/p.tar.gz"]) == {expected}
    pinned = run["profile_sha256"]
    assert pinned in (DIGEST, v2_digest)
    other = v2_digest if pinned == DIGEST else DIGEST
    found = summaries(env, run_id)
    assert {s["profile_sha256"] for s in found} == {pinned}
    refused = [s for s in found if s["status"] == "error"]
    assert refused, "both workers took targets, so one of them had to refuse"
    for s in refused:
        assert s["error"]["kind"] == "rejected"
        assert pinned in s["error"]["message"]
        assert other in s["error"]["message"]
    # No auditor ran for a refused target. Completed scans came from a worker's cache: the
    # pinned worker downloaded once, the other one once per refused target (it tries again,
    # the file may be put back) and, when the pin is the new file, once more to get it.
    completed = len(found) - len(refused)
    assert len(audited_profiles(env)) == completed
    assert 1 + len(refused) <= server.hits["/p.tar.gz"] <= 2 + len(refused)
    assert proc.returncode == 3, proc.stderr[-3000:]
    texts = [proc.stdout, proc.stderr, dump_redis(redis_server.client())]
    texts += [
        p.read_text(errors="replace")
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix in (".json", ".log", ".jsonl")
    ]
    for text in texts:
        assert PASSWORD not in text
        assert expected.split()[1] not in text
