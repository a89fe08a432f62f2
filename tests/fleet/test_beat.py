"""Sweeps on Celery beat: the croniter schedule, the sweep lock, and real beat processes.

The end-to-end tests run real `celery beat` processes (the same `run_beat` that
`scanfleet beat` calls) and a real Celery worker, against a test-owned redis-server. The
beats' clock is a file the test writes: it reads 10:00:30 until every beat has built its
schedule, then the test moves it past 10:01, so the tick is due at a moment the test chooses
rather than at a wall-clock minute boundary. The worker's run starter is a stand-in that
records the run in the store: what the tick does around it — the lock, the skip — is the
code under test.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from scanfleet.core.settings import Settings
from scanfleet.kube.client import KubeClient
from scanfleet.store.client import connect
from scanfleet.store.locks import SweepLock
from scanfleet.store.state import RunStore
from scanfleet.sweeps.spec import Sweep, load_sweeps
from scanfleet.sweeps.tick import run_tick
from scanfleet.worker.app import JANITOR_TASK, PRUNE_TASK, SWEEP_TICK_TASK
from scanfleet.worker.schedule import (
    CronSchedule,
    beat_schedule,
)
from tests.support.fixtures_kube import seed_default
from tests.support.fixtures_ops import leave_orphans, make_run, stop_process, wait_for

T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)
PREFIX = "sftest"


def fixed(t: datetime) -> Callable[[], datetime]:
    return lambda: t


def frozen_noon() -> datetime:  # module level: picklable, like a persisted beat entry
    return T0


# -- the schedule ------------------------------------------------------------------------


def test_cron_schedule_is_due_at_each_fire_time_only() -> None:
    s = CronSchedule("*/15 * * * *", nowfun=fixed(T0 + timedelta(minutes=14, seconds=59)))
    due, wait = s.is_due(T0)
    assert not due
    assert wait == pytest.approx(1)
    s = CronSchedule("*/15 * * * *", nowfun=fixed(T0 + timedelta(minutes=15)))
    due, wait = s.is_due(T0)
    assert due
    assert wait == pytest.approx(900)
    # Beat was down for several fire times: one tick now, then back on the grid.
    s = CronSchedule("*/15 * * * *", nowfun=fixed(T0 + timedelta(minutes=47)))
    due, wait = s.is_due(T0)
    assert due
    assert wait == pytest.approx(13 * 60)
    # A naive last-run time (an old schedule file) is UTC.
    s = CronSchedule("0 2 * * *", nowfun=fixed(T0))
    due, wait = s.is_due(datetime(2025, 1, 1, 9, 0))
    assert not due
    assert wait == pytest.approx(16 * 3600)


def test_cron_schedule_survives_pickling_for_persistent_beat() -> None:
    s = CronSchedule("0 2 * * 1-5", nowfun=frozen_noon)
    back = pickle.loads(pickle.dumps(s))
    assert back == s
    assert back.is_due(T0) == s.is_due(T0)


def test_beat_schedule_has_one_entry_per_sweep_plus_janitor_and_prune() -> None:
    sweeps = [
        Sweep(name="nightly", schedule="0 2 * * *", profile="p", all_namespaces=True),
        Sweep(name="hourly", schedule="0 * * * *", profile="p", namespaces=("apps",)),
    ]
    entries = beat_schedule(sweeps, janitor_interval=600, lock_ttl=7200)
    assert set(entries) == {"sweep:nightly", "sweep:hourly", "scanfleet-janitor", "scanfleet-prune"}
    e = entries["sweep:nightly"]
    assert e["task"] == SWEEP_TICK_TASK
    assert e["args"] == ("nightly",)
    assert Sweep.from_dict(e["kwargs"]["sweep"]) == sweeps[0]
    assert e["kwargs"]["lock_ttl"] == 7200
    assert e["schedule"] == CronSchedule("0 2 * * *")
    json.dumps(e["kwargs"])  # task arguments are plain JSON
    assert entries["scanfleet-janitor"] == {"task": JANITOR_TASK, "schedule": 600.0}
    assert entries["scanfleet-prune"]["task"] == PRUNE_TASK


# -- the lock (real redis-server) --------------------------------------------------------


@pytest.fixture
def store(ops_redis: str) -> Iterator[RunStore]:
    s = RunStore(connect(ops_redis), PREFIX, 1)
    yield s
    s.r.close()


SWEEP = Sweep(name="every-minute", schedule="* * * * *", profile="p", all_namespaces=True)


class Starter:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.started: list[str] = []

    def __call__(self, sweep: Sweep, settings: Settings) -> str:
        run_id = f"20250101T0000{len(self.started):02d}Z-abcdef"
        self.store.create_run(
            run_id, {"source": sweep.source}, [], {}, 1, created_at="now", results_dir=None
        )
        self.started.append(run_id)
        return run_id


def test_a_running_sweep_is_skipped_and_logged_until_its_run_finishes(
    store: RunStore, tmp_path: Path
) -> None:
    lock = SweepLock(store, tmp_path)
    start = Starter(store)
    settings = Settings()
    with capture_logs() as logs:
        first = run_tick(SWEEP, lock, start, settings, lock_ttl=3600)
        second = run_tick(SWEEP, lock, start, settings, lock_ttl=3600)
    assert first == start.started[0]
    assert second is None
    assert start.started == [first]
    assert lock.holder("every-minute") == first
    assert 3500 < store.r.ttl(lock.key("every-minute")) <= 3600  # the backstop
    skipped = [e for e in logs if e["event"] == "sweep.skipped"]
    assert len(skipped) == 1
    assert skipped[0]["running"] == first
    assert skipped[0]["sweep"] == "every-minute"
    # The run finalizes: the next tick starts a new run.
    store.end_finalize(first, {"finished_at": "later", "exit_code": 0})
    third = run_tick(SWEEP, lock, start, settings)
    assert third == start.started[1]
    # run.json on disk is enough too (a store that lost its keys).
    (tmp_path / third).mkdir()
    (tmp_path / third / "run.json").write_text("{}")
    assert run_tick(SWEEP, lock, start, settings) == start.started[2]
    for run_id in start.started:
        store.delete_run(run_id)
    store.r.delete(lock.key("every-minute"))


def test_a_failed_start_releases_the_lock(store: RunStore, tmp_path: Path) -> None:
    lock = SweepLock(store, tmp_path)

    def broken(sweep: Sweep, settings: Settings) -> str:
        raise RuntimeError("discovery failed")

    with pytest.raises(RuntimeError):
        run_tick(SWEEP, lock, broken, Settings())
    assert lock.holder("every-minute") is None


def test_a_start_in_progress_holds_the_lock(store: RunStore, tmp_path: Path) -> None:
    lock = SweepLock(store, tmp_path)
    seen: list[str | None] = []

    def slow(sweep: Sweep, settings: Settings) -> str:
        # Another beat's tick arrives while this one is still starting its run.
        seen.append(run_tick(SWEEP, lock, Starter(store), settings))
        return "20250101T000000Z-000001"

    assert run_tick(SWEEP, lock, slow, Settings()) == "20250101T000000Z-000001"
    assert seen == [None]
    store.r.delete(lock.key("every-minute"))


# -- real beat and worker processes ------------------------------------------------------

BEAT = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime

    CLOCK = sys.argv[1]

    def file_clock():
        with open(CLOCK) as f:
            return datetime.fromisoformat(f.read().strip())

    if CLOCK == "-":  # real time
        file_clock = None

    import celery.beat
    from celery.signals import before_task_publish

    populate_heap = celery.beat.Scheduler.populate_heap

    def populate_and_say_so(self, *args, **kwargs):
        populate_heap(self, *args, **kwargs)
        print(json.dumps({"event": "test.schedule_ready"}), flush=True)

    celery.beat.Scheduler.populate_heap = populate_and_say_so

    @before_task_publish.connect
    def published(sender=None, **kwargs):
        print(json.dumps({"event": "test.published", "task": sender}), flush=True)

    from scanfleet.core import logs
    logs.configure("json")
    from scanfleet.core.settings import Settings
    from scanfleet.worker.app import create_app
    from scanfleet.worker.schedule import run_beat
    from scanfleet.sweeps.spec import load_sweeps

    periodic = {"janitor_interval": float(sys.argv[3]), "prune_interval": float(sys.argv[4])} \\
        if len(sys.argv) > 4 else {}
    app = create_app(Settings.from_env())
    run_beat(app, load_sweeps(sys.argv[2]), max_interval=0.25, nowfun=file_clock, **periodic)
    """
)

