"""Sweep ticks sent to a real broker and the runs they start; shared by the fleet tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from celery import Celery

from scanfleet.worker.app import QUEUE, SWEEP_TICK_TASK


def send_tick(redis_url: str, sweep: dict[str, Any]) -> None:
    client = Celery("test-client", broker=redis_url)
    client.conf.task_serializer = "json"
    try:
        client.send_task(SWEEP_TICK_TASK, args=[sweep["name"], sweep], queue=QUEUE)
    finally:
        client.close()


def runs_of(results: Path, source: str) -> list[dict[str, Any]]:
    found = []
    for run_json in sorted(results.glob("*/run.json")):
        run = json.loads(run_json.read_text())
        if run["source"] == source:
            found.append(run)
    return found
