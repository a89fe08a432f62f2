"""Fixtures for fleet tests: real redis-server and celery worker processes."""
