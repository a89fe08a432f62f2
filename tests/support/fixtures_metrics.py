"""Helpers for metrics tests: scrape /metrics, parse it, check it with promtool.

`promtool` comes from Debian's `prometheus` package. Locally a missing promtool skips the
check with a reason; in CI (`CI=true`) it fails the test, so the check cannot silently
disappear.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from collections import defaultdict

import pytest
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is missing (install Debian's `prometheus` package)")
        pytest.skip("promtool is not installed (Debian package `prometheus`)")
    return found


def check_metrics(text: str) -> None:
    """`promtool check metrics` on one scrape: exposition format and naming lint."""
    proc = subprocess.run(
        [promtool(), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        body: bytes = resp.read()
    return body.decode()


def samples(text: str) -> dict[str, dict[Labels, float]]:
    """{sample name: {sorted label pairs: value}}."""
    out: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get(name, {}).get(tuple(sorted(labels.items())))
