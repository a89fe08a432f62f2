"""Profile URLs are compared in RFC 3986 normal form, and a URL that could walk out of its
allow-list prefix on the server is refused before any request (policy.canonical_url).

The attack (issue 17): with the allowed prefix `https://bot:TOKEN@github.com/myorg/`, the
URLs `.../myorg/../evilorg/p.tar.gz` and `.../myorg/%2e%2e/evilorg/p.tar.gz` were allowed, and
the download carried the bot's Basic credentials to another organisation's repository.
Every test that could send a request points at a real HTTP server that records them
(tests/support/profile_server.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scanfleet.core.errors import ProfileUnavailable
from scanfleet.core.policy import (
    PolicyViolation,
    canonical_url,
    check_profile,
    credentialed,
    safe_url,
)
from scanfleet.profiles.download import Limits, download
from tests.support.fixtures_fleet import run_cli
from tests.support.profile_server import ProfileServer, profile_archive

TOKEN = "ghp_T0kenThatMustNotTravel"
WALKS = [
    "/myorg/../evilorg/p.tar.gz",
    "/myorg/%2e%2e/evilorg/p.tar.gz",
    "/myorg/%2E%2E/evilorg/p.tar.gz",
    "/myorg/./../evilorg/p.tar.gz",
    "/myorg/..%2fevilorg/p.tar.gz",
    "/myorg/%2e./evilorg/p.tar.gz",
    "/myorg/..%5cevilorg/p.tar.gz",
    "/myorg/..\\evilorg/p.tar.gz",
    "/myorg\\..\\evilorg/p.tar.gz",
    "/myorg/..;/evilorg/p.tar.gz",
    "/myorg/.%09./evilorg/p.tar.gz".replace("%09", "\t"),
]


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://GitHub.COM/myorg/p.tar.gz", "https://github.com/myorg/p.tar.gz"),
        ("https://github.com:443/myorg/p.tar.gz", "https://github.com/myorg/p.tar.gz"),
        ("http://h.example:80/a", "http://h.example/a"),
        ("http://h.example:8080/a", "http://h.example:8080/a"),
        ("https://github.com/%6D%79org/p%2Dq.tar.gz", "https://github.com/myorg/p-q.tar.gz"),
        ("https://github.com/myorg/a%3ab%20c", "https://github.com/myorg/a%3Ab%20c"),
        ("https://h.example", "https://h.example/"),
        ("https://bot:TOK@H.example:443/x?q=%2e", "https://bot:TOK@h.example/x?q=%2e"),
        ("https://[::1]:443/x", "https://[::1]/x"),
    ],
)
def test_urls_are_compared_in_rfc_3986_normal_form(url: str, canonical: str) -> None:
    assert canonical_url(url) == canonical


def test_equivalent_spellings_match_the_prefix_and_get_its_credentials() -> None:
    allowed = (f"https://bot:{TOKEN}@GitHub.com:443/myorg/",)
    for url in (
        "https://github.com/myorg/p.tar.gz",
        "HTTPS://GITHUB.COM/myorg/p.tar.gz",
        "https://github.com:443/%6Dyorg/p.tar.gz",
    ):
        assert check_profile(url, allowed) == "https://github.com/myorg/p.tar.gz"
        assert credentialed(url, allowed) == f"https://bot:{TOKEN}@github.com/myorg/p.tar.gz"
    for other in ("https://github.com/MyOrg/p.tar.gz", "https://github.com:444/myorg/p"):
        with pytest.raises(PolicyViolation):
            check_profile(other, allowed)


@pytest.mark.parametrize("path", WALKS)
def test_a_url_that_could_walk_out_of_its_prefix_is_refused(path: str) -> None:
    allowed = (f"https://bot:{TOKEN}@github.com/myorg/", "https://")
    for userinfo in ("", f"bot:{TOKEN}@"):
        url = f"https://{userinfo}github.com{path}"
        with pytest.raises(PolicyViolation) as info:
            check_profile(url, allowed)
        message = str(info.value)
        assert TOKEN not in message
        assert "github.com/myorg" in message
        assert "\n" not in message
        assert credentialed(url, allowed) is None


def test_messages_mask_credentials_even_of_unparseable_urls() -> None:
    for url in (f"https://bot:{TOKEN}@h.example:port/x", f"https://bot:{TOKEN}@h\\@evil/x"):
        with pytest.raises(PolicyViolation) as info:
            check_profile(url, ("https://",))
        assert TOKEN not in str(info.value)
        assert TOKEN not in safe_url(url)


@pytest.fixture
def server() -> Iterator[ProfileServer]:
    with ProfileServer() as srv:
        archive = profile_archive({"inspec.yml": "name: p\n"})
        for path in ("/myorg/p.tar.gz", "/evilorg/p.tar.gz", *WALKS):
            srv.routes[path] = archive
        yield srv


@pytest.mark.parametrize("path", WALKS[:3])
def test_download_refuses_a_walking_url_before_any_request(
    server: ProfileServer, tmp_path: Path, path: str
) -> None:
    with pytest.raises(ProfileUnavailable) as info:
        download(server.url(path, userinfo=f"bot:{TOKEN}"), tmp_path / "p", Limits())
    assert TOKEN not in str(info.value)
    assert not server.hits
    assert not (tmp_path / "p").exists()


def _kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    cluster = {"server": "https://127.0.0.1:1"}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


@pytest.mark.parametrize("command", ["scan", "submit"])
@pytest.mark.parametrize("path", ["/myorg/../evilorg/p.tar.gz", "/myorg/%2e%2e/evilorg/p.tar.gz"])
@pytest.mark.parametrize("with_credentials", [False, True])
def test_scan_and_submit_refuse_both_forms_with_exit_2_and_send_nothing(
    server: ProfileServer, tmp_path: Path, command: str, path: str, with_credentials: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
    env.update(
        {
            "SCANFLEET_ALLOWED_PROFILES": server.url("/myorg/", userinfo=f"bot:{TOKEN}"),
            "SCANFLEET_RESULTS_DIR": str(tmp_path / "results"),
            "SCANFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
            "SCANFLEET_PROFILE_CACHE": str(tmp_path / "cache"),
            "KUBECONFIG": _kubeconfig(tmp_path),
        }
    )
    url = server.url(path, userinfo=f"bot:{TOKEN}" if with_credentials else "")
    local = ["--local"] if command == "submit" else []
    proc = run_cli([command, "ns/pod/c", *local, "--profile", url], env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert server.url(path) in proc.stderr  # the URL, named without its credentials
    assert TOKEN not in proc.stderr + proc.stdout
    assert not server.hits, "a request reached the profile server"
    assert not (tmp_path / "results").exists()


def test_the_same_setup_sends_the_credential_to_an_allowed_url(
    server: ProfileServer, tmp_path: Path, admin_kubeconfig: Path, standin_auditor: str
) -> None:
    """The control for the test above: the setup does reach the server when it should (a
    reachable cluster and an auditor, so the fail-fast checks pass and the download runs;
    the target does not exist, so nothing is scanned)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
    env.update(
        {
            "SCANFLEET_ALLOWED_PROFILES": server.url("/myorg/", userinfo=f"bot:{TOKEN}"),
            "SCANFLEET_RESULTS_DIR": str(tmp_path / "results"),
            "SCANFLEET_PROFILE_CACHE": str(tmp_path / "cache"),
            "SCANFLEET_AUDITOR": standin_auditor,
            "KUBECONFIG": str(admin_kubeconfig),
        }
    )
    url = server.url("/myorg/p.tar.gz", userinfo=f"bot:{TOKEN}")
    proc = run_cli(["scan", "nowhere/pod/c", "--profile", url, "--timeout", "5"], env)
    assert proc.returncode != 0  # no such pod; the download came first
    assert server.hits["/myorg/p.tar.gz"] == 1
    assert server.auth["/myorg/p.tar.gz"][0] is not None
    assert TOKEN not in proc.stderr + proc.stdout
