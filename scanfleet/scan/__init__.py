"""One target: target (pod -> identity -> audit -> judge), auditor (runs the auditor in the
sandbox) and plan (what a run asked for, thresholds parsed once).
"""
