"""The scan task's reaction to each outcome of a delivery, in process (the fleet tests run
the same task in real workers; they cannot make a second delivery collide on demand)."""

from __future__ import annotations

from typing import Any

import pytest

from scanfleet import tasks
from scanfleet.celery_app import tuning
from scanfleet.errors import ClusterUnavailable
from scanfleet.leases import NoSlot, SlotBusy
from scanfleet.targets import Target

TARGET = Target("east", "apps", "web", "app").to_dict()


class Retried(Exception):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(kwargs)
        self.kwargs = kwargs


@pytest.fixture
def deliver(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run scan_target's body with execute_target raising `exc`; return the retry request."""

    class Runtime:
        def run(self, run_id: str) -> tuple[object, object]:
            return object(), Pipe()

    class Pipe:
        defer_unavailable = False

    recorded: list[Any] = []
    monkeypatch.setattr(tasks, "runtime", Runtime)

    def replace(pipe: Pipe, defer_unavailable: bool) -> Pipe:
        pipe.defer_unavailable = defer_unavailable
        return pipe

    monkeypatch.setattr(tasks, "replace", replace)

    def retry(**kwargs: Any) -> Retried:
        return Retried(**kwargs)

    monkeypatch.setattr(tasks.scan_target, "retry", retry)
    monkeypatch.setattr(tasks, "record_failure",
                        lambda pipe, plan, t, e: recorded.append(e) or {"status": "error"})

    def go(exc: BaseException, unavailable: int = 0) -> Retried | str | None:
        def execute(pipe: Any, plan: object, target: Target) -> dict[str, Any]:
            if isinstance(exc, ClusterUnavailable) and not pipe.defer_unavailable:
                return {"status": "error"}  # what execute_target records: api_error
            raise exc

        monkeypatch.setattr(tasks, "execute_target", execute)
        try:
            return tasks.scan_target.run(  # type: ignore[no-any-return]
                "20250101T000000Z-abcdef", TARGET, unavailable=unavailable)
        except Retried as r:
            return r

    go.recorded = recorded  # type: ignore[attr-defined]
    return go


def test_slot_busy_retries_after_half_a_lease_and_records_nothing(deliver: Any) -> None:
    busy = SlotBusy("scan 1 is leased by another delivery")
    got = deliver(busy)
    assert isinstance(got, Retried)
    assert got.kwargs["countdown"] == max(1, tuning.lease_seconds // 2)
    assert got.kwargs["exc"] is busy
    assert deliver.recorded == []


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
    for n in range(tasks.UNAVAILABLE_RETRIES):
        got = deliver(down, unavailable=n)
        assert isinstance(got, Retried), n
        assert got.kwargs["kwargs"] == {"unavailable": n + 1}
        pauses.append(got.kwargs["countdown"])
    assert pauses == sorted(pauses)
    assert pauses[0] < pauses[-1] <= 300
    # The last delivery no longer defers: the scan records its api_error and the run ends.
    assert deliver(down, unavailable=tasks.UNAVAILABLE_RETRIES) == "error"
    assert deliver.recorded == []
