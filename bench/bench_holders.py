"""Cost of the message owner records (store/holders.py, issue #20's dead-worker recovery).

    python bench/bench_holders.py [--messages 5000]

Against a redis-server of its own: the wall and client CPU of `hold` (one Lua call in the
worker's main process per message received), a heartbeat (`beat`) pruning acknowledged
records and one over live records, Redis memory per live record, and a watcher pass
looking for messages no worker recorded (`claim_unheld`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scanfleet.store.holders import MessageHolders  # noqa: E402
from scanfleet.store.state import RunStore  # noqa: E402
from tests.support.fixtures_fleet import RedisServer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    n = ap.parse_args().messages
    tmp = Path(tempfile.mkdtemp(prefix="scanfleet-bench-holders-"))
    server = RedisServer(tmp, appendonly=False).start()
    try:
        store = RunStore.from_url(server.url, "bench", 1)
        holders = MessageHolders(store, 60)
        tag = "d5c6e3c2-6a8e-4b51-9d0e-{:012d}"  # kombu's delivery tags are uuid4 strings
        for i in range(n):
            store.r.hset("unacked", tag.format(i), "x")
        before = int(store.r.info("memory")["used_memory"])
        c0, t0 = time.process_time(), time.monotonic()
        for i in range(n):
            holders.hold("worker-1", tag.format(i))
        c1, t1 = time.process_time(), time.monotonic()
        per_record = (int(store.r.info("memory")["used_memory"]) - before) / n
        print(
            f"hold: {(t1 - t0) / n * 1e6:.0f} us wall, {(c1 - c0) / n * 1e6:.0f} us client CPU "
            f"per message; Redis {per_record:.0f} bytes per live record"
        )
        for i in range(0, n, 2):
            store.r.hdel("unacked", tag.format(i))
        t0 = time.monotonic()
        kept = holders.beat("worker-1", "unacked")
        print(
            f"beat pruning {n - kept} acknowledged of {n}: {(time.monotonic() - t0) * 1000:.1f} ms"
        )
        t0 = time.monotonic()
        holders.beat("worker-1", "unacked")
        print(f"beat over {kept} live records: {(time.monotonic() - t0) * 1000:.1f} ms")
        t0 = time.monotonic()
        holders.claim_unheld("unacked", "scanfleet")
        print(
            f"claim_unheld over {kept} held messages (every watcher pass): "
            f"{(time.monotonic() - t0) * 1000:.1f} ms"
        )
        body = '[{"body": "%s", "headers": {}}, "", "scanfleet"]' % ("x" * 2000)
        for i in range(100):
            store.r.hset("unacked", f"unheld-{i}", body)  # ~2 KB, as a scan message
        t0 = time.monotonic()
        holders.claim_unheld("unacked", "scanfleet")
        print(
            f"claim_unheld with 100 unheld messages of 2 KB among {kept}: "
            f"{(time.monotonic() - t0) * 1000:.1f} ms"
        )
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
