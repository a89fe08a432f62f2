"""The tests' own tool lookup (tests/support/tools.py): a missing tool or optional module fails
under CI=true instead of skipping, and kubectl is found in the venv without PATH."""

from __future__ import annotations

import pytest

from tests.support.tools import VENV_BIN, find_tool, require_module, require_tool


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_module_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="scanfleet_no_such_module"):
        require_module("scanfleet_no_such_module", "nowhere")
    assert require_module("yaml", "pip") is not None


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_missing_tool_fails_in_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="scanfleet-no-such-tool"):
        require_tool("scanfleet-no-such-tool")


def test_kubectl_is_found_in_the_venv_without_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    assert find_tool("kubectl") == str(VENV_BIN / "kubectl")
    assert require_tool("kubectl") == str(VENV_BIN / "kubectl")
