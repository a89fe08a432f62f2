"""Workers trust nothing executable from Redis (policy.py): profile and auditor-argument
allow-lists at submit (exit 2), and a worker refusing a plan edited in Redis."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.policy import (
    DEFAULT_ALLOWED_PROFILES,
    PolicyViolation,
    check_auditor_args,
    check_profile,
    credentialed,
    parse_allowed_profiles,
    safe_url,
)
from scanfleet.core.settings import Settings
from scanfleet.store.files import iter_summaries
from tests.support.fixtures_fleet import KEY_PREFIX, RedisServer, Worker, run_cli, wait_for


@pytest.mark.parametrize(
    "args",
    [
        ["--controls", "SV-1", "SV-2"],
        ["--tags", "a"],
        ["--input", "x=1", "y=2"],
        ["--input-file", "/tmp/i.yml"],
        ["--waiver-file=/tmp/w.yml"],
        ["--no-color"],
        ["--controls=SV-1", "--tags", "t1"],
        [],
    ],
)
def test_allowed_auditor_args_pass(args: list[str]) -> None:
    check_auditor_args(args)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["-t", "local://"], "-t"),
        (["--target=local://"], "--target=local://"),
        (["--reporter", "json:/tmp/x"], "--reporter"),
        (["--config", "c.json"], "--config"),
        (["--bastion-host", "h"], "--bastion-host"),
        (["--sudo"], "--sudo"),
        (["--sudo-password=x"], "--sudo-password=x"),
        (["--password", "p"], "--password"),
        (["--key-files", "k"], "--key-files"),
        (["--proxy-command", "sh"], "--proxy-command"),
        (["--host", "h"], "--host"),
        (["--log-location", "/tmp/l"], "--log-location"),
        (["--no-color", "stray"], "stray"),
        (["--no-color=x"], "--no-color=x"),
        (["--controls", "a\n"], "a\\n"),
        (["-h"], "-h"),
    ],
)
def test_refused_auditor_args_name_the_value(args: list[str], named: str) -> None:
    with pytest.raises(PolicyViolation, match=named.replace("\\", "\\\\")):
        check_auditor_args(args)


def test_default_profile_allow_list_takes_local_paths_and_https_only() -> None:
    for ok in (
        "/srv/profiles/linux",
        "relative/profile",
        "https://github.com/x/p.tar.gz",
        "https://user:pw@h.example/p.tar.gz",
    ):
        check_profile(ok, DEFAULT_ALLOWED_PROFILES)
    for bad in ("http://h.example/p.tar.gz", "git://h/p", "file:///etc", "-t", "p\n", ""):
        with pytest.raises(PolicyViolation):
            check_profile(bad, DEFAULT_ALLOWED_PROFILES)


def test_profile_prefixes_match_on_host_and_path_boundaries(tmp_path: Path) -> None:
    allowed = parse_allowed_profiles(
        f"{tmp_path / 'profiles'}{os.pathsep}https://good.example/org,"
    )
    assert allowed == (str(tmp_path / "profiles"), "https://good.example/org")
    check_profile(str(tmp_path / "profiles" / "p"), allowed)
    check_profile("https://u:pw@good.example/org/p.tar.gz", allowed)
    for bad in (
        str(tmp_path / "profiles-other"),
        str(tmp_path / "profiles" / ".." / "x"),
        "https://good.example.evil/org/p",
        "https://good.example/orgs/p",
        "https://good.example:444/org/p",
    ):
        with pytest.raises(PolicyViolation):
            check_profile(bad, allowed)


def test_profile_symlink_out_of_an_allowed_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PolicyViolation):
        check_profile(str(tmp_path / "profiles" / "link"), (str(tmp_path / "profiles"),))


def test_refusal_messages_never_carry_url_credentials() -> None:
    with pytest.raises(PolicyViolation) as info:
        check_profile("http://user:s3cret@h.example/p", DEFAULT_ALLOWED_PROFILES)
    assert "s3cret" not in str(info.value)
    assert "h.example/p" in str(info.value)
    assert safe_url("https://u:pw@h:8443/p?q=1") == "https://h:8443/p?q=1"


def test_settings_read_the_allow_list() -> None:
    s = Settings.from_env({"SCANFLEET_ALLOWED_PROFILES": "https://a.example/"})
    assert s.allowed_profiles == ("https://a.example/",)
    assert Settings.from_env({}).allowed_profiles == DEFAULT_ALLOWED_PROFILES
    assert issubclass(PolicyViolation, BadInput)


@pytest.mark.parametrize(
    "extra",
    [
        ["--auditor-arg=-t", "--auditor-arg=local://"],
        ["--auditor-arg=--reporter", "--auditor-arg=json:/tmp/x"],
    ],
)
@pytest.mark.parametrize("command", ["scan", "submit"])
def test_scan_and_submit_refuse_bad_arguments_with_exit_2(
    command: str, extra: list[str], tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
    env.update(
        {
            "SCANFLEET_RESULTS_DIR": str(tmp_path / "r"),
            "SCANFLEET_BROKER_URL": "redis://127.0.0.1:1/0",
            "KUBECONFIG": _kubeconfig(tmp_path),
        }
    )
    proc = run_cli([command, "ns/pod/c", "--profile", "/p", *extra], env)
    assert proc.returncode == 2, proc.stderr
    assert extra[0].split("=", 1)[1] in proc.stderr
    assert not (tmp_path / "r").exists()


def test_scan_refuses_a_profile_off_the_allow_list_with_exit_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFLEET_")}
    env.update(
        {
            "SCANFLEET_ALLOWED_PROFILES": "https://profiles.example/",
            "KUBECONFIG": _kubeconfig(tmp_path),
        }
    )
    proc = run_cli(["scan", "ns/pod/c", "--profile", "https://u:pw@evil.example/p"], env)
    assert proc.returncode == 2
    assert "evil.example/p" in proc.stderr
    assert "pw@" not in proc.stderr


def _kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return str(path)


def _submit(env: dict[str, str], profile: str) -> str:
    proc = run_cli(["submit", "--context", "east", "apps/api/app", "--profile", profile], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.splitlines()[0].strip()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_worker_refuses_plans_edited_in_redis(
    fleet_env: dict[str, str],
    redis_server: RedisServer,
    make_worker: Callable[..., Worker],
    tmp_path: Path,
    standin_io: Path,
) -> None:
    profiles = tmp_path / "profiles"
    marker = tmp_path / "evil-ran"
    evil = tmp_path / "evil-auditor"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    evil.chmod(stat.S_IRWXU)
    standin_log = standin_io / "standin.jsonl"  # the sandboxed stand-in writes only there
    env = {
        **fleet_env,
        "SCANFLEET_ALLOWED_PROFILES": str(profiles),
        "SCANFLEET_STANDIN_LOG": str(standin_log),
    }
    r = redis_server.client()

    def key(run_id: str, part: str) -> str:
        return f"{KEY_PREFIX}:run:{run_id}:{part}"

    def edit_plan(run_id: str, **changes: object) -> None:
        plan = json.loads(r.get(key(run_id, "plan")) or "{}")
        r.set(key(run_id, "plan"), json.dumps({**plan, **changes}), keepttl=True)

    # Queued with no worker running, edited in Redis, then a worker starts.
    exe_run = _submit(env, str(profiles / "p"))
    edit_plan(exe_run, auditor=str(evil))
    elsewhere = tmp_path / "elsewhere"
    dir_run = _submit(env, str(profiles / "p"))
    r.hset(key(dir_run, "meta"), "results_dir", str(elsewhere))
    arg_run = _submit(env, str(profiles / "p"))
    edit_plan(arg_run, extra_args=["-t", "local://"])
    prof_run = _submit(env, str(profiles / "p"))
    edit_plan(prof_run, profile="/etc/evil-profile")
    make_worker(env, concurrency=2)
    runs = (exe_run, dir_run, arg_run, prof_run)
    wait_for(lambda: all(r.exists(key(x, "result")) for x in runs), 60, "runs to finish")

    assert not marker.exists(), "an executable named by the plan ran"
    assert not elsewhere.exists()
    ran = standin_log.read_text().splitlines() if standin_log.exists() else []
    # Four runs of one target each: the worker's own auditor ran once, for exe_run only.
    assert len(ran) == 1, ran
    results = Path(env["SCANFLEET_RESULTS_DIR"])
    (exe_summary,) = iter_summaries(results / exe_run)
    assert exe_summary["status"] == "completed"
    for run_id, named in (
        (dir_run, str(elsewhere)),
        (arg_run, "'-t'"),
        (prof_run, "/etc/evil-profile"),
    ):
        (summary,) = iter_summaries(results / run_id)
        assert summary["status"] == "error"
        assert summary["error"]["kind"] == "rejected"
        assert named in summary["error"]["message"]
        shown = run_cli(["status", run_id], env)
        assert "[rejected]" in shown.stdout
        assert named in shown.stdout


def test_profile_credentials_stay_out_of_the_serialised_plan(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from scanfleet.scan.plan import RunPlan

    url = "https://user:s3cret@profiles.example/p.tar.gz"
    plan = RunPlan.new(
        source="submit", profile=url, now=datetime.now(UTC), auditor="a", token_ttl=900, timeout=60
    )
    assert plan.scan_options.profile == url  # in-process runs use the credentials
    stored = json.dumps(plan.to_dict())
    assert "s3cret" not in stored
    assert plan.to_dict()["profile"] == "https://profiles.example/p.tar.gz"
    back = RunPlan.from_dict({**plan.to_dict(), "profile_url": "https://evil.example/x"})
    assert back.scan_options.profile == "https://profiles.example/p.tar.gz"


def test_a_worker_takes_profile_credentials_from_its_own_allow_list() -> None:
    allowed = ("https://bot:t0ken@profiles.example/org/", "https://other.example/")
    assert credentialed("https://profiles.example/org/p.tar.gz", allowed) == (
        "https://bot:t0ken@profiles.example/org/p.tar.gz"
    )
    assert credentialed("https://other.example/p.tar.gz", allowed) is None
    assert credentialed("https://profiles.example/elsewhere/p", allowed) is None
    check_profile("https://profiles.example/org/p.tar.gz", allowed)
    with pytest.raises(PolicyViolation) as info:
        check_profile("https://nope.example/p", allowed)
    assert "t0ken" not in str(info.value)


def test_allow_list_separators_leave_url_colons_alone() -> None:
    raw = "/srv/p:https://bot:pw@h.example:8443/org/:/opt/q,https://x.example/"
    assert parse_allowed_profiles(raw) == (
        "/srv/p",
        "https://bot:pw@h.example:8443/org/",
        "/opt/q",
        "https://x.example/",
    )
    assert parse_allowed_profiles(" , ") == DEFAULT_ALLOWED_PROFILES
