"""Where things are in the repository, for tests and benchmarks (nothing outside it is read)."""

from __future__ import annotations

from pathlib import Path

from scanfleet.testing import auditor as _testing

SUPPORT = Path(__file__).resolve().parent
TESTS = SUPPORT.parent
ROOT = TESTS.parent
DATA = TESTS / "data"
SAMPLES = DATA / "inspec-samples"
STANDIN = _testing.STANDIN
HOSTILE = _testing.HOSTILE
