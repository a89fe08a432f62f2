"""Test-wide fixtures. Each area keeps its fixtures in its own plugin module."""

pytest_plugins = [
    "tests.support.fixtures_kube",
    "tests.support.fixtures_auditor",
    "tests.support.fixtures_fleet",
    "tests.support.fixtures_ops",
    "tests.support.fixtures_s3",
]
