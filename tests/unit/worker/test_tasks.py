"""The scan task's reaction to each outcome of a delivery, in process (the fleet tests run
the same task in real workers; they cannot make a second delivery collide on demand)."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import Retry

from scanfleet.core.errors import ClusterUnavailable, NoSlot, SlotBusy
from scanfleet.core.targets import Target
from scanfleet.scan.target import Scanned
from scanfleet.worker import tasks
from scanfleet.worker.app import tuning

TARGET = Target("east", "apps", "web", "app").to_dict()
UNAVAILABLE_RETRIES = 4
"""clock.RETRY_DELAYS: a ClusterUnavailable scan is tried again this many times."""


class Retried(Retry):
    """What `task.retry` returns in a worker: Celery's Retry, itself an Exception."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs


@pytest.fixture
def deliver(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run scan_target's body with run_target raising `exc` (or, for an unreachable cluster,
    returning its api_error summary as the scan does); return the retry request or status."""

    class Runtime:
        def run(self, run_id: str) -> tuple[object, object, None]:
            return object(), object(), None

        def pin_profile(self, plan: object) -> object:
            return plan  # a local profile: nothing to fetch

    recorded: list[Any] = []
    completed: list[Any] = []
    monkeypatch.setattr(tasks, "runtime", Runtime)

    def retry(**kwargs: Any) -> Retried:
        return Retried(**kwargs)

    monkeypatch.setattr(tasks.scan_target, "retry", retry)
    monkeypatch.setattr(
        tasks, "record_failure", lambda pipe, plan, t, e: recorded.append(e) or {"status": "error"}
    )

    def complete(pipe: object, plan: object, scanned: Scanned) -> Any:
        completed.append(scanned.error)
        return scanned.summary

    monkeypatch.setattr(tasks, "complete", complete)

    def go(exc: BaseException, attempts: dict[str, int] | None = None) -> Retried | str | None:
        def run_target(pipe: object, plan: object, target: Target) -> Scanned:
            if isinstance(exc, ClusterUnavailable):
                return Scanned({"status": "error"}, exc)  # type: ignore[typeddict-item]
            raise exc

        monkeypatch.setattr(tasks, "run_target", run_target)
        try:
            return tasks.scan_target.run(  # type: ignore[no-any-return]
                "20250101T000000Z-abcdef", TARGET, attempts
            )
        except Retried as r:
            return r

    go.recorded = recorded  # type: ignore[attr-defined]
    go.completed = completed  # type: ignore[attr-defined]
    return go


def test_slot_busy_retries_after_half_a_lease_and_records_nothing(deliver: Any) -> None:
    busy = SlotBusy("scan 1 is leased by another delivery")
    got = deliver(busy)
    assert isinstance(got, Retried)
    assert got.kwargs["countdown"] == max(1, tuning.lease_seconds // 2)
    assert got.kwargs["exc"] is busy
    assert deliver.recorded == []
    assert deliver.completed == []


def test_no_slot_retries_soon(deliver: Any) -> None:
    got = deliver(NoSlot("cluster east is at its cap"))
    assert isinstance(got, Retried)
    assert 1 <= got.kwargs["countdown"] < 2


def test_an_unexpected_exception_is_recorded_not_retried(deliver: Any) -> None:
    boom = KeyError("spec")
    assert deliver(boom) == "error"
    assert deliver.recorded == [boom]


def test_an_unreachable_cluster_is_retried_with_growing_pauses_then_recorded(
    deliver: Any,
) -> None:
    down = ClusterUnavailable("east: connection refused")
    pauses = []
    for n in range(UNAVAILABLE_RETRIES):
        got = deliver(down, {"ClusterUnavailable": n} if n else None)
        assert isinstance(got, Retried), n
        assert got.kwargs["kwargs"] == {"attempts": {"ClusterUnavailable": n + 1}}
        pauses.append(got.kwargs["countdown"])
    assert pauses == sorted(pauses)
    assert pauses[0] < pauses[-1] <= 300
    assert deliver.completed == []
    # The last delivery no longer defers: the scan records its api_error and the run ends.
    assert deliver(down, {"ClusterUnavailable": UNAVAILABLE_RETRIES}) == "error"
    assert deliver.completed == [down]
    assert deliver.recorded == []


def test_the_workers_janitor_revokes_idle_fleet_identities_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace
    from datetime import timedelta

    from scanfleet.identity.janitor import JanitorReport

    class Store:
        def meta(self, run_id: str) -> dict[str, str]:
            return {"source": "cli"} if run_id == "fleet-run" else {}

    class Clients:
        kubeconfig = "/kube/config"

    class Runtime:
        slots, store, clients = object(), Store(), Clients()

    seen: list[Any] = []

    def janitor(kubeconfig: str, contexts: Any, all_contexts: bool, **kw: Any) -> JanitorReport:
        seen.append(kw["early"])
        return JanitorReport(dry_run=kw["dry_run"])

    monkeypatch.setattr(tasks, "runtime", lambda: Runtime)
    monkeypatch.setattr(tasks, "janitor_for_kubeconfig", janitor)
    monkeypatch.setattr(tasks.posture, "janitor_finished", lambda report: None)
    tasks.janitor_task.run()
    [early] = seen
    assert early.leases is Runtime.slots
    assert early.min_age == timedelta(seconds=300)
    assert early.fleet_run("fleet-run")
    assert not early.fleet_run("local-run")
    monkeypatch.setattr(tasks, "settings", replace(tasks.settings, early_revoke_after=0))
    tasks.janitor_task.run()
    assert seen[-1] is None
