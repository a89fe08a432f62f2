"""Input and waiver files: a worker grants only the operator's (SCANFLEET_ALLOWED_INPUTS),
regular files only; the sandbox refuses any inside HOME, /proc, the results, scanfleet's
temp entries or the broker URL file, whoever named them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from scanfleet.core.errors import BadInput, SandboxUnavailable
from scanfleet.core.policy import PolicyViolation
from scanfleet.core.settings import SandboxSettings, Settings
from scanfleet.sandbox import policy as sandbox
from scanfleet.sandbox.inputs import check_plan_inputs, file_arguments


def test_every_form_of_a_file_argument_is_found() -> None:
    args = [
        "--controls",
        "a",
        "b",
        "--input-file",
        "/i1",
        "/i2",
        "--waiver-file=/w1",
        "--input-file=/i3",
        "--tags",
        "t",
        "--waiver-file",
        "/w2",
        "--no-color",
    ]
    assert file_arguments(args) == ["/i1", "/i2", "/w1", "/i3", "/w2"]


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    d = tmp_path / "inputs"
    d.mkdir()
    (d / "ok.yml").write_text("x: 1\n")
    (d / "sub").mkdir()
    return d


def test_a_regular_file_under_the_allow_list_passes(allowed: Path) -> None:
    ok = str(allowed / "ok.yml")
    check_plan_inputs([ok], ["--waiver-file", ok, f"--input-file={ok}"], [allowed])


@pytest.mark.parametrize(
    ("input_files", "args", "named", "why"),
    [
        (["{allowed}/sub"], [], "{allowed}/sub", "not a regular file"),
        ([], ["--waiver-file", "{allowed}/sub"], "{allowed}/sub", "not a regular file"),
        (["{tmp}/elsewhere.yml"], [], "{tmp}/elsewhere.yml", "SCANFLEET_ALLOWED_INPUTS"),
        ([], ["--input-file={tmp}/elsewhere.yml"], "{tmp}/elsewhere.yml", "ALLOWED_INPUTS"),
        (["{allowed}/link.yml"], [], "{allowed}/link.yml", "SCANFLEET_ALLOWED_INPUTS"),
        (["{allowed}/../elsewhere.yml"], [], "elsewhere.yml", "SCANFLEET_ALLOWED_INPUTS"),
        (["relative.yml"], [], "relative.yml", "absolute"),
        (["/proc/self/environ"], [], "/proc/self/environ", "SCANFLEET_ALLOWED_INPUTS"),
    ],
)
def test_anything_else_is_a_policy_violation_naming_it(
    allowed: Path, tmp_path: Path, input_files: list[str], args: list[str], named: str, why: str
) -> None:
    (tmp_path / "elsewhere.yml").write_text("secret: 1\n")
    (allowed / "link.yml").symlink_to(tmp_path / "elsewhere.yml")  # a symlink out of it

    def fill(s: str) -> str:
        return s.format(allowed=allowed, tmp=tmp_path)

    with pytest.raises(PolicyViolation, match=why) as info:
        check_plan_inputs([fill(f) for f in input_files], [fill(a) for a in args], [allowed])
    assert fill(named) in str(info.value)


def test_no_allow_list_means_no_input_file(allowed: Path) -> None:
    with pytest.raises(PolicyViolation, match="none set"):
        check_plan_inputs([str(allowed / "ok.yml")], [], [])
    check_plan_inputs([], ["--controls", "x"], [])  # a plan without inputs still passes


def test_settings_read_the_inputs_allow_list() -> None:
    s = Settings.from_env({"SCANFLEET_ALLOWED_INPUTS": f"/a{os.pathsep}/b,/c"})
    assert s.allowed_inputs == (Path("/a"), Path("/b"), Path("/c"))
    assert Settings.from_env({}).allowed_inputs == ()
    with pytest.raises(BadInput, match="'rel'"):
        Settings.from_env({"SCANFLEET_ALLOWED_INPUTS": "/a,rel"})


# --- the sandbox's own refusal, whoever named the file ----------------------------------------


def _policy(
    tmp_path: Path,
    inputs: list[str],
    args: tuple[str, ...] = (),
    profile: str = "p",
    **config: Any,
) -> sandbox.Policy:
    results = tmp_path / "results" / "20250101T000000Z-000000"
    results.mkdir(parents=True, exist_ok=True)
    private = tmp_path / "private"
    private.mkdir(exist_ok=True)
    work = sandbox.prepare_workdir(private)
    kubeconfig = private / "kubeconfig"
    kubeconfig.write_text("clusters: [{cluster: {server: 'https://127.0.0.1:6443'}}]\n")
    scan = sandbox.Scan("/bin/sh", profile, kubeconfig, work, results, inputs, list(args))
    settings = SandboxSettings(**config)
    return sandbox.build_policy(
        settings, scan, {"PATH": "/usr/bin:/bin"}, {"HOME": str(tmp_path / "home")}
    )


@pytest.mark.parametrize(
    ("where", "refused"),
    [
        ("home/.aws/credentials", "inside the worker's HOME"),
        ("results/20200101T000000Z-000000/a.report.json", "inside the results"),
        ("results/20250101T000000Z-000000/b.json", "inside the results"),
        ("home/.aws", "not a regular file"),
        ("plain-dir", "not a regular file"),
    ],
)
def test_the_sandbox_refuses_inputs_in_guarded_places(
    tmp_path: Path, where: str, refused: str
) -> None:
    target = tmp_path / where
    if where.endswith(("aws", "dir")):
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("secret\n")
    for inputs, args in (([str(target)], ()), ([], (f"--waiver-file={target}",))):
        with pytest.raises(SandboxUnavailable, match=refused):
            _policy(tmp_path, inputs, args)


def test_the_sandbox_refuses_proc_the_broker_file_and_other_scans(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="not a regular file"):
        _policy(tmp_path, [], ("--input-file=/proc",))
    with pytest.raises(SandboxUnavailable, match="inside /proc"):
        _policy(tmp_path, ["/proc/self/status"])
    broker = tmp_path / "broker-url"
    broker.write_text("redis://:pw@redis:6379/0\n")
    with pytest.raises(SandboxUnavailable, match="broker URL file"):
        _policy(tmp_path, [str(broker)], broker_url_file=broker)
    # Nor may an operator's allow rule cover it.
    with pytest.raises(SandboxUnavailable, match="would expose"):
        _policy(tmp_path, [], allow_read=(tmp_path,), broker_url_file=broker)
    other = Path(tempfile.mkdtemp(prefix="scanfleet-"))
    try:
        (other / "kubeconfig").write_text("token: another-scans\n")
        with pytest.raises(SandboxUnavailable, match="scanfleet's own"):
            _policy(tmp_path, [str(other / "kubeconfig")])
    finally:
        (other / "kubeconfig").unlink()
        other.rmdir()


def test_an_ordinary_input_file_is_granted_read_only(tmp_path: Path) -> None:
    ok = tmp_path / "inputs.yml"
    ok.write_text("x: 1\n")
    policy = _policy(tmp_path, [str(ok)])
    assert str(ok) in policy.read
    assert str(ok) not in policy.write


def test_a_local_profile_may_not_be_proc_the_results_or_another_scans_directory(
    tmp_path: Path,
) -> None:
    """The plan names the profile too: a Redis writer must not turn it into a grant of
    another scan's live token, other runs' findings or /proc."""
    other = Path(tempfile.mkdtemp(prefix="scanfleet-"))
    cache = Path(tempfile.mkdtemp(prefix="scanfleet.profiles.fetch.test-"))
    try:
        (other / "kubeconfig").write_text("token: another-scans\n")
        (cache / "p.tar.gz").write_bytes(b"archive")
        for profile, refused in (
            (str(other), "scanfleet's own"),
            (str(other / "kubeconfig"), "scanfleet's own"),
            ("/proc", "inside /proc"),
            ("/proc/self", "inside /proc"),
            (str(tmp_path / "results"), "inside the results"),
        ):
            with pytest.raises(SandboxUnavailable, match=refused):
                _policy(tmp_path, [], profile=profile)
        # A fetched profile lives in the cache under the temp root; a local one anywhere else.
        assert (
            str(cache / "p.tar.gz") in _policy(tmp_path, [], profile=str(cache / "p.tar.gz")).read
        )
        (tmp_path / "profiles" / "p").mkdir(parents=True)
        assert (
            str(tmp_path / "profiles" / "p")
            in _policy(tmp_path, [], profile=str(tmp_path / "profiles" / "p")).read
        )
    finally:
        (other / "kubeconfig").unlink()
        other.rmdir()
        (cache / "p.tar.gz").unlink()
        cache.rmdir()
