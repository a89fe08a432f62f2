"""Redaction by value and by shape, in structlog and stdlib logging (Celery, kombu,
urllib3), and sanitized auditor stderr."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from scanfleet.core import logs
from scanfleet.core.textsafe import strip_controls

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretkeymaterial\n"
    "-----END RSA PRIVATE KEY-----"
)


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    structlog.reset_defaults()
    for h in list(root.handlers):
        if h not in before:
            root.removeHandler(h)
    logs._known_secrets.clear()


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"key: {PEM} end", "secretkeymaterial"),
        ("Authorization: Basic dXNlcjpzM2NyZXQ=", "dXNlcjpzM2NyZXQ="),
        ("Authorization: Bearer opaque-tok-123", "opaque-tok-123"),
        ("fetching https://user:s3cret@host.example/p.tar.gz", "s3cret"),
        ("broker rediss://:pa55word@redis:6380/0?ssl_cert_reqs=required", "pa55word"),
        ('{"token": "abc\\"def", "other": 1}', 'abc\\"def'),
        ('{"admin_password":"hunter22"}', "hunter22"),
        ("password: hunter22\nuser: x", "hunter22"),
        ("client-key-data: LS0tLS1CRUdJTi", "LS0tLS1CRUdJTi"),
        ("--password=hunter22", "hunter22"),
    ],
)
def test_secret_shapes_are_redacted(text: str, secret: str) -> None:
    out = logs.redact_text(text)
    assert secret not in out
    assert logs.REDACTED in out


def test_shapes_keep_what_is_not_a_secret() -> None:
    for text in (
        '{"token_ttl": 3600}',
        "scan of https://host.example/p.tar.gz",
        "kubeconfig_path=/tmp/k",
        "Basic",
    ):
        assert logs.redact_text(text) == text
    assert logs.redact_text("https://user:pw@h/p") == f"https://{logs.REDACTED}@h/p"


def test_remembered_values_are_redacted_for_the_process_life() -> None:
    logs.remember_url("redis://scanfleet:opaque%2Fpass@redis:6379/0")
    logs.remember("admin-opaque-token", None, "ab")
    text = "saw opaque/pass and opaque%2Fpass and admin-opaque-token; ab stays"
    out = logs.redact_text(text)
    assert "opaque/pass" not in out
    assert "opaque%2Fpass" not in out
    assert "admin-opaque-token" not in out
    assert "ab stays" in out  # too short to redact by value


def test_stdlib_logging_is_redacted() -> None:
    stream = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(stream))
    logs.configure("json")
    logs.remember("broker-pass-value")
    logging.getLogger("celery.worker").warning(
        "connect to redis://:%s@h:6379 failed, Bearer %s", "broker-pass-value", "tok-abcdefgh"
    )
    try:
        raise RuntimeError(f"key {PEM}")
    except RuntimeError:
        logging.getLogger("kombu").exception("boom")
    err = stream.getvalue()
    assert "failed" in err
    assert "boom" in err
    for s in ("broker-pass-value", "tok-abcdefgh", "secretkeymaterial"):
        assert s not in err


def test_handlers_added_later_are_scrubbed_once_installed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    extra = logging.StreamHandler()
    logging.getLogger().addHandler(extra)
    logs.install_stdlib_redaction()
    logs.install_stdlib_redaction()  # idempotent: not wrapped twice
    assert isinstance(extra.formatter, logs.RedactingFormatter)
    assert not isinstance(extra.formatter.inner, logs.RedactingFormatter)


def test_structlog_lines_carry_no_url_or_json_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    structlog.get_logger("t").info(
        "x", profile="https://user:s3cret@host/p.tar.gz", body='{"password": "hunter22"}'
    )
    err = capsys.readouterr().err
    line = json.loads(err.strip().splitlines()[-1])
    assert "s3cret" not in err
    assert "hunter22" not in err
    assert line["profile"] == f"https://{logs.REDACTED}@host/p.tar.gz"


def test_strip_controls_removes_escapes_c1_and_bidi() -> None:
    hostile = (
        "\x1b[31mred\x1b[0m \x1b]8;;https://evil\x07link\x1b]8;;\x07 "
        "\x1b]0;title\x1b\\ \x9b2J c1\x85 bidi\u202eevil\u2066x\u2069 nul\x00 ok\tend\r\n"
    )
    out = strip_controls(hostile)
    assert out == "red link   c1 bidievilx nul ok\tend\n"
    assert strip_controls("a\nb", keep_newlines=False) == "a b"


def test_error_results_carry_no_credentials() -> None:
    from datetime import UTC, datetime

    from scanfleet.core.targets import Target
    from scanfleet.runs.pipeline import error_result

    summary = error_result(
        "20260301T101500Z-a1b2c3",
        Target("c", "ns", "p", "c"),
        {"kind": "api_error", "message": "GET https://u:hunter22@h/ failed: Bearer abcdef123"},
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert summary["error"] is not None
    assert "hunter22" not in summary["error"]["message"]
    assert "abcdef123" not in summary["error"]["message"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('token: "abc123"', "abc123"),
        ("password: 'x'", "'x'"),
        ('secret = "s p a c e d"', "s p a c e d"),
        ("'api_key': 'k-123456'", "k-123456"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCY", "wJalrXUtnFEMI"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI"),
        ('{"SecretAccessKey": "wJalrXUtnFEMI", "AccessKeyId": "AKIA1"}', "wJalrXUtnFEMI"),
        ("aws_session_token = FwoGZXIvYXdzEJr", "FwoGZXIvYXdzEJr"),
        ("AZURE_CLIENT_SECRET=Q~8abc.def_ghi", "Q~8abc.def_ghi"),
        ('client_secret: "Q~8abc.def"', "Q~8abc.def"),
        ("DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0==;", "c2VjcmV0=="),
        ('"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEv\\n-----END', "MIIEv"),
        ('"private_key_id": "0123456789abcdef"', "0123456789abcdef"),
    ],
)
def test_quoted_values_and_cloud_secret_names_are_redacted(text: str, secret: str) -> None:
    out = logs.redact_text(text)
    assert secret not in out, out
    assert logs.REDACTED in out


@pytest.mark.parametrize("split", ["\x1b[0m", "\x1b[31;1m", "\x00", "\x07", "\x1b]0;x\x07"])
def test_a_secret_split_by_an_escape_or_control_character_is_found_whole(split: str) -> None:
    logs.remember("opaque-admin-token-42")
    for text in (
        f"token: abc{split}123456",
        f'password: "hun{split}ter22"',
        f"using opaque-admin{split}-token-42 now",
        f"Authorization: Bear{split}er abcdefgh123",
    ):
        out = logs.redact_text(text)
        for piece in ("123456", "hunter22", "ter22", "opaque-admin", "abcdefgh123"):
            assert piece not in out, (text, out)
        assert split not in out


def test_cloud_names_keep_what_is_not_a_secret() -> None:
    for text in (
        "token_ttl=3600",
        "aws_region = eu-west-1",
        "AccessKeyId: AKIAEXAMPLE",
        "secrets mounted at /var/run/secrets",
    ):
        assert logs.redact_text(text) == text


def test_structlog_fields_named_after_cloud_secrets_are_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("json")
    structlog.get_logger("t").info(
        "x",
        private_key="k-material-1",
        aws_access_key="k-material-2",
        storage_account_key="k-material-3",
        note="token: ab\x1b[0mcdef99",
    )
    err = capsys.readouterr().err
    for piece in ("k-material-1", "k-material-2", "k-material-3", "cdef99"):
        assert piece not in err
