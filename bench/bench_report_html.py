"""The HTML report of an N-target run (default 2,000) in headless Chromium: print how long
it takes to render, open and filter. Target: opens and filters in under 2 s.

Builds the run from the real sample reports (tests/unit/reports/bigrun.py), writes the page
with `scanfleet report --format html`, then loads it --repeat times over DevTools and prints
the page's own `data-ready-ms` (navigation start to the target table drawn), the wall time
from navigate to the load event, and the time the outcome, namespace and text filters take.

    python bench/bench_report_html.py [--targets N] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from click.testing import CliRunner  # noqa: E402

import scanfleet.cli.report as _report  # noqa: E402,F401
from scanfleet.cli.common import main_group  # noqa: E402
from tests.support.bigrun import BIG_RUN_ID, write_big_run  # noqa: E402
from tests.support.browser import Browser  # noqa: E402
from tests.support.tools import wait_until  # noqa: E402

FILTER = """(async () => {
  const drawn = () => new Promise(res => (function poll() {
    document.body.hasAttribute('data-rendering') ? setTimeout(poll, 0) : res(); })());
  const times = [];
  for (const [id, v] of [['sf-outcome', 'failed'], ['sf-namespace', 'ns-03'],
                         ['sf-outcome', ''], ['sf-namespace', '']]) {
    const s = document.getElementById(id);
    const t0 = performance.now();
    s.value = v;
    s.dispatchEvent(new Event('change'));
    const first = performance.now() - t0;
    await drawn();
    times.push([first, performance.now() - t0]);
  }
  return times;
})()"""
NAV = (
    "(() => { const n = performance.getEntriesByType('navigation')[0];"
    " return n.loadEventEnd || n.domContentLoadedEventEnd; })()"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        write_big_run(results, args.targets)
        page = Path(tmp) / "report.html"
        t0 = time.perf_counter()
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
        )
        render_s = time.perf_counter() - t0
        assert page.exists(), r.output
        print(f"targets            {args.targets}")
        print(f"page size          {page.stat().st_size / 1e6:.2f} MB")
        print(f"render (python)    {render_s * 1000:.0f} ms")
        browser = Browser(Path(tmp) / "chromium")
        ready, nav, wall, filt, filt_all, complete = [], [], [], [], [], []
        try:
            for _ in range(args.repeat):
                browser.open("about:blank")
                t0 = time.perf_counter()
                browser.open(page.as_uri())
                wall.append((time.perf_counter() - t0) * 1000)
                ready.append(float(browser.js("document.body.dataset.readyMs")))
                nav.append(float(browser.js(NAV)))
                wait_until(
                    lambda: browser.js("document.body.hasAttribute('data-rendering')") is False,
                    60,
                )
                complete.append(float(browser.js("document.body.dataset.completeMs")))
                for first, whole in browser.js(FILTER):
                    filt.append(first)
                    filt_all.append(whole)
                rows = browser.js("document.querySelectorAll('#sf-rows .t').length")
        finally:
            browser.close()
        print(f"rows after filter  {rows}")
        for name, xs in (
            ("open (page ready)", ready),
            ("open (load event)", nav),
            ("open (wall, CDP)", wall),
            ("all rows drawn", complete),
        ):
            print(f"{name:18} median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms")
        for name, xs in (("filter, first rows", filt), ("filter, all rows", filt_all)):
            print(f"{name:18} median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms")
        typical = statistics.median(nav) + statistics.median(filt_all)
        worst = max(nav) + max(filt_all)
        verdict = "under" if worst < 2000 else "OVER"
        print(f"open + filter      median {typical:.0f} ms, worst {worst:.0f} ms ({verdict} 2 s)")


if __name__ == "__main__":
    main()
