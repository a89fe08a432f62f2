"""The redaction processor drops credentials whatever key they arrive under."""

from __future__ import annotations

import json

import pytest
import structlog

from scanfleet.core import logs

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJl"


@pytest.fixture(autouse=True)
def _reset_structlog() -> object:
    yield
    structlog.reset_defaults()


def test_secret_keys_and_secret_shaped_values_are_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    log = structlog.get_logger("t")
    log.info(
        "x",
        token=JWT,
        Authorization=f"Bearer {JWT}",
        innocent=f"the value {JWT} hides here",
        nested={"kubeconfig": "users: [{user: {token: abc}}]", "ok": 1},
        listed=[f"Bearer {JWT}"],
        yaml_text="token: abcdef123",
        scan_id="0123456789abcdef",
    )
    out = capsys.readouterr().err
    line = json.loads(out.strip().splitlines()[-1])
    assert JWT not in out
    assert "abcdef123" not in out
    assert line["token"] == logs.REDACTED
    assert line["Authorization"] == logs.REDACTED
    assert line["nested"] == {"kubeconfig": logs.REDACTED, "ok": 1}
    assert line["scan_id"] == "0123456789abcdef"
    assert "hides here" in line["innocent"]


def test_exception_text_is_scrubbed(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    try:
        raise RuntimeError(f"request failed with header Bearer {JWT}")
    except RuntimeError:
        structlog.get_logger("t").exception("boom")
    assert JWT not in capsys.readouterr().err


def test_console_format_is_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("console")
    structlog.get_logger("t").warning("x", detail=JWT)
    err = capsys.readouterr().err
    assert "x" in err
    assert JWT not in err


def test_a_live_secret_of_any_shape_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("json")
    opaque = "s3cr3t-opaque-token-value"
    with logs.secret(opaque):
        structlog.get_logger("t").info("x", detail=f"saw {opaque} in output")
        assert logs.redact_text(f"a {opaque} b") == f"a {logs.REDACTED} b"
    assert opaque not in capsys.readouterr().err
    # Once the credential is gone, ordinary text is left alone.
    assert logs.redact_text(opaque) == opaque
