"""Recovery of what a dead worker took from the queue without a scan lease: the owner
records of received messages (store/holders.py, a real redis-server), lease claims that
know the holding worker, and `recover_expired` giving a dead worker's messages back.
tests/fleet/test_recovery_held.py kills real workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.targets import Target, scan_id_for
from scanfleet.kube.client import ClientCache
from scanfleet.runs.recovery import OrphanSweep, recover_expired
from scanfleet.store.holders import MessageHolders
from scanfleet.store.slots import RedisSlots
from scanfleet.store.state import RunStore
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_fleet import RedisServer, wait_for
from tests.support.recovery import (
    RERUN,
    RUN,
    TARGET,
    Done,
    Published,
    identity_of,
    mint_service_account,
)

UNACKED = "unacked"  # the broker's hash of unacknowledged messages (kombu's name)


@pytest.fixture
def store(redis_server: RedisServer) -> RunStore:
    return RunStore.from_url(redis_server.url, "sf", retention_days=1)


def holders(store: RunStore, lease: float = 0.5) -> MessageHolders:
    return MessageHolders(store, lease)


def received(store: RunStore, h: MessageHolders, worker: str, *tags: str) -> None:
    """The broker delivered `tags` to `worker` (kombu's unacked hash) and it recorded them."""
    for tag in tags:
        store.r.hset(UNACKED, tag, '[{}, "", "scanfleet"]')
        h.hold(worker, tag)


def expired(h: MessageHolders, *workers: str) -> bool:
    return not any(h.alive(w) for w in workers)


def test_a_dead_workers_messages_are_claimed_once_and_a_live_ones_never(
    store: RunStore,
) -> None:
    h = holders(store)
    received(store, h, "dead", "t1", "t2")
    received(store, h, "live", "t3")
    assert h.claim_dead() == {}  # both leases live
    stop = threading.Event()

    def beat() -> None:  # the live worker's heartbeat (every lease/3)
        while not stop.wait(0.15):
            h.beat("live", UNACKED)

    beating = threading.Thread(target=beat)
    beating.start()
    try:
        wait_for(lambda: not h.alive("dead"), 10, "the dead worker's lease to expire")
        claims: list[dict[str, list[str]]] = []
        barrier = threading.Barrier(6)

        def claim() -> None:
            barrier.wait()
            claims.append(holders(store).claim_dead())

        threads = [threading.Thread(target=claim) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        won = [c for c in claims if c]
        assert len(won) == 1
        assert {w: sorted(tags) for w, tags in won[0].items()} == {"dead": ["t1", "t2"]}
        assert h.alive("live")
        assert h.claim_dead() == {}
    finally:
        stop.set()
        beating.join(5)
    assert store.r.hgetall("sf:held") == {"t3": "live"}
    assert not store.r.exists("sf:held:dead")


def test_the_heartbeat_forgets_acknowledged_messages(store: RunStore) -> None:
    h = holders(store, lease=30)
    received(store, h, "w1", "t1", "t2", "t3")
    store.r.hdel(UNACKED, "t2")  # acknowledged: the task ended
    assert h.beat("w1", UNACKED) == 2
    assert store.r.smembers("sf:held:w1") == {"t1", "t3"}
    assert sorted(store.r.hkeys("sf:held")) == ["t1", "t3"]
    for key in ("sf:workers", "sf:held", "sf:held:w1"):
        assert 0 < store.r.ttl(key) <= store.ttl  # nothing immortal


def test_a_message_taken_again_by_another_worker_is_not_claimed_for_the_dead_one(
    store: RunStore,
) -> None:
    h = holders(store, lease=0.5)
    received(store, h, "first", "t1", "t2")
    h.hold("second", "t1")  # given back (visibility timeout) and taken by a live worker
    h.beat("second", UNACKED)
    wait_for(lambda: not h.alive("first"), 10, "the first worker's lease to expire")
    claimed = h.claim_dead()
    assert claimed.get("first") == ["t2"]


def test_a_clean_shutdown_drops_the_workers_records(store: RunStore) -> None:
    h = holders(store, lease=0.5)
    received(store, h, "w1", "t1")
    h.drop("w1")
    assert store.r.hlen("sf:held") == 0
    t0 = server_time(store)
    wait_for(lambda: server_time(store) > t0 + 0.6, 10, "the lease it had to pass")
    assert h.claim_dead() == {}  # nothing left to give back twice


def server_time(store: RunStore) -> float:
    t = store.r.time()
    return float(t[0]) + float(t[1]) / 1e6


def test_an_expired_lease_of_a_live_worker_waits_one_more_lease_and_a_dead_ones_does_not(
    store: RunStore,
) -> None:
    h = holders(store, lease=30)
    h.hold("alive", "t-alive")
    s_alive = RedisSlots(store, 5, lease_seconds=0.5, wait_seconds=0, holder="alive")
    s_dead = RedisSlots(store, 5, lease_seconds=0.5, wait_seconds=0, holder="gone")
    assert s_alive.try_acquire("fake", "scan-alive", "tok", RERUN) == 1
    assert s_dead.try_acquire("fake", "scan-dead", "tok", RERUN) == 1
    wait_for(lambda: s_alive.holders("fake") == [], 10, "both leases to expire")
    first = s_alive.claim_expired("fake")
    assert first == [("scan-dead", {**RERUN, "worker": "gone"})]  # no live worker behind it
    t0 = server_time(store)
    got = wait_for(lambda: s_alive.claim_expired("fake"), 10, "the live worker's grace to pass")
    assert got == [("scan-alive", {**RERUN, "worker": "alive"})]
    assert server_time(store) - t0 > 0.1  # it did wait


class Restored(list[str]):
    def __call__(self, tags: Sequence[str]) -> int:
        self.extend(tags)
        return len(tags)


def test_recovery_gives_a_dead_workers_messages_back_and_republishes_only_live_ones(
    store: RunStore,
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
) -> None:
    clients = ClientCache(str(admin_kubeconfig), retries=0)
    h = holders(store, lease=0.5)
    received(store, h, "dead", "m-running", "m-deferred")  # a running scan and a retry
    mint_service_account(clients, "0123456789abcdef")
    s_dead = RedisSlots(store, 5, lease_seconds=0.5, wait_seconds=0, holder="dead")
    s_legacy = RedisSlots(store, 5, lease_seconds=0.5, wait_seconds=0)
    other = {"run_id": RUN, "target": {**TARGET, "container": "sidecar"}}
    assert s_dead.try_acquire("fake", "0123456789abcdef", "tok", RERUN) == 1
    assert s_legacy.try_acquire("fake", "fedcba9876543210", "tok", other) == 1
    wait_for(lambda: expired(h, "dead") and s_dead.holders("fake") == [], 10, "expiry")
    published, restored = Published(), Restored()
    got = recover_expired(s_dead, Done(), clients, published, workers=h, restore=restored)
    assert got.dead_workers == ["dead"]
    assert sorted(restored) == ["m-deferred", "m-running"]
    assert got.returned == ["0123456789abcdef"]  # its message comes back: not published
    assert identity_of(fake_cluster, "0123456789abcdef") == []  # but revoked first
    assert got.rerun == ["fedcba9876543210"]  # no worker named: published as before
    assert published == [(RUN, other["target"])]
    again = recover_expired(s_dead, Done(), clients, published, workers=h, restore=restored)
    assert (again.dead_workers, again.rerun, again.returned) == ([], [], [])
    assert sorted(restored) == ["m-deferred", "m-running"]


def delivered(store: RunStore, tag: str, queue: str = "scanfleet") -> None:
    """The broker recorded `tag` as delivered (kombu's unacked entry) and no worker did."""
    store.r.hset(UNACKED, tag, f'[{{"body": "..."}}, "", "{queue}"]')


def test_a_message_no_worker_recorded_is_claimed_once_after_half_a_lease(
    store: RunStore,
) -> None:
    h = holders(store, lease=1.0)
    delivered(store, "lost")  # its worker died between the broker's record and its own
    delivered(store, "theirs", queue="another-app")  # another app's message: never ours
    received(store, h, "live", "held")
    store.r.hset(UNACKED, "garbled", "not json")
    assert h.claim_unheld(UNACKED, "scanfleet") == []  # first seen: not yet
    assert sorted(store.r.hkeys("sf:unheld")) == ["lost"]
    assert h.claim_unheld(UNACKED, "scanfleet") == []  # within the grace
    t0 = server_time(store)
    wait_for(lambda: server_time(store) > t0 + 0.5, 10, "half a lease")
    claims: list[list[str]] = []
    barrier = threading.Barrier(6)

    def claim() -> None:
        barrier.wait()
        claims.append(holders(store, lease=1.0).claim_unheld(UNACKED, "scanfleet"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(claims) == [[], [], [], [], [], ["lost"]]  # one caller, once
    assert 0 < store.r.ttl("sf:unheld") <= store.ttl  # seen again by the later callers
    store.r.hdel(UNACKED, "lost")  # the winner gave it back
    assert h.claim_unheld(UNACKED, "scanfleet") == []
    assert not store.r.exists("sf:unheld")


def test_a_message_recorded_or_acknowledged_within_the_grace_is_not_claimed(
    store: RunStore,
) -> None:
    h = holders(store, lease=0.4)
    delivered(store, "slow")  # its live worker records it a moment later
    delivered(store, "acked")  # acknowledged before the grace ends
    assert h.claim_unheld(UNACKED, "scanfleet") == []
    h.hold("live", "slow")
    store.r.hdel(UNACKED, "acked")
    t0 = server_time(store)
    wait_for(lambda: server_time(store) > t0 + 0.3, 10, "the grace")
    assert h.claim_unheld(UNACKED, "scanfleet") == []
    assert not store.r.exists("sf:unheld")  # both forgotten
    delivered(store, "acked")  # the same tag delivered again later starts a new grace
    assert h.claim_unheld(UNACKED, "scanfleet") == []


def test_recovery_gives_back_a_message_no_worker_recorded(
    store: RunStore, admin_kubeconfig: Path
) -> None:
    clients = ClientCache(str(admin_kubeconfig), retries=0)
    h = holders(store, lease=0.4)
    slots = RedisSlots(store, 5, lease_seconds=0.4, wait_seconds=0, holder="w")
    delivered(store, "lost")
    published, restored = Published(), Restored()

    def recover() -> list[str]:
        got = recover_expired(
            slots,
            Done(),
            clients,
            published,
            workers=h,
            restore=restored,
            unheld=lambda: h.claim_unheld(UNACKED, "scanfleet"),
        )
        return got.unheld

    assert recover() == []
    wait_for(recover, 10, "the unheld message to be claimed")
    assert restored == ["lost"]
    assert published == []


@dataclass
class Status:
    done: int
    total: int
    finished: bool = False


class Progress:
    """A run of four targets; `states` as the store's per-target states."""

    def __init__(self, *done: int) -> None:
        self.entries = [{**TARGET, "pod": f"p{i}"} for i in range(4)]
        self.states = {
            scan_id_for(RUN, Target.from_dict(self.entries[i])): "completed" for i in done
        }

    def status(self, run_id: str) -> Status:
        return Status(len(self.states), len(self.entries))

    def iter_entries(self, run_id: str, batch: int = 500) -> Iterator[dict[str, Any]]:
        yield from self.entries

    def target_states(self, run_id: str) -> dict[str, str]:
        return self.states


def test_a_run_whose_messages_are_nowhere_is_fanned_out_again_for_its_missing_targets(
    store: RunStore,
) -> None:
    h = holders(store, lease=30)
    store.r.zadd("sf:runs", {RUN: 1})
    store.r.expire("sf:runs", 60)
    progress = Progress(1)  # p1 has its result; p0, p2, p3 have none
    fanned: list[tuple[str, list[tuple[int, int]]]] = []
    store.r.rpush("scanfleet", "a queued message")
    sweep = OrphanSweep(
        progress,
        idle=lambda: h.broker_idle("scanfleet", UNACKED),
        recent=h.recent_runs,
        claim=lambda run_id: h.claim_orphans(run_id, 30),
        publish=lambda run_id, ranges: fanned.append((run_id, list(ranges))),
    )
    assert sweep() == {}
    assert sweep() == {}
    store.r.delete("scanfleet")
    store.r.hset(UNACKED, "t1", "{}")
    assert sweep() == {}
    assert sweep() == {}
    store.r.delete(UNACKED)
    assert sweep() == {}  # the first quiet look: a submit may be publishing
    assert sweep() == {RUN: 3}
    assert fanned == [(RUN, [(0, 1), (2, 4)])]
    assert sweep() == {}  # claimed for a lease: no second fan-out from this or any worker
    other = OrphanSweep(
        progress,
        idle=lambda: True,
        recent=h.recent_runs,
        claim=lambda run_id: h.claim_orphans(run_id, 30),
        publish=lambda run_id, ranges: fanned.append((run_id, list(ranges))),
    )
    other()
    assert other() == {}
    assert len(fanned) == 1
    assert 0 < store.r.pttl(f"sf:run:{RUN}:orphans") <= 30_000


def test_a_run_making_progress_or_finished_is_left_alone(store: RunStore) -> None:
    progress = Progress(1)
    fanned: list[str] = []
    sweep = OrphanSweep(
        progress,
        idle=lambda: True,
        recent=lambda: [RUN],
        claim=lambda run_id: True,
        publish=lambda run_id, ranges: fanned.append(run_id),
    )
    sweep()
    progress.states[scan_id_for(RUN, Target.from_dict(progress.entries[0]))] = "error"
    assert sweep() == {}  # a result came in between the two looks
    done = Progress(0, 1, 2, 3)
    finished = OrphanSweep(
        done,
        idle=lambda: True,
        recent=lambda: [RUN],
        claim=lambda run_id: True,
        publish=lambda run_id, ranges: fanned.append(run_id),
    )
    assert finished() == {}
    assert finished() == {}
    assert fanned == []
