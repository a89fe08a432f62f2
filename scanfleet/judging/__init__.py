"""Judging: report (exec-JSON -> controls and counts), thresholds, documents (the typed
summaries and the one outcome rule) and aggregate (streaming run aggregation).

Pure: no file, network or Redis I/O.
"""
