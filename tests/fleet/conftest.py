"""Every test here starts real redis-server and `scanfleet worker` processes: marked slow."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/fleet/" in str(item.path):
            item.add_marker(pytest.mark.slow)
