"""The shipped in-cluster sweep works as shipped: every profile it names is in the worker
image (a COPY of a real InSpec profile in the repository) and allowed by the workers'
SCANFLEET_ALLOWED_PROFILES, and the docs say how to get its reports out of the cluster."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scanfleet.core.policy import check_profile, parse_allowed_profiles
from tests.support.paths import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "workers" / "Dockerfile"
CONTROL = re.compile(r"^control '([^']+)' do$", re.MULTILINE)


def _configmaps() -> dict[str, dict[str, str]]:
    docs = yaml.safe_load_all((DEPLOY / "configmap.yaml").read_text())
    return {d["metadata"]["name"]: d["data"] for d in docs if d and d["kind"] == "ConfigMap"}


def _sweeps() -> list[dict[str, object]]:
    (data,) = [d for d in _configmaps().values() if "sweeps.yml" in d]
    return list(yaml.safe_load(data["sweeps.yml"])["sweeps"])


def _image_copies() -> dict[str, Path]:
    """Destination in the final image -> source in the repository, for plain COPY lines
    of the last stage (not `COPY --from=...`)."""
    last_stage = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    copies = {}
    for line in last_stage.splitlines():
        parts = line.split()
        if parts[:1] == ["COPY"] and not any(p.startswith("--from") for p in parts):
            args = [p for p in parts[1:] if not p.startswith("--")]
            copies[args[-1]] = ROOT / args[0]
    return copies


def test_every_profile_of_the_shipped_sweeps_is_in_the_image_and_allowed() -> None:
    copies = _image_copies()
    allowed = next(
        parse_allowed_profiles(d["SCANFLEET_ALLOWED_PROFILES"])
        for d in _configmaps().values()
        if "SCANFLEET_ALLOWED_PROFILES" in d
    )
    sweeps = _sweeps()
    assert sweeps
    for sweep in sweeps:
        profile = str(sweep["profile"])
        check_profile(profile, allowed)  # BadInput if the workers would refuse it
        source = copies.get(profile)
        assert source is not None, f"{profile} is not copied into the image: {copies}"
        manifest = yaml.safe_load((source / "inspec.yml").read_text())
        assert manifest["name"]
        assert manifest["version"]
        controls = [
            m for f in sorted(source.glob("controls/*.rb")) for m in CONTROL.findall(f.read_text())
        ]
        assert len(controls) >= 3
        assert len(set(controls)) == len(controls)


def test_every_control_of_the_baseline_has_an_impact_a_title_and_a_severity() -> None:
    source = _image_copies()["/etc/scanfleet/profiles/baseline"]
    for f in source.glob("controls/*.rb"):
        blocks = CONTROL.split(f.read_text())[1:]
        for name, body in zip(blocks[::2], blocks[1::2], strict=True):
            assert re.search(r"^\s+impact 0\.\d$", body, re.MULTILINE), name
            assert re.search(r"^\s+title '.+'$", body, re.MULTILINE), name
            assert re.search(r"^\s+tag severity: '(low|medium|high|critical)'$", body, re.M), name


def test_the_docs_show_how_to_get_reports_out_of_the_cluster() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    section = ops.split("### Reports out of the cluster", 1)[1].split("\n## ", 1)[0]
    assert "kubectl -n scanfleet exec deploy/scanfleet-worker -c worker --" in section
    assert "scanfleet report latest --format html" in section
    assert "kubectl -n scanfleet cp" in section
    # The names the recipe uses are the manifests' own.
    (worker,) = [
        d for d in yaml.safe_load_all((DEPLOY / "worker-deployment.yaml").read_text()) if d
    ]
    labels = worker["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "worker"
    assert "-l app.kubernetes.io/component=worker" in section
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "worker"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/scanfleet/results" in mounts
    assert ":/var/lib/scanfleet/results/" in section