WORKER = textwrap.dedent(
    """
    import json, os
    from scanfleet.core import logs
    logs.configure("json")
    from scanfleet.core.settings import Settings
    from scanfleet.worker.app import create_app
    from scanfleet.store.state import RunStore

    def record_start(sweep, settings):
        store = RunStore.from_url(settings.broker_url, settings.key_prefix, 1)
        path = os.environ["STARTS"]
        n = sum(1 for _ in open(path)) if os.path.exists(path) else 0
        run_id = "20250101T0000%02dZ-abcdef" % n
        store.create_run(run_id, {"source": sweep.source}, [], {}, 1, created_at="now",
                         results_dir=None)
        with open(os.environ["STARTS"], "a") as f:
            f.write(json.dumps({"run_id": run_id, "source": sweep.source}) + "\\n")
        return run_id

    app = create_app(Settings.from_env(), start_sweep=record_start)
    app.worker_main(["worker", "--pool=solo", "--without-heartbeat", "--without-mingle",
                     "--without-gossip", "--loglevel=WARNING"])
    """
)


class Procs:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "SCANFLEET_BROKER_URL": redis_url,
            "SCANFLEET_KEY_PREFIX": PREFIX,
            "SCANFLEET_RESULTS_DIR": str(tmp / "results"),
            "SCANFLEET_LOG_FORMAT": "json",
            "STARTS": str(tmp / "starts.jsonl"),
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def spawn(self, name: str, script: str, *args: str) -> Path:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, *args],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.tmp,
                )
            )
        self.logs.append(log)
        return log

    def starts(self) -> list[dict[str, Any]]:
        p = Path(self.env["STARTS"])
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

    def events(self, log: Path, event: str) -> list[dict[str, Any]]:
        out = []
        for line in log.read_text(errors="replace").splitlines():
            if f'"{event}"' in line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def stop(self) -> None:
        for p in self.procs:
            stop_process(p)

    def dump(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.logs
        )


