"""Scheduled sweeps: the sweeps file (spec), one sweep tick (tick) and the fleet posture
beat exports to Prometheus (posture).
"""
