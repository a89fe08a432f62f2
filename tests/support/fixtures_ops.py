"""Fixtures for sweeps, beat, the janitor, drift and retention.

- ``write_sweeps(text_or_data, name="sweeps.yml")``: write a sweeps file in tmp_path.
- ``ops_redis``: a test-owned ``redis-server`` on a free port (URL), stopped at teardown;
  the teardown fails the test if it left scanfleet keys without a TTL (``leftovers.py``;
  ``@pytest.mark.leaves_leftovers("why")`` to allow it).
- ``make_run(results_dir, run_id, summaries, run=None)``: a run directory with target
  summaries (SPEC §4 plus ``controls``) and optionally run.json.
- ``summary(...)``: one target summary.
- ``leave_orphans(kube, namespace, scan_id, run_id, expires_at)``: the SA/Role/RoleBinding a
  killed scan leaves, created through the real client against the fake API server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from scanfleet.core.targets import Target
from scanfleet.identity.mint import identity_objects
from scanfleet.kube.client import KubeClient
from scanfleet.store.files import write_json
from tests.support import leftovers
from tests.support.fixtures_fleet import start_redis
from tests.support.tools import require_tool


@pytest.fixture
def write_sweeps(tmp_path: Path) -> Callable[..., Path]:
    def write(content: str | object, name: str = "sweeps.yml") -> Path:
        p = tmp_path / name
        p.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
        return p

    return write


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@pytest.fixture
def ops_redis(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A private redis-server (no persistence) on a free port; yields its URL.

    At teardown the test fails if it left scanfleet keys without a TTL (leftovers.py).
    """
    exe = require_tool("redis-server")

    data = tmp_path / "redis"
    data.mkdir()
    port, proc = start_redis(
        [exe, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data)]
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
        import redis

        with redis.Redis(host="127.0.0.1", port=port) as client:
            left = leftovers.immortal_keys(client, leftovers.PREFIXES)
        leftovers.fail_on(request, "Redis keys without a TTL", left)
    finally:
        stop_process(proc)


def summary(
    context: str,
    namespace: str,
    pod: str,
    container: str,
    *,
    run_id: str = "20250101T000000Z-aaaaaa",
    status: str = "completed",
    failed: Mapping[str, list[str]] | None = None,
    passed: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """A target summary. `failed`/`passed`: {severity: [control ids]}."""
    sevs = ("critical", "high", "medium", "low", "none")
    controls: dict[str, Any] | None = None
    if status == "completed":
        controls = {
            s: {v: [] for v in sevs} for s in ("passed", "failed", "skipped", "no_impact", "error")
        }
        for sev, ids in (failed or {}).items():
            controls["failed"][sev] = sorted(ids)
        for sev, ids in (passed or {}).items():
            controls["passed"][sev] = sorted(ids)
    scan_id = f"{namespace}-{pod}-{container}"
    counts = None
    if controls is not None:  # a completed summary has counts, or it is judged an error
        counts = {
            st: {"total": sum(map(len, by_sev.values())), **{v: len(by_sev[v]) for v in sevs}}
            for st, by_sev in controls.items()
        }
    return {
        "scan_id": scan_id,
        "run_id": run_id,
        "target": {
            "context": context,
            "namespace": namespace,
            "pod": pod,
            "container": container,
            "image": None,
            "image_id": None,
        },
        "status": status,
        "error": None if status == "completed" else {"kind": "timeout", "message": "too slow"},
        "covered_by": None,
        "counts": counts,
        "controls": controls,
    }


def make_run(
    results_dir: Path,
    run_id: str,
    summaries: list[dict[str, Any]],
    run: Mapping[str, Any] | None = None,
) -> Path:
    d = results_dir / run_id
    d.mkdir(parents=True, exist_ok=True)
    for s in summaries:
        write_json(d / f"{s['scan_id']}.json", {**s, "run_id": run_id})
    if run is not None:
        write_json(d / "run.json", {"run_id": run_id, **run})
    return d


def leave_orphans(
    kube: KubeClient, namespace: str, scan_id: str, run_id: str, created: datetime, ttl: int
) -> None:
    """Create the three identity objects exactly as a scan mints them, then never revoke."""
    target = Target(kube.context, namespace, "web", "app")
    bodies = identity_objects(scan_id, run_id, target, ttl, created)
    sa = kube.create_object("ServiceAccount", namespace, bodies["ServiceAccount"])
    owned = identity_objects(scan_id, run_id, target, ttl, created, owner_uid=sa["uid"])
    kube.create_object("Role", namespace, owned["Role"])
    kube.create_object("RoleBinding", namespace, owned["RoleBinding"])


def past(now: datetime, seconds: int) -> datetime:
    return now - timedelta(seconds=seconds)
