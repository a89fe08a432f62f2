"""Test-wide fixtures. Each area keeps its fixtures in its own plugin module."""

pytest_plugins = [
    "fixtures_kube",
    "fixtures_auditor",
    "fixtures_fleet",
    "fixtures_ops",
]
