"""The broker's loose ends: a refused login is final, and sweep ticks carry no credentials.

- A wrong Redis password is not a connection problem to ride out: the first call fails with
  a message that says so (redis-py calls AuthenticationError a ConnectionError, and the
  client used to retry it for a minute). Counted by the server's connection counter.
- A sweep's profile URL with user:password@ travels in beat's tick message stripped; the
  worker that runs the tick adds the credentials of its own allow-list entry. Checked on a
  dump of every Redis key (message bodies decoded) while the tick waits in the queue.
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from scanfleet.core.errors import StoreUnavailable
from scanfleet.core.settings import Settings
from scanfleet.store.client import connect, guarded
from scanfleet.sweeps.spec import Sweep
from scanfleet.worker.app import QUEUE, SWEEP_TICK_TASK, create_app
from scanfleet.worker.schedule import beat_schedule
from tests.support.fixtures_fleet import CLI, KEY_PREFIX, free_port, run_cli, wait_for
from tests.support.tools import require_tool

PASSWORD = "b7-broker-pw-9d2f"
PROFILE_SECRET = "pr0file-s3cret-41"
PROFILE = f"https://bot:{PROFILE_SECRET}@profiles.example/base/p.tar.gz"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server that requires PASSWORD; its port."""
    exe = require_tool("redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--requirepass",
            PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: proc.poll() is not None or _answers(port), 15, "redis-server")
        assert proc.poll() is None, "redis-server exited (port taken?)"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _answers(port: int) -> bool:
    try:
        with redis.Redis(host="127.0.0.1", port=port, password=PASSWORD) as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


def _connections(port: int) -> int:
    with redis.Redis(host="127.0.0.1", port=port, password=PASSWORD) as admin:
        return int(admin.info("stats")["total_connections_received"])


@pytest.mark.parametrize("userinfo", [":not-the-password@", ""])
def test_a_refused_login_fails_the_first_call_and_is_not_retried(
    locked_redis: int, userinfo: str
) -> None:
    client = connect(f"redis://{userinfo}127.0.0.1:{locked_redis}/0", retry_seconds=8)
    before = _connections(locked_redis)
    refused = pytest.raises(StoreUnavailable, match="refused scanfleet's credentials")
    with refused as info, guarded("ping"):
        client.ping()
    assert "not-the-password" not in str(info.value)
    # One attempt (the counter also counts the admin connection that reads it).
    assert _connections(locked_redis) - before == 2
    good = connect(f"redis://:{PASSWORD}@127.0.0.1:{locked_redis}/0")
    assert good.ping()


def test_status_with_a_wrong_password_exits_3_naming_the_cause(locked_redis: int) -> None:
    env = {
        "SCANFLEET_BROKER_URL": f"redis://:wrong-pw-x@127.0.0.1:{locked_redis}/0",
        "PATH": "/usr/bin:/bin",
    }
    r = run_cli(
        ["status", "20250101T000000Z-abcdef", "--results-dir", "/nonexistent"], env, timeout=60
    )
    assert r.returncode == 3, r.stderr
    assert "refused scanfleet's credentials" in r.stderr
    assert "wrong-pw-x" not in r.stderr + r.stdout
    assert CLI  # the CLI ran in a subprocess, as an operator runs it


def _dump(client: redis.Redis) -> str:
    """Every key and value as text, kombu message bodies base64-decoded."""
    out: list[str] = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[Any] = []
        if kind == "list":
            values = client.lrange(key, 0, -1)
        elif kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [json.dumps(client.hgetall(key))]
        elif kind in ("set", "zset"):
            values = list(client.zrange(key, 0, -1) if kind == "zset" else client.smembers(key))
        for v in values:
            out.append(f"{key} {v}")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                out.append(base64.b64decode(json.loads(v)["body"]).decode())
    return "\n".join(out)


def test_a_sweep_tick_carries_the_profile_url_without_credentials(
    redis_server: Any,
    tmp_path: Path,
) -> None:
    sweep = Sweep(name="nightly", schedule="0 3 * * *", profile=PROFILE, contexts=("east",))
    entry = beat_schedule([sweep])["sweep:nightly"]
    settings = Settings(
        broker_url=redis_server.url, key_prefix=KEY_PREFIX, results_dir=tmp_path / "results"
    )
    app = create_app(settings)
    client = redis_server.client()
    try:
        app.send_task(entry["task"], args=entry["args"], kwargs=entry["kwargs"], queue=QUEUE)
        dump = _dump(client)
    finally:
        client.delete(QUEUE)
    assert "sweep_tick" in dump or "nightly" in dump, "the tick must be in the dump"
    assert "profiles.example/base/p.tar.gz" in dump
    assert PROFILE_SECRET not in dump

    # The worker running the tick takes the credentials from its own allow-list.
    allow = ("/", f"https://bot:{PROFILE_SECRET}@profiles.example/base/")
    started: list[str] = []

    def start(s: Sweep, _settings: Settings) -> str:
        started.append(s.profile)
        return "20250101T000000Z-abcdef"

    worker = create_app(replace(settings, allowed_profiles=allow), start_sweep=start)
    try:
        worker.tasks[SWEEP_TICK_TASK]("nightly", entry["kwargs"]["sweep"], lock_ttl=5)
    finally:
        for key in client.scan_iter(f"{KEY_PREFIX}:*"):
            client.delete(key)
    assert started == [PROFILE]


def test_a_worker_with_a_wrong_password_exits_3_instead_of_retrying_forever(
    locked_redis: int,
    fleet_env: dict[str, str],
) -> None:
    env = {**fleet_env, "SCANFLEET_BROKER_URL": f"redis://:wrong-pw-y@127.0.0.1:{locked_redis}/0"}
    r = run_cli(["worker", "-c", "1"], env, timeout=60)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "refused scanfleet's credentials" in r.stderr
    assert "wrong-pw-y" not in r.stderr + r.stdout
