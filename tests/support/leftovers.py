"""The leftover check: a test must not leave scanfleet RBAC objects or immortal Redis keys.

Owns the rule used at teardown by `make_cluster` (fixtures_kube), `make_redis`
(fixtures_fleet) and `ops_redis` (fixtures_ops): every ServiceAccount/Role/RoleBinding
labelled managed-by scanfleet must be gone from each fake cluster, and every Redis key under
the scanfleet prefix must carry a TTL (retention bounds them; a key without one outlives
every run). A test that leaves them on purpose says so with
`@pytest.mark.leaves_leftovers("why")`. Never deletes anything: it only reports.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

MARKER = "leaves_leftovers"
PREFIXES = ("scanfleet", "sftest", "sf")  # the default and the tests' SCANFLEET_KEY_PREFIX


def allowed(request: pytest.FixtureRequest) -> bool:
    return request.node.get_closest_marker(MARKER) is not None


def rbac_left(clusters: Iterable[Any]) -> list[str]:
    return [
        f"{c.name}: {o['kind']} {o['metadata'].get('namespace')}/{o['metadata']['name']}"
        for c in clusters
        for o in c.scanfleet_objects()
    ]


def immortal_keys(client: Any, prefixes: Iterable[str]) -> list[str]:
    out: list[str] = []
    for prefix in prefixes:
        for key in client.scan_iter(match=f"{prefix}:*", count=500):
            name = key.decode() if isinstance(key, bytes) else key
            if client.ttl(name) == -1:
                out.append(name)
    return sorted(out)


def fail_on(request: pytest.FixtureRequest, what: str, found: list[str]) -> None:
    if found and not allowed(request):
        shown = "\n  ".join(found[:20])
        pytest.fail(
            f"the test left {what} behind (mark it {MARKER} if on purpose):\n  {shown}",
            pytrace=False,
        )