@pytest.fixture
def procs(tmp_path: Path, ops_redis: str) -> Iterator[Procs]:
    p = Procs(tmp_path, ops_redis)
    yield p
    p.stop()


BEFORE_TICK = datetime(2025, 1, 1, 10, 0, 30, tzinfo=UTC)
AFTER_TICK = datetime(2025, 1, 1, 10, 1, 1, tzinfo=UTC)


def set_clock(path: Path, t: datetime) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(t.isoformat())
    os.replace(tmp, path)


def start_beats(procs: Procs, sweeps: Path, *names: str) -> list[Path]:
    """Start beats on a file clock before the 10:01 tick; once all are ready, pass it."""
    clock = procs.tmp / "clock"
    set_clock(clock, BEFORE_TICK)
    logs = [procs.spawn(name, BEAT, str(clock), str(sweeps)) for name in names]
    for log in logs:
        wait_for(
            functools.partial(procs.events, log, "test.schedule_ready"),
            60,
            f"{log.stem} to build its schedule",
        )
    set_clock(clock, AFTER_TICK)
    return logs


def published_ticks(procs: Procs, log: Path) -> list[dict[str, Any]]:
    return [e for e in procs.events(log, "test.published") if e["task"] == SWEEP_TICK_TASK]


@pytest.fixture
def every_minute(write_sweeps: Callable[..., Path]) -> Path:
    path = write_sweeps(
        {
            "sweeps": [
                {
                    "name": "every-minute",
                    "schedule": "* * * * *",
                    "profile": "/p",
                    "all_namespaces": True,
                }
            ]
        }
    )
    load_sweeps(path)
    return path


