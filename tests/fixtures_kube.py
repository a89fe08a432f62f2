"""Fixtures for the fake Kubernetes API server (filled in by the fake-cluster work)."""
