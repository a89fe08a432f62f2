"""Run store and cluster leases against fakeredis: fast unit tests of the Redis logic."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import cast

import fakeredis
import pytest

from scanfleet.core.errors import NoSlot, SlotBusy
from scanfleet.store.slots import RedisSlots
from scanfleet.store.state import RunStore

RUN = "20250101T000000Z-abcdef"


@pytest.fixture
def store(make_redis: Callable[..., object]) -> RunStore:
    """fakeredis when it can run Lua (needs `lupa`: fakeredis[lua]); else a real redis-server."""
    if importlib.util.find_spec("lupa") is not None:
        client = fakeredis.FakeRedis(decode_responses=True)
    else:
        client = make_redis().client()  # type: ignore[attr-defined]
    return RunStore(client, "sf", retention_days=2)


def _create(
    store: RunStore, n: int = 3, covers: dict[str, list[dict[str, str]]] | None = None
) -> None:
    entries = [
        {"context": "c", "namespace": "ns", "pod": f"p{i}", "container": "app"} for i in range(n)
    ]
    total = n + sum(len(v) for v in (covers or {}).values())
    store.create_run(
        RUN,
        {"run_id": RUN, "profile": "p"},
        entries,
        covers or {},
        total,
        created_at="2025-01-01T00:00:00Z",
        results_dir=None,
    )


def test_every_key_has_the_retention_ttl_and_one_prefix(store: RunStore) -> None:
    _create(store, covers={"s0": [{"pod": "x"}]})
    store.mark_running(RUN, "s0")
    store.finish(RUN, [("s0", "completed")])
    store.begin_finalize(RUN)
    store.end_finalize(RUN, {"exit_code": 0, "finished_at": "t"})
    keys = store.r.keys("*")
    assert keys
    for k in keys:
        assert cast(str, k).startswith("sf:")
        assert 0 < store.r.ttl(k) <= 2 * 86400, k


def test_entries_are_stored_in_order_and_read_in_chunks(store: RunStore) -> None:
    _create(store, n=2501)
    assert [e["pod"] for e in store.entries(RUN, 500, 503)] == ["p500", "p501", "p502"]
    assert len(store.entries(RUN, 2500, 3000)) == 1
    assert len(store.entries(RUN, 0, 3000)) == 2501
    assert store.plan(RUN) == {"run_id": RUN, "profile": "p"}


def test_finish_is_idempotent_under_redelivery(store: RunStore) -> None:
    _create(store, n=3)
    store.mark_running(RUN, "a")
    store.mark_running(RUN, "a")  # a redelivered attempt marks it running again
    st = store.status(RUN)
    assert st is not None
    assert (st.running, st.queued) == (1, 2)
    assert store.finish(RUN, [("a", "completed")]) == (1, 1, 3)
    assert store.finish(RUN, [("a", "completed")]) == (0, 1, 3)  # redelivered: not counted
    store.mark_running(RUN, "a")  # late duplicate must not resurrect it
    assert store.finish(RUN, [("b", "error"), ("c", "completed")]) == (2, 3, 3)
    st = store.status(RUN)
    assert st is not None
    assert (st.queued, st.running, st.completed, st.error, st.done) == (0, 0, 2, 1, 3)
    states = store.r.hgetall(store.key(RUN, "state"))
    assert states == {"a": "completed", "b": "error", "c": "completed"}


def test_finalize_lock_is_taken_once_and_result_is_kept(store: RunStore) -> None:
    _create(store, n=1)
    assert store.begin_finalize(RUN)
    assert not store.begin_finalize(RUN)
    assert not store.is_finalized(RUN)
    store.end_finalize(RUN, {"exit_code": 1, "finished_at": "2025-01-01T00:01:00Z"})
    assert store.is_finalized(RUN)
    st = store.status(RUN)
    assert st is not None
    assert st.finished
    assert st.exit_code == 1
    assert store.result(RUN) == {"exit_code": 1, "finished_at": "2025-01-01T00:01:00Z"}


def test_covers_and_unknown_runs(store: RunStore) -> None:
    _create(store, n=1, covers={"s1": [{"context": "c", "namespace": "ns", "pod": "q"}]})
    assert store.covered(RUN, "s1") == [{"context": "c", "namespace": "ns", "pod": "q"}]
    assert store.covered(RUN, "nope") == []
    assert store.status("20250101T000000Z-000000") is None
    assert store.plan("20250101T000000Z-000000") is None
    st = store.status(RUN)
    assert st is not None
    assert st.total == 2
    assert json.loads(json.dumps(st.to_dict()))["state"] == "queued"


def test_leases_cap_a_context_and_expire(store: RunStore) -> None:
    leases = RedisSlots(store, cap=2, lease_seconds=30, wait_seconds=0)
    assert leases.try_acquire("east", "s1") == 1
    assert leases.try_acquire("east", "s2") == 1
    assert leases.try_acquire("east", "s3") == 0  # at the cap
    assert leases.try_acquire("west", "s3") == 1  # other clusters are independent
    assert leases.try_acquire("east", "s1") == -1  # the same scan already holds a lease
    # A dead worker's lease: expired score → dropped on the next acquire.
    store.r.zadd(store.lease_key("east"), {"s1": 1.0})
    assert leases.try_acquire("east", "s3") == 1
    assert sorted(leases.holders("east")) == ["s2", "s3"]
    leases.release("east", "s2")
    assert leases.holders("east") == ["s3"]


def test_lease_slot_context_manager(store: RunStore) -> None:
    leases = RedisSlots(store, cap=1, lease_seconds=30, wait_seconds=0)
    with leases.slot("east", "s1"):
        assert leases.holders("east") == ["s1"]
        with pytest.raises(SlotBusy):
            leases.slot("east", "s1").__enter__()
        with pytest.raises(NoSlot):
            leases.slot("east", "s2").__enter__()
    assert leases.holders("east") == []
    with leases.slot("east", "s2"):
        pass


def test_renew_never_exceeds_the_cap(store: RunStore) -> None:
    leases = RedisSlots(store, cap=1, lease_seconds=30, wait_seconds=0)
    assert leases.try_acquire("east", "s1") == 1
    assert leases.renew("east", "s1")
    store.r.zadd(store.lease_key("east"), {"s1": 1.0})  # our lease lapsed...
    assert leases.try_acquire("east", "s2") == 1  # ...and someone took the slot
    assert not leases.renew("east", "s1")
    assert leases.holders("east") == ["s2"]
