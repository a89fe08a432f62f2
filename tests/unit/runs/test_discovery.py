"""Discovery against the fake API server: which containers a `submit` scans (SPEC §2)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.targets import Target, check_selector
from scanfleet.kube.client import ClientCache
from scanfleet.runs.discovery import Entry, Scope, dedupe_images, discover, resolve
from scanfleet.runs.local import run_local
from scanfleet.scan.plan import RunPlan
from scanfleet.store.files import iter_summaries
from scanfleet.testing.fakekube import FakeCluster, write_kubeconfig
from tests.support.fixtures_auditor import this_host

RUN = "20250101T000000Z-abcdef"


def refs(entries: list[Entry]) -> list[str]:
    return sorted(f"{e.target.context}:{e.target.ref}" for e in entries)


@pytest.fixture
def clients(admin_kubeconfig: Path) -> Iterator[ClientCache]:
    c = ClientCache(str(admin_kubeconfig))
    yield c
    c.close()


def test_regular_containers_of_running_pods_only(
    fake_cluster: FakeCluster, clients: ClientCache
) -> None:
    fake_cluster.add_pod("other", "done", containers=["c"], phase="Succeeded")
    fake_cluster.add_pod("other", "live", containers=["c"], ephemeral_containers=["debug"])
    found = discover(clients, Scope(["fake"], all_namespaces=True))
    # web's init container, the Pending and Succeeded pods and the ephemeral container: out.
    assert refs(found) == ["fake:apps/web/app", "fake:apps/web/sidecar", "fake:other/live/c"]
    web = next(e for e in found if e.target.container == "sidecar")
    assert web.image == "registry.example/proxy:2.0"


def test_pagination_with_limit_and_continue(
    fake_cluster: FakeCluster, clients: ClientCache
) -> None:
    for i in range(25):
        fake_cluster.add_pod("other", f"pod-{i:02d}", containers=["c"])
    before = len(fake_cluster.requests)
    found = discover(clients, Scope(["fake"], namespaces=["other"]), page_size=10)
    assert len(found) == 25
    lists = [
        r
        for r in fake_cluster.requests[before:]
        if r.method == "GET" and r.path == "/api/v1/namespaces/other/pods"
    ]
    assert len(lists) == 3  # 10 + 10 + 5


def test_selector_and_namespaces(fake_cluster: FakeCluster, clients: ClientCache) -> None:
    fake_cluster.add_pod("other", "api", containers=["c"], labels={"app": "api"})
    fake_cluster.add_pod("other", "web2", containers=["c"], labels={"app": "web"})
    by_sel = discover(clients, Scope(["fake"], all_namespaces=True, selector="app=web"))
    assert refs(by_sel) == ["fake:apps/web/app", "fake:apps/web/sidecar", "fake:other/web2/c"]
    by_set = discover(
        clients, Scope(["fake"], all_namespaces=True, selector="app in (api, web),tier!=frontend")
    )
    assert refs(by_set) == ["fake:other/api/c", "fake:other/web2/c"]
    excluded = discover(clients, Scope(["fake"], all_namespaces=True, exclude_namespaces=["apps"]))
    assert refs(excluded) == ["fake:other/api/c", "fake:other/web2/c"]
    only = discover(
        clients, Scope(["fake"], namespaces=["apps", "other"], exclude_namespaces=["other"])
    )
    assert refs(only) == ["fake:apps/web/app", "fake:apps/web/sidecar"]


@pytest.mark.parametrize(
    "selector",
    [
        "app=web",
        "app==web,tier",
        "!legacy",
        "a.b/c notin (x)",
        "env in (prod,staging),app!=x",
        " app = web ",
        "app=",
    ],
)
def test_valid_selectors(selector: str) -> None:
    assert check_selector(selector) == selector


@pytest.mark.parametrize(
    "selector", ["=web", "app in web", "app=(x", "a b", "app=we b", "app in (x", "-bad=1"]
)
def test_invalid_selectors_are_bad_input(selector: str) -> None:
    with pytest.raises(BadInput, match="label selector"):
        check_selector(selector)


def test_scope_is_validated_up_front() -> None:
    with pytest.raises(BadInput, match="nothing to scan"):
        Scope(["fake"])
    with pytest.raises(BadInput, match="namespace"):
        Scope(["fake"], namespaces=["Bad_NS"])
    with pytest.raises(BadInput, match="exclude each other"):
        Scope(["fake"], namespaces=["a"], all_namespaces=True)


def test_multiple_contexts(make_cluster: Callable[..., FakeCluster], tmp_path: Path) -> None:
    a, b = make_cluster(name="a"), make_cluster(name="b")
    for c in (a, b):
        c.add_namespace("apps")
        c.add_pod("apps", "web", containers=["app"])
    kc = write_kubeconfig(tmp_path / "config", {"a": a, "b": b})
    found = discover(ClientCache(str(kc)), Scope(["a", "b"], namespaces=["apps"]))
    assert refs(found) == ["a:apps/web/app", "b:apps/web/app"]


def test_explicit_pod_targets_expand_and_unreadable_pods_carry_their_error(
    fake_cluster: FakeCluster, clients: ClientCache
) -> None:
    before = len(fake_cluster.requests)
    entries = resolve(
        clients,
        [
            Target("fake", "apps", "web"),
            Target("fake", "apps", "gone"),
            Target("fake", "apps", "web", "app"),
        ],
        need_images=False,
    )
    assert refs(entries) == ["fake:apps/gone", "fake:apps/web/app", "fake:apps/web/sidecar"]
    gone = next(e for e in entries if e.target.pod == "gone")
    assert gone.error is not None
    assert gone.error["kind"] == "target_not_found"
    # Only the pod-level targets cost an API read.
    assert len(fake_cluster.requests) - before == 2


def test_dedupe_images_keeps_one_per_image_id() -> None:
    def e(pod: str, image_id: str | None) -> Entry:
        return Entry(Target("c", "ns", pod, "app"), "img", image_id)

    out = dedupe_images(
        [e("a", "sha:1"), e("b", "sha:2"), e("c", "sha:1"), e("d", None), e("f", "sha:1")]
    )
    assert [x.target.pod for x in out] == ["a", "b", "d"]
    assert [c.target.pod for c in out[0].covers] == ["c", "f"]
    assert sum(x.size() for x in out) == 5


def test_dedupe_run_marks_covered_targets(
    make_cluster: Callable[..., FakeCluster], tmp_path: Path, standin_auditor: str
) -> None:
    cluster = make_cluster()
    cluster.add_namespace("apps")
    for i in range(3):
        cluster.add_pod("apps", f"web-{i}", containers=[("app", "web:1", "sha256:same")])
    cluster.add_pod("apps", "db", containers=[("app", "db:1", "sha256:other")])
    kc = cluster.write_kubeconfig(tmp_path / "config")
    clients = ClientCache(str(kc))
    entries = dedupe_images(discover(clients, Scope(["fake"], namespaces=["apps"])))
    plan = RunPlan(
        run_id=RUN,
        source="test",
        profile="p",
        created_at="2025-01-01T00:00:00Z",
        auditor=standin_auditor,
        token_ttl=900,
        timeout=60,
        dedupe_images=True,
    )
    run = run_local(
        clients, plan, [], tmp_path / "out", concurrency=2, entries=entries, host=this_host()
    )
    summaries = list(iter_summaries(tmp_path / "out" / RUN))
    assert len(summaries) == 4
    assert run["targets"]["total"] == 4
    scanned = [s for s in summaries if s["covered_by"] is None]
    assert sorted(s["target"]["pod"] for s in scanned) == ["db", "web-0"]
    covered = [s for s in summaries if s["covered_by"] is not None]
    web0 = next(s for s in scanned if s["target"]["pod"] == "web-0")
    assert sorted(s["target"]["pod"] for s in covered) == ["web-1", "web-2"]
    for s in covered:
        assert s["covered_by"] == web0["scan_id"]
        assert s["scan_id"] != web0["scan_id"]
        assert s["counts"] == web0["counts"]
        assert s["target"]["image_id"] == "sha256:same"
    assert not cluster.scanfleet_objects()
    assert json.loads((tmp_path / "out" / RUN / "run.json").read_text())["targets"]["total"] == 4
