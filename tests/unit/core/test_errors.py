"""The error tree: every leaf says its kind and whether it is retryable."""

from __future__ import annotations

import pytest

from scanfleet.core import errors
from scanfleet.core.errors import ErrorKind, ScanError, ScanfleetError


def _leaves(cls: type[ScanfleetError]) -> list[type[ScanfleetError]]:
    subs = cls.__subclasses__()
    return [cls] if not subs else [leaf for s in subs for leaf in _leaves(s)]


def test_every_scan_error_leaf_has_a_result_kind() -> None:
    kinds = {leaf.kind for leaf in _leaves(ScanError)}
    assert kinds == set(ErrorKind)
    assert errors.ClusterUnavailable.retryable
    assert not errors.ClusterApiError.retryable


def test_fleet_conditions_are_retryable_and_not_scan_errors() -> None:
    for leaf in _leaves(errors.FleetBusy):
        assert leaf.retryable
        assert not issubclass(leaf, ScanError)
    assert {leaf.kind for leaf in _leaves(errors.FleetBusy)} == {"store_unavailable", "slot_busy"}


def test_a_bare_scan_error_cannot_be_raised() -> None:
    with pytest.raises(TypeError):
        ScanError("which kind?")
    assert errors.TargetNotFound("x").kind == "target_not_found"
