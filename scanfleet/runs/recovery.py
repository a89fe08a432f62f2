"""Recovery of a dead worker's scans within about two lease periods.

A fleet scan holds a cluster-slot lease (store/slots.py) renewed by a heartbeat every
lease/3; next to the lease, Redis keeps what is needed to run the scan again (run id and
target). When a worker dies (`kill -9`, a node lost) its heartbeats stop and the lease
expires after at most one lease period. Every worker process runs a `Watcher` that calls
`recover_expired` every lease/2: it claims the expired leases (atomically, so one worker
re-runs each scan), revokes each claimed scan's identity (deletes its ServiceAccount with
the worker's admin kubeconfig; the Role and RoleBinding it owns follow by garbage
collection) and publishes the scan again at once. The dead worker's original message is
redelivered later (after Redis's visibility timeout) and finds the result recorded
(`is_done`), or the scan leased by its re-run (`SlotBusy`, then `is_done`): one result per
target.

What it must never do: re-run a scan whose result is recorded; revoke anything but the
`scanfleet-<scan_id>` ServiceAccount of a claimed scan, and that only when it has
scanfleet's shape (`identity.not_ours`) and still the UID it was read with; let a failure
(Redis or a cluster down) stop the watcher; talk to Redis or Celery itself (the store's
`RedisSlots` and a publish callable do). Not covered: a worker dying between releasing
its lease and recording the result (milliseconds) falls back to the visibility timeout.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from scanfleet.core.errors import ScanfleetError
from scanfleet.core.targets import Target
from scanfleet.identity.mint import not_ours, object_name, revoke
from scanfleet.kube.client import ClientCache

log = structlog.get_logger(__name__)

Publish = Callable[[str, Mapping[str, Any]], None]
"""Queue a scan task again: (run id, target dict), exactly the scan task's arguments."""


class ExpiredLeases(Protocol):
    """What recovery needs from `store.slots.RedisSlots`."""

    def lease_contexts(self) -> list[str]: ...

    def claim_expired(self, context: str) -> list[tuple[str, dict[str, Any]]]: ...


class Done(Protocol):
    def is_done(self, run_id: str, scan_id: str) -> bool: ...


@dataclass
class Recovered:
    """What one pass did, for logs and tests."""

    rerun: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    revoke_failed: list[str] = field(default_factory=list)


def recover_expired(
    leases: ExpiredLeases, state: Done, clients: ClientCache, publish: Publish
) -> Recovered:
    """One pass: claim every expired lease, revoke its scan's identity, run it again."""
    out = Recovered()
    for context in leases.lease_contexts():
        for scan_id, rerun in leases.claim_expired(context):
            run_id = rerun.get("run_id")
            raw = rerun.get("target")
            if not isinstance(run_id, str) or not isinstance(raw, dict):
                continue  # a lease taken without a rerun record: nothing to re-run
            target = Target.from_dict(raw)
            if state.is_done(run_id, scan_id):
                out.already_done.append(scan_id)
                continue
            if not _revoke(clients, target, scan_id):
                out.revoke_failed.append(scan_id)
            publish(run_id, target.to_dict())
            out.rerun.append(scan_id)
            log.warning(
                "scan.recovered",
                run_id=run_id,
                scan_id=scan_id,
                context=context,
                namespace=target.namespace,
                pod=target.pod,
                container=target.container,
            )
    return out


def _revoke(clients: ClientCache, target: Target, scan_id: str) -> bool:
    """Delete the dead scan's ServiceAccount if it is scanfleet's shape (identity.not_ours),
    with a UID precondition; the garbage collector removes the Role and RoleBinding it owns.
    A failure is logged: the janitor's job then, and the re-run's mint replaces it."""
    name = object_name(scan_id)
    try:
        kube = clients.get(target.context)
        obj = kube.read_object("ServiceAccount", target.namespace, name)
        if obj is None:
            return True  # the dead scan never created it, or its own revoke had run
        why = not_ours(obj | {"kind": "ServiceAccount"})
        if why is not None:
            log.error("recovery.not_ours", scan_id=scan_id, object=name, reason=why)
            return False
        return (
            revoke(kube, target.namespace, name, uids={"ServiceAccount": obj["uid"]}) == "complete"
        )
    except ScanfleetError as e:
        log.error("recovery.revoke_failed", scan_id=scan_id, context=target.context, error=str(e))
        return False


class Watcher:
    """A daemon thread running `check` every `interval` seconds until `stop()`.

    Every exception of a pass is logged and the next pass runs on time: a Redis restart
    or an unreachable cluster must not end recovery for the worker's lifetime."""

    def __init__(
        self, check: Callable[[], object], interval: float, name: str = "scanfleet-recovery"
    ) -> None:
        self.check = check
        self.interval = max(0.5, interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as e:  # keep watching: the next pass retries
                log.warning("recovery.pass_failed", error=f"{type(e).__name__}: {e}"[:300])
