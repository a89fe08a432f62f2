"""Target parsing and validation: bad input is refused before anything is created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scanfleet.core.errors import BadInput
from scanfleet.core.targets import Target, load_targets_file, parse_target, scan_id_for


def test_parse_target_with_and_without_container() -> None:
    assert parse_target("apps/web/app", "c1") == Target("c1", "apps", "web", "app")
    assert parse_target("apps/web-0.x", "c1") == Target("c1", "apps", "web-0.x", None)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("Apps/web", "'Apps'"),
        ("apps/web/App_1", "'App_1'"),
        ("apps/WEB", "'WEB'"),
        ("apps/-web", "'-web'"),
        ("a" * 64 + "/web", "'" + "a" * 64 + "'"),
        ("apps", "'apps'"),
        ("apps/web/c/extra", "'apps/web/c/extra'"),
        ("apps//c", "'apps//c'"),
    ],
)
def test_bad_targets_name_the_bad_value(text: str, bad: str) -> None:
    with pytest.raises(BadInput) as e:
        parse_target(text, "ctx")
    assert bad in str(e.value)


def test_pod_may_be_a_subdomain_but_namespace_may_not() -> None:
    assert Target("c", "ns", "a.b.c", "x").pod == "a.b.c"
    with pytest.raises(BadInput, match=r"namespace 'a\.b'"):
        Target("c", "a.b", "pod", "x")


def test_targets_file_yaml_and_json(tmp_path: Path) -> None:
    y = tmp_path / "t.yaml"
    y.write_text(
        "- {context: c1, namespace: apps, pod: web, container: app}\n- {namespace: apps, pod: db}\n"
    )
    assert load_targets_file(y, "cur") == [
        Target("c1", "apps", "web", "app"),
        Target("cur", "apps", "db", None),
    ]
    j = tmp_path / "t.json"
    j.write_text(json.dumps([{"context": "c2", "namespace": "x", "pod": "p", "container": "c"}]))
    assert load_targets_file(j, None) == [Target("c2", "x", "p", "c")]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("- {namespace: apps, pod: web, colour: red}\n", "unknown key 'colour'"),
        ("- {namespace: apps}\n", "missing key 'pod'"),
        ("- {namespace: Bad, pod: web}\n", "entry 0: invalid namespace 'Bad'"),
        ("{a: 1}\n", "must hold a list"),
        ("- [1, 2]\n", "entry 0"),
    ],
)
def test_bad_targets_file(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(content)
    with pytest.raises(BadInput, match=r"t\.yaml") as e:
        load_targets_file(f, "ctx")
    assert needle in str(e.value)


def test_scan_id_is_stable_per_run_and_target_and_a_valid_name() -> None:
    t = Target("c", "ns", "pod", "app")
    a = scan_id_for("20260101T000000Z-abcdef", t)
    assert a == scan_id_for("20260101T000000Z-abcdef", t)
    assert a != scan_id_for("20260101T000000Z-abcdee", t)
    assert a != scan_id_for("20260101T000000Z-abcdef", t.with_container("side"))
    Target("c", "ns", f"scanfleet-{a}", "x")  # usable as an object name
