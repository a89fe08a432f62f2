"""The HTML report of a 2,000-target run in headless Chromium, driven over DevTools.

Every target is listed; the outcome, namespace and control filters and the column sort
work through the page's own controls; a target drills into its failed controls' titles,
messages and fix text; the page opens in well under the 2 s target (bench/
bench_report_html.py measures it; here the bound is loose for a loaded CI machine); a
screenshot shows the verdict banner and the charts.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import scanfleet.cli.report as _report  # noqa: F401  (registers the command)
from scanfleet.cli.common import main_group
from scanfleet.judging.documents import failed_controls_of, outcome
from scanfleet.store.files import iter_summaries, run_dir
from tests.support.bigrun import BIG_RUN_ID, write_big_run
from tests.support.browser import Browser
from tests.support.tools import wait_until

N = 2000
LOOSE_OPEN_MS = 6000  # the target is 2,000 ms, measured by the bench; CI machines are busy

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], list[Any], Path]:
    results = tmp_path_factory.mktemp("results")
    run = write_big_run(results, N)
    page = results / "report.html"
    r = CliRunner().invoke(
        main_group,
        [
            "report",
            BIG_RUN_ID,
            "--results-dir",
            str(results),
            "--format",
            "html",
            "--output",
            str(page),
        ],
        catch_exceptions=False,
    )
    assert r.exit_code == 1, r.stderr
    return run, list(iter_summaries(run_dir(results, BIG_RUN_ID))), page


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(tmp_path_factory.mktemp("chromium"), 1366, 900)
    try:
        yield b
    finally:
        b.close()


def load(browser: Browser, page: Path, fragment: str = "") -> None:
    browser.console.clear()
    browser.open("about:blank")
    browser.open(page.as_uri() + fragment)
    assert browser.console == []


def rows(browser: Browser) -> list[dict[str, str]]:
    """The table's rows, once the page has added them all (it adds a large run's in chunks)."""
    wait_until(lambda: browser.js("document.body.hasAttribute('data-rendering')") is False, 60)
    return browser.js(
        """Array.from(document.querySelectorAll('#sf-rows .t')).map(tr => ({
             scan: tr.dataset.scan, outcome: tr.children[0].textContent,
             cluster: tr.children[1].textContent, namespace: tr.children[2].textContent,
             pod: tr.children[3].textContent, compliance: tr.children[6].textContent}))"""
    )


def choose(browser: Browser, select: str, value: str) -> None:
    browser.js(
        f"(() => {{ const s = document.getElementById({select!r}); s.value = {value!r};"
        "s.dispatchEvent(new Event('change')); })()"
    )


def test_every_target_is_listed_and_the_page_opens_fast(big: Any, browser: Browser) -> None:
    _, summaries, page = big
    load(browser, page)
    listed = rows(browser)
    assert len(listed) == N
    assert {r["scan"] for r in listed} == {s["scan_id"] for s in summaries}
    by_scan = {s["scan_id"]: s for s in summaries}
    for r in listed[:50]:
        s = by_scan[r["scan"]]
        assert r["outcome"] == outcome(s)
        assert (r["cluster"], r["namespace"], r["pod"]) == (
            s["target"]["context"],
            s["target"]["namespace"],
            s["target"]["pod"],
        )
    assert browser.js("document.getElementById('sf-shown').textContent") == (
        f"Showing {N} of {N} targets."
    )
    ready = float(browser.js("document.body.dataset.readyMs"))
    assert 0 < ready < LOOSE_OPEN_MS


def test_filters_by_outcome_and_namespace(big: Any, browser: Browser) -> None:
    run, summaries, page = big
    load(browser, page)
    choose(browser, "sf-outcome", "failed")
    failed = rows(browser)
    assert len(failed) == run["targets"]["failed"]
    assert {r["outcome"] for r in failed} == {"failed"}
    choose(browser, "sf-namespace", "ns-03")
    both = rows(browser)
    expected = {
        s["scan_id"]
        for s in summaries
        if outcome(s) == "failed" and s["target"]["namespace"] == "ns-03"
    }
    assert {r["scan"] for r in both} == expected
    assert 0 < len(expected) < len(failed)
    assert browser.js("location.hash") == "#outcome=failed&namespace=ns-03"
    choose(browser, "sf-outcome", "")
    assert {r["namespace"] for r in rows(browser)} == {"ns-03"}
    assert len(rows(browser)) == run["by_namespace"]["ns-03"]["targets"]["total"]

    # the same filters from a link
    load(browser, page, "#outcome=error&namespace=ns-09")
    errors = {
        s["scan_id"]
        for s in summaries
        if outcome(s) == "error" and s["target"]["namespace"] == "ns-09"
    }
    assert {r["scan"] for r in rows(browser)} == errors
    assert errors
    assert browser.js("document.getElementById('sf-outcome').value") == "error"


def test_columns_sort(big: Any, browser: Browser) -> None:
    _, _, page = big
    load(browser, page)
    browser.js("document.querySelector('#sf-table [data-sort=compliance]').click()")
    values = [-1 if r["compliance"] == "n/a" else int(r["compliance"][:-1]) for r in rows(browser)]
    assert values == sorted(values)
    assert values[0] < values[-1]
    browser.js("document.querySelector('#sf-table [data-sort=compliance]').click()")
    again = [-1 if r["compliance"] == "n/a" else int(r["compliance"][:-1]) for r in rows(browser)]
    assert again == sorted(values, reverse=True)


def test_a_target_drills_into_its_failed_controls_with_fix_text(big: Any, browser: Browser) -> None:
    _, summaries, page = big
    target = next(
        s for s in summaries if any(c["fix"] for c in failed_controls_of(s)) and outcome(s)
    )
    load(browser, page, f"#q={target['target']['pod']}")
    assert [r["scan"] for r in rows(browser)] == [target["scan_id"]]
    browser.js("document.querySelector('#sf-rows .t > div').click()")
    text = browser.js("document.querySelector('#sf-rows .detail').textContent")
    fixes = browser.js(
        "Array.from(document.querySelectorAll('#sf-rows .detail details.fix div'))"
        ".map(d => d.textContent)"
    )
    for c in failed_controls_of(target):
        assert c["id"] in text
        assert c["title"] in text
        if c["message"]:
            assert c["message"] in text
        if c["fix"]:
            assert c["fix"] in fixes
    assert browser.js("location.hash").endswith(f"&open={target['scan_id']}")
    browser.js("document.querySelector('#sf-rows .t > div').click()")
    assert browser.js("document.querySelector('#sf-rows .detail')") is None


def test_control_view_counts_targets_and_images_and_filters_to_them(
    big: Any, browser: Browser
) -> None:
    _, summaries, page = big
    load(browser, page)
    failing: dict[str, set[str]] = {}
    images: dict[str, set[str]] = {}
    for s in summaries:
        if outcome(s) == "error":
            continue
        for c in failed_controls_of(s):
            failing.setdefault(c["id"], set()).add(s["scan_id"])
            images.setdefault(c["id"], set()).add(s["target"]["image"])
    view = browser.js(
        """Array.from(document.querySelectorAll('#sf-control-rows tr')).map(tr => ({
             id: tr.dataset.control, title: tr.cells[1].textContent,
             targets: +tr.cells[3].textContent, images: +tr.cells[4].textContent}))"""
    )
    assert {v["id"] for v in view} == set(failing)
    for v in view:
        assert v["targets"] == len(failing[v["id"]])
        assert v["images"] == len(images[v["id"]])
    assert [v["targets"] for v in view] == sorted((v["targets"] for v in view), reverse=True)
    sv = next(v for v in view if v["id"] == "SV-230222")
    assert sv["title"].startswith("RHEL 8 vendor packaged system security patches")
    browser.js(
        "document.querySelector('#sf-control-rows button[data-control=\"SV-230222\"]').click()"
    )
    assert {r["scan"] for r in rows(browser)} == failing["SV-230222"]


def test_screenshot_shows_the_banner_and_the_charts(big: Any, browser: Browser) -> None:
    from PIL import Image

    _, _, page = big
    load(browser, page)
    shot = browser.send("Page.captureScreenshot", format="png")
    with Image.open(io.BytesIO(base64.b64decode(shot["data"]))) as img:
        rgb = img.convert("RGB")
    width, height = rgb.size
    assert (width, height) == (1366, 900)
    top = rgb.crop((0, 0, width, 150)).getcolors(maxcolors=1 << 20) or []
    assert sum(n for n, c in top if c == (0xB9, 0x1C, 0x1C)) > width * 150 // 4  # FAIL banner
    colours = dict((c, n) for n, c in rgb.getcolors(maxcolors=1 << 20) or [])
    assert colours.get((0x25, 0x63, 0xEB), 0) > 2000  # compliance bars
    assert colours.get((0x7F, 0x1D, 0x1D), 0) > 500  # critical in the severity chart


def test_hostile_text_stays_text(browser: Browser, tmp_path: Path) -> None:
    """Markup in a pod name, a control title, a message and a fix is shown, never run."""
    from tests.support.report_runs import render

    evil = "<img src=x onerror=\"document.title='pwned'\"></script><b>bold</b>\u202e"
    summary = {
        "scan_id": "0123456789abcdef",
        "target": {"context": "c", "namespace": "ns", "pod": f"pod{evil}", "container": "app"},
        "status": "completed",
        "counts": {"failed": {"high": 1}},
        "controls": {"failed": {"high": ["C-1"]}},
        "threshold": {"passed": False, "failures": [f"rule {evil}"]},
        "failed_controls": [
            {"id": "C-1", "title": f"title {evil}", "severity": "high", "message": evil,
             "fix": f"fix {evil}"},
        ],
    }  # fmt: skip
    page = tmp_path / "evil.html"
    page.write_text(render("html", {"run_id": "r", "exit_code": 1}, lambda: [summary]))
    load(browser, page, "#open=0123456789abcdef")
    assert browser.js("document.querySelectorAll('#sf-rows img, #sf-rows b').length") == 0
    assert browser.js("document.title") != "pwned"
    text = browser.js("document.querySelector('#sf-rows .detail').textContent")
    clean = evil.replace("\u202e", "")  # bidi override removed, the rest shown as text
    assert f"title {clean}" in text
    assert f"rule {clean}" in text
    assert f"fix {clean}" in text
    assert browser.js("document.querySelector('#sf-rows .t').children[3].textContent") == (
        f"pod{clean}"
    )
