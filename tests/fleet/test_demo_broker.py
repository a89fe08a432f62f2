"""`scanfleet demo --broker redis://…`: the same demo through the fleet (a real redis-server,
a `scanfleet worker` the demo starts and stops, `submit --wait`)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import leftovers
from tests.support.demo import run_demo
from tests.support.fixtures_fleet import RedisServer


def test_demo_runs_through_the_fleet_and_cleans_up(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    proc, cwd = run_demo(tmp_path, "--broker", redis_server.url)
    out = proc.stdout.splitlines()
    assert out, proc.stderr[-3000:]
    run_id = out[0]
    run_dir = cwd / "scanfleet-demo" / run_id
    run = json.loads((run_dir / "run.json").read_text())
    assert proc.returncode == run["exit_code"], proc.stderr[-3000:]
    assert (run["targets"]["total"], run["targets"]["error"]) == (8, 1)
    assert (run_dir / "report.html").is_file()
    assert "throwaway identities: 8 minted, 0 left in the cluster" in out
    # The run lived in Redis (the fleet path, not --local), under the demo's own prefix,
    # and every key it left there expires.
    client = redis_server.client()
    assert any(run_id in k for k in client.scan_iter(match="scanfleet-demo:*"))
    assert leftovers.immortal_keys(client, ["scanfleet-demo"]) == []
    # The worker the demo started is gone with its pool: nothing holds the demo's log open.
    log = (cwd / "scanfleet-demo" / "demo.log").resolve()
    holders = [fd for fd in Path("/proc").glob("[0-9]*/fd/*") if _points_at(fd, log)]
    assert holders == [], holders


def _points_at(fd: Path, target: Path) -> bool:
    try:
        return Path(fd.readlink()) == target
    except OSError:
        return False
