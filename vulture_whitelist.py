"""Names vulture (`.ci/run`, min confidence 80) cannot see used: entry points called by
click, Celery and prometheus_client, and parameters a protocol's signature requires."""

from scanfleet.cli import fleet, ops, report, sandbox, scan, sweeps
from scanfleet.worker import app, schedule

# click commands, registered on the group by their decorators
fleet.submit_command
fleet.status_command
fleet.worker_command
ops.janitor_command
ops.diff_command
ops.prune_command
report.report_command
sandbox.sandbox_command
scan.scan_command
sweeps.validate_command
sweeps.beat_command

# Celery: `celery --app=scanfleet.worker.app` reads `app` through the module's __getattr__;
# beat calls a schedule's is_due and remaining_estimate
app.__getattr__
schedule.CronSchedule.is_due
schedule.CronSchedule.remaining_estimate

# parameters named by a protocol: __exit__(exc_type, exc, tb), redis' hincrby(..., amount)
_.tb
_.amount
