"""Where things are in the repository, for tests and benchmarks (nothing outside it is read)."""

from __future__ import annotations

from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
DATA = TESTS / "data"
SAMPLES = DATA / "inspec-samples"
STANDIN = ROOT / "scanfleet" / "testing" / "standin" / "cinc-auditor"
HOSTILE = STANDIN.with_name("hostile-auditor")
