"""What the recovery tests share: a run and target of the unit tests, a recorder of
re-published scans, a recorded-results stand-in and the scan identity to revoke
(tests/unit/runs), and the CLI and stand-in log helpers of the fleet tests (tests/fleet)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scanfleet.core.targets import Target
from scanfleet.identity.mint import identity_objects, object_name
from scanfleet.kube.client import ClientCache
from scanfleet.testing.fakekube import FakeCluster
from tests.support.fixtures_fleet import run_cli

RUN = "20250101T000000Z-abcdef"
TARGET = {"context": "fake", "namespace": "apps", "pod": "web", "container": "app"}
RERUN = {"run_id": RUN, "target": TARGET}


class Published(list[tuple[str, dict[str, Any]]]):
    def __call__(self, run_id: str, target: Mapping[str, Any]) -> None:
        self.append((run_id, dict(target)))


class Done:
    def __init__(self, *done: str) -> None:
        self.done = set(done)

    def is_done(self, run_id: str, scan_id: str) -> bool:
        return scan_id in self.done


def identity_of(cluster: FakeCluster, scan_id: str) -> list[str]:
    return [
        o["metadata"]["name"]
        for o in cluster.objects("serviceaccounts", "apps")
        if o["metadata"]["name"] == object_name(scan_id)
    ]


def mint_service_account(clients: ClientCache, scan_id: str, **changes: Any) -> None:
    """The ServiceAccount a scan creates first (identity.identity_objects), or a decoy."""
    body = identity_objects(scan_id, RUN, Target.from_dict(TARGET), 900, datetime.now(UTC))[
        "ServiceAccount"
    ]
    clients.get("fake").create_object("ServiceAccount", "apps", body | changes)


def submit(env: dict[str, str], *args: str) -> str:
    proc = run_cli(["submit", *args, "--profile", "p", "--json"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(json.loads(proc.stdout)["run_id"])  # --json: one document


def run_doc(env: dict[str, str], run_id: str) -> dict[str, Any] | None:
    path = Path(env["SCANFLEET_RESULTS_DIR"]) / run_id / "run.json"
    return json.loads(path.read_text()) if path.is_file() else None


def audits(log: Path) -> list[dict[str, Any]]:
    """The stand-in's log: one line per auditor run that ended (a SIGKILLed one has none)."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def per_target(log: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in audits(log):
        t = a["target"]
        key = f"{t['namespace']}/{t['pod']}/{t['container']}"
        out[key] = out.get(key, 0) + 1
    return out
