"""`scanfleet sandbox`: what the auditor sandbox enforces on this host.

Prints the Landlock ABI and, for each restriction (filesystem, TCP network, signal and
abstract-socket scopes, capabilities, no_new_privs), whether this kernel and the current
settings apply it. Exit 0 when scans can run (sandbox available, or explicitly off), 3
when the sandbox is required and unavailable (scans would refuse to start). Reads nothing
secret and starts nothing.
"""

from __future__ import annotations

import json

import click

from scanfleet.cli.common import bad_input_exits, load_settings, main_group
from scanfleet.sandbox.policy import describe

EXIT_UNAVAILABLE = 3


@main_group.command("sandbox")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@bad_input_exits
def sandbox_command(as_json: bool) -> None:
    """Report what the auditor sandbox enforces on this host."""
    report = describe(load_settings().sandbox)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        width = max(len(k) for k in report)
        for key, value in report.items():
            shown = ", ".join(value) if isinstance(value, list) else value
            click.echo(f"{key:<{width}}  {shown}")
    if report["mode"] == "unavailable":
        raise SystemExit(EXIT_UNAVAILABLE)
