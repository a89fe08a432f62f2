"""A run: the pipeline (record, finalize), its two drivers (local in-process, fleet through
the broker), discovery of targets, recovery of a dead worker's scans, drift between runs and
retention of old ones.

Must never import celery or click: the worker and the CLI call into this package.
"""
