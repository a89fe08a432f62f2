"""Fixtures for the stand-in auditor (filled in by the auditor work)."""
