"""Ctrl-C ends `status --watch` with 130 and one line wherever it lands, also before the
first look (CI caught the SIGINT of tests/fleet/test_status_watch.py landing while the
watch still connected to Redis: click turned it into "Aborted!" and exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import scanfleet.cli.fleet as _fleet  # noqa: F401  (registers the commands)
import scanfleet.store.client
from scanfleet.cli.common import main_group

RUN_ID = "20250101T000000Z-abcdef"


def _interrupt(*_args: object, **_kwargs: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["connecting", "sleeping"])
def test_ctrl_c_anywhere_in_the_watch_exits_130_quietly(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCANFLEET_RESULTS_DIR", str(tmp_path))
    if where == "connecting":
        monkeypatch.setattr(scanfleet.store.client, "check_reachable", _interrupt)
    else:  # no Redis, but the run's files exist and are not finished: the watch sleeps
        monkeypatch.setenv("SCANFLEET_BROKER_URL", "redis://127.0.0.1:1/0")
        (tmp_path / RUN_ID).mkdir()
        (tmp_path / RUN_ID / "s.json").write_text("{}")
        monkeypatch.setattr("scanfleet.cli.fleet.time.sleep", _interrupt)
    result = CliRunner().invoke(main_group, ["status", RUN_ID, "--watch"])
    assert result.exit_code == 130, result.output
    assert f"stopped watching run {RUN_ID} (it goes on)" in result.stderr
    assert "Aborted" not in result.output
