"""Settings: read from the environment (a mapping here), bad values named, exit 2."""

from __future__ import annotations

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.settings import MINT_MARGIN, Settings, check_ttl


def test_token_ttl_bounds() -> None:
    check_ttl(3600, 1800)
    check_ttl(900, 900 - MINT_MARGIN)  # exactly the margin is enough
    for ttl, timeout, needle in [
        (599, 100, "599"),
        (86401, 100, "86401"),
        (900, 900, "exceed"),
        (
            900,
            800,
            r"TTL 900s must exceed the scan timeout 800s by "
            r"at least 120s",
        ),
    ]:
        with pytest.raises(BadInput, match=needle):
            check_ttl(ttl, timeout)


def test_settings_from_env_rejects_bad_values() -> None:
    s = Settings.from_env({"SCANFLEET_CLUSTER_CONCURRENCY": "3", "SCANFLEET_LOG_FORMAT": "console"})
    assert (s.cluster_concurrency, s.log_format) == (3, "console")
    with pytest.raises(BadInput, match="SCANFLEET_CLUSTER_CONCURRENCY='x'"):
        Settings.from_env({"SCANFLEET_CLUSTER_CONCURRENCY": "x"})
    with pytest.raises(BadInput, match="SCANFLEET_LOG_FORMAT='xml'"):
        Settings.from_env({"SCANFLEET_LOG_FORMAT": "xml"})


def test_the_retry_delay_scale_is_read_and_checked() -> None:
    assert Settings.from_env({"SCANFLEET_RETRY_DELAY_SCALE": "0.01"}).retry_delay_scale == 0.01
    assert Settings.from_env({}).retry_delay_scale == 1.0
    for bad in ("0", "-1", "fast", "inf"):
        with pytest.raises(BadInput, match="SCANFLEET_RETRY_DELAY_SCALE"):
            Settings.from_env({"SCANFLEET_RETRY_DELAY_SCALE": bad})
