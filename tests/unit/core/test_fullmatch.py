"""Every validation regex matches the whole value: a trailing newline is refused."""

from __future__ import annotations

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.targets import check_label, check_selector, check_subdomain
from scanfleet.store.files import check_run_id


@pytest.mark.parametrize("value", ["web\n", "web\n\n", "\nweb", "we\nb"])
def test_labels_with_a_newline_are_refused(value: str) -> None:
    with pytest.raises(BadInput):
        check_label(value, "pod")
    with pytest.raises(BadInput):
        check_subdomain(value, "pod")


def test_valid_names_still_pass() -> None:
    assert check_label("web-1", "pod") == "web-1"
    assert check_subdomain("a.b-c", "pod") == "a.b-c"
    check_run_id("20260301T101500Z-a1b2c3")
    assert check_selector("app=web,tier in (a, b)") == "app=web,tier in (a, b)"


def test_run_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(BadInput):
        check_run_id("20260301T101500Z-a1b2c3\n")


def test_selector_names_with_a_newline_are_refused() -> None:
    # Whitespace around requirements (newlines included) is the API server's own rule.
    for bad in ("app=we\nb", "ap\np=web"):
        with pytest.raises(BadInput):
            check_selector(bad)
