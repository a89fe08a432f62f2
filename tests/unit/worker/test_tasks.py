"""The scan task's reaction to each outcome of a delivery, in process (the fleet tests run
the same task in real workers; they cannot make a second delivery collide on demand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry

from scanfleet.core.errors import ClusterUnavailable, NoSlot, SlotBusy
from scanfleet.core.settings import Settings
from scanfleet.core.targets import Target
from scanfleet.scan.target import Scanned
from scanfleet.sweeps import posture
from scanfleet.worker import tasks
from scanfleet.worker.app import JANITOR_TASK, SCAN_TASK, create_app

TARGET = Target("east", "apps", "web", "app").to_dict()
UNAVAILABLE_RETRIES = 4
"""clock.RETRY_DELAYS: a ClusterUnavailable scan is tried again this many times."""


class Retried(Retry):
    """What `task.retry` returns in a worker: Celery's Retry, itself an Exception."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = kwargs


SETTINGS = Settings(early_revoke_after=300)


@pytest.fixture
def app() -> Any:
    return create_app(SETTINGS)


@pytest.fixture
def deliver(app: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the scan task's body with run_target raising `exc` (or, for an unreachable cluster,
    returning its api_error summary as the scan does); return the retry request or status."""

    class Runtime:
        def run(self, run_id: str) -> tuple[object, object, None]:
            return object(), object(), None

        def pin_profile(self, plan: object) -> object:
            return plan  # a local profile: nothing to fetch

    recorded: list[Any] = []
    completed: list[Any] = []
    task = app.tasks[SCAN_TASK]
    monkeypatch.setattr(tasks.WorkerContext.of(task), "runtime", Runtime)

    def retry(**kwargs: Any) -> Retried:
        return Retried(**kwargs)

    monkeypatch.setattr(task, "retry", retry)

    def record_error(pipe: object, plan: object, t: Target, e: BaseException) -> dict[str, str]:
        recorded.append(e)
        return {"status": "error"}

    monkeypatch.setattr(tasks, "record_error", record_error)

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
            return task.run("20250101T000000Z-abcdef", TARGET, attempts)
        except Retried as r:
            return r

    go.recorded = recorded  # type: ignore[attr-defined]
    go.completed = completed  # type: ignore[attr-defined]
    return go


def test_slot_busy_retries_after_half_a_lease_and_records_nothing(deliver: Any) -> None:
    busy = SlotBusy("scan 1 is leased by another delivery")
    got = deliver(busy)
    assert isinstance(got, Retried)
    assert got.kwargs["countdown"] == max(1, SETTINGS.lease_seconds // 2)
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
    app: Any, monkeypatch: pytest.MonkeyPatch
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

    monkeypatch.setattr(tasks.WorkerContext.of(app.tasks[JANITOR_TASK]), "runtime", lambda: Runtime)
    monkeypatch.setattr(tasks, "janitor_for_kubeconfig", janitor)
    monkeypatch.setattr(posture, "janitor_finished", lambda report: None)
    app.tasks[JANITOR_TASK].run()
    [early] = seen
    assert early.leases is Runtime.slots
    assert early.min_age == timedelta(seconds=300)
    assert early.fleet_run("fleet-run")
    assert not early.fleet_run("local-run")
    # Each app reads its own settings: one built without early revocation never passes one.
    other = create_app(replace(SETTINGS, early_revoke_after=0))
    monkeypatch.setattr(
        tasks.WorkerContext.of(other.tasks[JANITOR_TASK]), "runtime", lambda: Runtime
    )
    other.tasks[JANITOR_TASK].run()
    assert seen[-1] is None


def test_each_task_keeps_its_wire_name_and_reads_the_settings_of_its_own_app() -> None:
    east = create_app(Settings(results_dir=Path("/srv/east")))
    west = create_app(Settings(results_dir=Path("/srv/west")))
    names = {n for n in east.tasks if n.startswith("scanfleet.")}
    assert names == {
        "scanfleet.fan_out",
        "scanfleet.scan_target",
        "scanfleet.sweep_tick",
        "scanfleet.janitor",
        "scanfleet.prune",
    }
    assert tasks.WorkerContext.of(east.tasks[SCAN_TASK]).settings.results_dir == Path("/srv/east")
    assert tasks.WorkerContext.of(west.tasks[SCAN_TASK]).settings.results_dir == Path("/srv/west")


def test_celerys_own_command_line_finds_an_app_built_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`celery --app=scanfleet.worker.app flower` (the compose stack's monitor)."""
    from celery.app.utils import find_app

    from scanfleet.worker import app as app_module

    monkeypatch.setenv("SCANFLEET_RESULTS_DIR", str(tmp_path))
    app_module._from_environment.cache_clear()
    try:
        found = find_app("scanfleet.worker.app")
        assert SCAN_TASK in found.tasks
        assert tasks.WorkerContext.of(found.tasks[SCAN_TASK]).settings.results_dir == tmp_path
    finally:
        app_module._from_environment.cache_clear()
