"""A run's pinned profile digest, kept in its plan in Redis: the first writer wins.

    record_profile_digest(store, run_id, sha256) -> the run's digest

A fleet worker that fetched a URL profile calls this with the sha256 of the archive it
would give the auditor. If the plan (`<prefix>:run:<run_id>:plan`) has no `profile_sha256`
yet, this one is written into it. Either way the plan's digest is returned, and a worker
whose bytes differ refuses to scan (profiles.pinned). The read-modify-write is one
optimistic transaction (WATCH the plan, then MULTI/EXEC, retried if another writer got in
between), so two racing workers cannot both win. The plan keeps its TTL.

Never stores anything but the hex digest; a URL's credentials are never in the plan.
"""

from __future__ import annotations

import json
import re
from typing import Any, cast

from redis.client import Pipeline

from scanfleet.store.client import guarded
from scanfleet.store.state import RunStore

_SHA256 = re.compile(r"[0-9a-f]{64}")


def record_profile_digest(store: RunStore, run_id: str, sha256: str) -> str:
    """Record `sha256` as the run's profile digest unless one is there; the run's digest."""
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    key = store.key(run_id, "plan")

    def txn(pipe: Pipeline) -> str:
        raw = pipe.get(key)
        if raw is None:  # the run expired under us: nothing left to pin against
            return sha256
        plan = cast(dict[str, Any], json.loads(cast(str, raw)))
        current = plan.get("profile_sha256")
        if isinstance(current, str) and _SHA256.fullmatch(current):
            return current
        plan["profile_sha256"] = sha256
        pipe.multi()
        pipe.set(key, json.dumps(plan), keepttl=True)
        return sha256

    with guarded("recording the profile digest"):
        # redis-py's stub types the callable as returning None; value_from_callable returns
        # what it returns.
        return cast(str, store.r.transaction(txn, key, value_from_callable=True))  # type: ignore[arg-type]
