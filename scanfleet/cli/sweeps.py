"""`scanfleet sweeps validate` and `scanfleet beat`: scheduled sweeps.

Each validates the sweeps file first (exit 2 naming the bad value, nothing scheduled),
then calls one service. Celery is imported only inside `beat`.
"""

from __future__ import annotations

from pathlib import Path

import click

from scanfleet.cli.common import (
    Duration,
    bad_input_exits,
    load_settings,
    main_group,
    metrics_port_option,
    require_broker,
)
from scanfleet.core.clock import rfc3339, utcnow
from scanfleet.core.settings import check_ttl
from scanfleet.store.locks import LOCK_TTL
from scanfleet.sweeps.spec import JANITOR_INTERVAL, PRUNE_INTERVAL, load_sweeps


@main_group.group("sweeps")
def sweeps_group() -> None:
    """Scheduled sweeps (the sweeps file read by `scanfleet beat`)."""


@sweeps_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@bad_input_exits
def validate_command(file: Path) -> None:
    """Validate a sweeps file; print each sweep with its next fire time (UTC)."""
    settings = load_settings()
    check_ttl(settings.token_ttl, settings.scan_timeout)  # every sweep scans with these
    sweeps = load_sweeps(file)
    now = utcnow()
    for s in sweeps:
        nxt = rfc3339(s.next_fire(now))
        click.echo(f"{s.name}  schedule: {s.schedule!r}  next: {nxt}")
    click.echo(f"{file}: {len(sweeps)} sweep{'' if len(sweeps) == 1 else 's'} OK")


@main_group.command("beat")
@click.option(
    "--sweeps",
    "sweeps_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Sweeps file (YAML).",
)
@click.option(
    "--schedule-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Persist last-run times here (default: in memory; a restart fires nothing missed).",
)
@click.option(
    "--janitor-interval",
    type=Duration(minimum=60),
    default=JANITOR_INTERVAL,
    show_default=True,
    help="Time between janitor runs on the workers (seconds, or 30m, 1h).",
)
@click.option(
    "--prune-interval",
    type=Duration(minimum=60),
    default=PRUNE_INTERVAL,
    show_default=True,
    help="Time between retention runs on the workers (seconds, or 1h, 1d).",
)
@click.option(
    "--lock-ttl",
    type=Duration(minimum=60),
    default=LOCK_TTL,
    show_default=True,
    help="Time after which a sweep's lock frees itself if its run never finishes (seconds, or 6h).",
)
@metrics_port_option
@bad_input_exits
def beat_command(
    sweeps_file: Path,
    schedule_file: Path | None,
    janitor_interval: int,
    prune_interval: int,
    lock_ttl: int,
    metrics_port: int | None,
) -> None:
    """Run Celery beat: each sweep on its cron schedule, plus the janitor and retention."""
    settings = load_settings()
    check_ttl(settings.token_ttl, settings.scan_timeout)
    sweeps = load_sweeps(sweeps_file)  # a bad file stops here, before anything is scheduled
    require_broker(settings, "beat did not start")  # seconds, not a minute of retries
    from scanfleet.worker import exporter

    exporter.beat_starting(settings, sweeps, metrics_port)
    from scanfleet.worker.app import create_app
    from scanfleet.worker.schedule import run_beat

    run_beat(
        create_app(settings),
        sweeps,
        schedule_file=schedule_file,
        janitor_interval=janitor_interval,
        prune_interval=prune_interval,
        lock_ttl=lock_ttl,
    )