@pytest.mark.slow
def test_two_beats_fire_the_sweep_once_and_the_overlapping_tick_is_skipped(
    procs: Procs, every_minute: Path
) -> None:
    worker = procs.spawn("worker", WORKER)
    try:
        beat_a, beat_b = start_beats(procs, every_minute, "beat-a", "beat-b")
        wait_for(lambda: procs.events(worker, "sweep.skipped"), 60, "the second tick's skip")
        wait_for(procs.starts, 30, "the first tick's run")
    except AssertionError:
        raise AssertionError(procs.dump()) from None
    starts = procs.starts()
    assert starts == [{"run_id": "20250101T000000Z-abcdef", "source": "sweep:every-minute"}]
    (skip,) = procs.events(worker, "sweep.skipped")
    assert skip["sweep"] == "every-minute"
    assert skip["running"] == "20250101T000000Z-abcdef"
    (started,) = procs.events(worker, "sweep.started")
    assert started["source"] == "sweep:every-minute"
    for beat in (beat_a, beat_b):  # each beat published the 10:01 tick exactly once
        assert len(published_ticks(procs, beat)) == 1, procs.dump()


@pytest.mark.slow
def test_a_tick_while_the_lock_is_held_is_skipped(
    procs: Procs, every_minute: Path, store: RunStore
) -> None:
    held = "20241231T235900Z-0a0a0a"  # a run that has not finished
    store.r.set(f"{PREFIX}:sweep:every-minute:lock", held, ex=600)
    worker = procs.spawn("worker", WORKER)
    try:
        (beat,) = start_beats(procs, every_minute, "beat")
        wait_for(lambda: procs.events(worker, "sweep.skipped"), 60, "the tick's skip")
    except AssertionError:
        raise AssertionError(procs.dump()) from None
    (skip,) = procs.events(worker, "sweep.skipped")
    assert skip["running"] == held
    assert len(published_ticks(procs, beat)) == 1
    assert procs.starts() == []
    assert store.r.get(f"{PREFIX}:sweep:every-minute:lock") == held


@pytest.mark.slow
@pytest.mark.leaves_leftovers(
    "the janitor's Redis totals (posture.janitor_finished) have no TTL by design: they "
    "survive a beat restart"
)
def test_workers_run_the_janitor_and_prune_periodically(
    procs: Procs, every_minute: Path, make_cluster: Callable[..., Any], tmp_path: Path
) -> None:
    # What `scanfleet beat` schedules besides sweeps: the janitor and retention, executed by
    # the workers. Intervals of 1 s (instead of 15 min / 1 h) let the test see repeats.
    cluster = seed_default(make_cluster())
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kube" / "config", context="fake")
    kube = KubeClient(str(kubeconfig), "fake")
    leave_orphans(
        kube, "apps", "00000000000000aa", "r", datetime.now(UTC) - timedelta(hours=3), 600
    )
    kube.close()
    results = Path(procs.env["SCANFLEET_RESULTS_DIR"])
    old = make_run(results, "20200101T000000Z-0000aa", [], run={"source": "submit"})
    procs.env["KUBECONFIG"] = str(kubeconfig)
    worker = procs.spawn("worker", WORKER)
    # Real time: celery's beat heap only looks at its earliest entry, so one frozen clock
    # for the sweep would starve the interval entries.
    procs.spawn("beat", BEAT, "-", str(every_minute), "1", "1")
    try:
        wait_for(
            lambda: len(procs.events(worker, "janitor.finished")) >= 2,
            90,
            "two janitor passes on the worker",
        )
        wait_for(
            lambda: len(procs.events(worker, "retention.finished")) >= 2,
            90,
            "two retention passes on the worker",
        )
    except AssertionError:
        raise AssertionError(procs.dump()) from None
    first = procs.events(worker, "janitor.finished")[0]
    assert first["deleted"] == 3, first
    assert first["context_errors"] == 0, first
    assert cluster.scanfleet_objects() == []
    assert [e["run_id"] for e in procs.events(worker, "retention.pruned")] == [old.name]
    assert not old.exists()
