"""The ground floor: errors, settings (the only reader of the environment), time, logging and
redaction, safe text, targets, the worker allow-lists and metrics.

Must never import another scanfleet package, or kubernetes, redis, celery or click.
"""
