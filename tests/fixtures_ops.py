"""Fixtures for reports, sweeps and the janitor."""
