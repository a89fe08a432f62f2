"""Recovery of expired leases, below the fleet: the store's owner records and atomic claim
(a real redis-server), `recover_expired` against a fake cluster, and the watcher thread.
tests/fleet/test_recovery.py kills real workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.clock import RETRY_DELAYS, backoff
from scanfleet.core.errors import ClusterUnavailable, SlotBusy
from scanfleet.identity.mint import object_name
from scanfleet.kube.client import ClientCache
from scanfleet.runs.recovery import Watcher, recover_expired
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


@pytest.fixture
def store(redis_server: RedisServer) -> RunStore:
    return RunStore.from_url(redis_server.url, "sf", retention_days=1)


def slots(store: RunStore, lease: float = 0.3) -> RedisSlots:
    return RedisSlots(store, 5, lease_seconds=lease, wait_seconds=0)


def test_an_expired_lease_is_claimed_by_exactly_one_of_many_workers(store: RunStore) -> None:
    s = slots(store)
    assert s.try_acquire("fake", "scan1", "tok1", RERUN) == 1  # then no heartbeat: it dies
    assert s.claim_expired("fake") == []  # live: nothing to recover yet
    assert s.lease_contexts() == ["fake"]
    wait_for(lambda: s.holders("fake") == [], 10, "the lease to expire")
    claims: list[list[tuple[str, dict[str, Any]]]] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        claims.append(slots(store).claim_expired("fake"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(claims, key=len) == [[]] * 7 + [[("scan1", RERUN)]]
    assert s.claim_expired("fake") == []  # gone from Redis with the claim
    assert store.r.hlen("sf:rerun:fake") == 0


def test_a_finished_scan_leaves_nothing_to_recover(store: RunStore) -> None:
    s = slots(store, lease=0.3)
    with s.slot("fake", "scan1", RERUN):
        pass
    with pytest.raises(RuntimeError), s.slot("fake", "scan2", RERUN):
        raise RuntimeError("the scan blew up")  # a failed scan is recorded, not recovered
    assert store.r.hlen("sf:rerun:fake") == 0
    assert s.claim_expired("fake") == []


def test_a_live_scan_keeps_its_lease_past_the_lease_period(store: RunStore) -> None:
    s = slots(store, lease=2.0)  # heartbeat every 0.67 s: a stall of over a second is fine
    with s.slot("fake", "scan1", RERUN):
        t0 = store.r.time()
        wait_for(lambda: store.r.time()[0] >= t0[0] + 5, 15, "two and a half leases")
        assert s.claim_expired("fake") == []
        assert s.holders("fake") == ["scan1"]


def test_a_scan_whose_lease_was_claimed_ends_with_slot_busy(store: RunStore) -> None:
    s = slots(store, lease=30)

    def slow_scan() -> None:
        with s.slot("fake", "scan1", RERUN):
            # A pause longer than the lease: its expiry passes and recovery claims it.
            store.r.zadd("sf:lease:fake", {"scan1": 1})
            assert [sid for sid, _ in s.claim_expired("fake")] == ["scan1"]
            # The re-run takes the lease; the slow copy must not release it on its way out.
            assert s.try_acquire("fake", "scan1", "rerun-token", RERUN) == 1

    with pytest.raises(SlotBusy, match="another worker re-ran it"):
        slow_scan()
    assert s.holders("fake") == ["scan1"]
    assert s.release("fake", "scan1", "rerun-token")


def test_recovery_revokes_the_dead_scans_identity_and_publishes_it_once(
    store: RunStore,
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
) -> None:
    clients = ClientCache(str(admin_kubeconfig), retries=0)
    mint_service_account(clients, "0123456789abcdef")
    s = slots(store)
    assert s.try_acquire("fake", "0123456789abcdef", "dead", RERUN) == 1
    assert s.try_acquire("fake", "fedcba9876543210", "dead", RERUN) == 1  # recorded already
    published = Published()
    recover: Callable[[], Any] = lambda: recover_expired(  # noqa: E731
        s, Done("fedcba9876543210"), clients, published
    )
    assert recover().rerun == []  # leases still live
    assert identity_of(fake_cluster, "0123456789abcdef") == [object_name("0123456789abcdef")]
    wait_for(lambda: s.holders("fake") == [], 10, "the leases to expire")
    got = recover()
    assert got.rerun == ["0123456789abcdef"]
    assert got.already_done == ["fedcba9876543210"]
    assert got.revoke_failed == []
    assert published == [(RUN, TARGET)]
    assert identity_of(fake_cluster, "0123456789abcdef") == []
    assert recover().rerun == []  # claimed once: a second pass (another worker) finds nothing
    assert published == [(RUN, TARGET)]


@pytest.mark.leaves_leftovers("the decoy is not scanfleet's: recovery must leave it")
def test_recovery_never_deletes_a_same_named_object_that_is_not_scanfleets(
    store: RunStore,
    fake_cluster: FakeCluster,
    admin_kubeconfig: Path,
) -> None:
    clients = ClientCache(str(admin_kubeconfig), retries=0)
    mint_service_account(clients, "0123456789abcdef", automountServiceAccountToken=True)
    s = slots(store)
    assert s.try_acquire("fake", "0123456789abcdef", "dead", RERUN) == 1
    wait_for(lambda: s.holders("fake") == [], 10, "the lease to expire")
    published = Published()
    got = recover_expired(s, Done(), clients, published)
    assert got.revoke_failed == ["0123456789abcdef"]
    assert identity_of(fake_cluster, "0123456789abcdef") == [object_name("0123456789abcdef")]
    assert published == [(RUN, TARGET)]  # the scan still runs again


def test_the_watcher_keeps_watching_after_a_failed_pass() -> None:
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("redis restarting")

    w = Watcher(check, 0.01).start()  # the interval is floored at 0.5 s
    try:
        wait_for(lambda: len(calls) >= 2, 10, "a second pass after the failed one")
    finally:
        w.stop()


def test_the_retry_pauses_scale_with_a_setting_and_the_lease_row_does_not() -> None:
    scale = 0.01  # SCANFLEET_RETRY_DELAY_SCALE (tests/unit/core/test_settings.py)
    unavailable = RETRY_DELAYS[ClusterUnavailable]
    assert [backoff(unavailable, n, scale=scale) for n in range(4)] == pytest.approx(
        [0.15, 0.3, 0.6, 1.2]
    )
    assert backoff(RETRY_DELAYS[SlotBusy], 0, lease_seconds=60, scale=scale) == 30
