"""One contract, two implementations: run state and cluster slots, in memory and in Redis.

Plus the outage rule: Redis down while a scan takes its cluster slot is the retryable
`StoreUnavailable`, never a RedisError that a driver could record as a scan `api_error`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import fakeredis
import pytest

from scanfleet.core.clock import retry_delay
from scanfleet.core.errors import StoreUnavailable
from scanfleet.core.targets import Target
from scanfleet.judging.documents import RunDocument
from scanfleet.kube.client import ClientCache
from scanfleet.runs.pipeline import RunContext, RunState, run_target
from scanfleet.scan.auditor import Host
from scanfleet.scan.plan import RunPlan
from scanfleet.store.slots import LocalSlots, RedisSlots, Slots
from scanfleet.store.state import MemoryRunState, RunStore
from tests.support.tools import require_module

require_module(
    "lupa", "fakeredis runs Lua only with lupa: pip install -e '.[dev]' (fakeredis[lua])"
)

RUN = "20250101T000000Z-abcdef"
COVERS = {"s0": [{"context": "c", "namespace": "ns", "pod": "x", "container": "app"}]}


def _redis_store(client: Any = None) -> RunStore:
    return RunStore(client or fakeredis.FakeRedis(decode_responses=True), "sf", retention_days=1)


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> RunState:
    if request.param == "memory":
        return MemoryRunState(3, COVERS)
    store = _redis_store()
    entries = [
        {"context": "c", "namespace": "ns", "pod": f"p{i}", "container": "app"} for i in range(2)
    ]
    store.create_run(RUN, {"run_id": RUN}, entries, COVERS, 3, created_at="t", results_dir=None)
    return store


@pytest.fixture(params=["memory", "redis"])
def slots(request: pytest.FixtureRequest) -> Slots:
    if request.param == "memory":
        return LocalSlots(1)
    return RedisSlots(_redis_store(), 1, lease_seconds=30, wait_seconds=0)


def test_run_state_counts_each_result_once_and_finalizes_once(state: RunState) -> None:
    assert not state.is_done(RUN, "s0")
    state.mark_running(RUN, "s0")
    assert state.covered(RUN, "s0") == COVERS["s0"]
    assert state.covered(RUN, "s1") == []
    assert state.finish(RUN, [("s0", "completed"), ("x", "completed")]) == (2, 2, 3)
    assert state.finish(RUN, [("s0", "completed")]) == (0, 2, 3)  # redelivered: not again
    assert state.is_done(RUN, "s0")
    state.mark_running(RUN, "s0")  # a late duplicate cannot make it running again
    assert state.finish(RUN, [("s1", "error")]) == (1, 3, 3)
    assert not state.is_finalized(RUN)
    assert state.begin_finalize(RUN)
    assert not state.begin_finalize(RUN)
    state.end_finalize(RUN, cast(RunDocument, {"exit_code": 3, "finished_at": "t"}))
    assert state.is_finalized(RUN)


def test_slots_are_per_context_and_free_again_after_use(slots: Slots) -> None:
    with slots.slot("east", "a"), slots.slot("west", "b"):
        pass  # cap 1 per context: another context is not affected
    with slots.slot("east", "c"):
        pass  # released on exit


def test_a_slot_is_released_when_the_scan_fails(slots: Slots) -> None:
    with pytest.raises(RuntimeError), slots.slot("east", "a"):
        raise RuntimeError("scan blew up")
    with slots.slot("east", "b"):
        pass


@pytest.fixture
def redis_down() -> Any:
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    server.connected = False
    return client


def test_redis_down_while_taking_a_slot_is_retryable_and_records_nothing(
    redis_down: Any, tmp_path: Path
) -> None:
    slots = RedisSlots(_redis_store(redis_down), 2, wait_seconds=0)
    with pytest.raises(StoreUnavailable) as caught, slots.slot("east", "a"):
        pass
    assert retry_delay(caught.value) is not None

    plan = RunPlan(run_id=RUN, source="test", profile="p", created_at="t")
    pipe = RunContext(ClientCache(""), MemoryRunState(1), slots, tmp_path, host=Host())
    with pytest.raises(StoreUnavailable):
        run_target(pipe, plan, Target("east", "ns", "pod", "app"))
    assert not list(tmp_path.rglob("*.json")), "an outage is retried, never a scan result"


def test_the_task_retries_a_store_outage_instead_of_recording_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from scanfleet.core.settings import Settings
    from scanfleet.worker.app import SCAN_TASK, create_app
    from scanfleet.worker.tasks import _retry_or_continue

    class Retry(Exception):
        pass

    asked: dict[str, Any] = {}

    def retry(**kwargs: Any) -> Exception:
        asked.update(kwargs)
        return Retry()

    task = create_app(Settings()).tasks[SCAN_TASK]
    monkeypatch.setattr(task, "retry", retry)
    with pytest.raises(Retry):
        _retry_or_continue(task, StoreUnavailable("Redis: acquiring a cluster slot"), {})
    assert asked["countdown"] == 5
