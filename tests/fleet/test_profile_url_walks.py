"""A worker refuses a plan whose profile URL was edited in Redis to walk out of the
allow-list prefix (`..`, `%2e%2e`): `rejected`, no request reaches the profile server, and
the worker's Basic credential for the prefix never leaves it (policy.canonical_url)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.store.files import iter_summaries
from tests.support.fixtures_fleet import KEY_PREFIX, RedisServer, Worker, run_cli, wait_for
from tests.support.profile_server import ProfileServer, profile_archive

TOKEN = "ghp_W0rkerT0kenNeverSent"


@pytest.fixture
def server() -> Iterator[ProfileServer]:
    with ProfileServer() as srv:
        archive = profile_archive({"inspec.yml": "name: p\n"})
        for path in ("/myorg/p.tar.gz", "/evilorg/p.tar.gz"):
            srv.routes[path] = archive
        yield srv


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_worker_rejects_walking_profile_urls_edited_in_redis(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    server: ProfileServer,
    tmp_path: Path,
    standin_io: Path,
) -> None:
    standin_log = standin_io / "standin.jsonl"
    env = {
        **fleet_env,
        "SCANFLEET_ALLOWED_PROFILES": server.url("/myorg/", userinfo=f"bot:{TOKEN}"),
        "SCANFLEET_PROFILE_CACHE": str(tmp_path / "cache"),
        "SCANFLEET_STANDIN_LOG": str(standin_log),
    }
    r = redis_server.client()

    def plan_key(run_id: str) -> str:
        return f"{KEY_PREFIX}:run:{run_id}:plan"

    runs = {}
    for path in ("/myorg/../evilorg/p.tar.gz", "/myorg/%2e%2e/evilorg/p.tar.gz"):
        proc = run_cli(
            [
                "submit",
                "--context",
                "east",
                "apps/api/app",
                "--profile",
                server.url("/myorg/p.tar.gz"),
            ],
            env,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_id = proc.stdout.splitlines()[0].strip()
        plan = json.loads(r.get(plan_key(run_id)) or "{}")
        r.set(plan_key(run_id), json.dumps({**plan, "profile": server.url(path)}), keepttl=True)
        runs[run_id] = server.url(path)
    make_worker(env, concurrency=2)
    wait_for(
        lambda: all(r.exists(f"{KEY_PREFIX}:run:{x}:result") for x in runs), 60, "runs to finish"
    )
    assert not server.hits, "a request reached the profile server"
    assert not standin_log.exists(), "an auditor ran"
    results = Path(env["SCANFLEET_RESULTS_DIR"])
    for run_id, url in runs.items():
        (summary,) = iter_summaries(results / run_id)
        assert summary["status"] == "error"
        assert summary["error"]["kind"] == "rejected"
        assert url in summary["error"]["message"]
    texts = [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert not [t for t in texts if TOKEN in t]
