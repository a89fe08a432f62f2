"""`scanfleet demo`: scan a simulated cluster end to end, no cluster, Docker or Redis needed.

The work is `scanfleet.testing.demo.run_demo` (a simulated API server, the stand-in auditor,
the real `submit` pipeline); this command parses, calls it, prints, and exits with the run's
exit code (SPEC §5).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from scanfleet.cli.common import bad_input_exits, main_group


@main_group.command("demo")
@click.option(
    "--results-dir",
    "--output",
    "results",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("scanfleet-demo"),
    show_default=True,
    help="Where the demo's run directory, HTML report and log go.",
)
@click.option(
    "--broker",
    default=None,
    metavar="redis://HOST:PORT/DB",
    help="Run through the fleet: start a `scanfleet worker` on this Redis and `submit --wait` "
    "(default: `submit --local`, no broker).",
)
@bad_input_exits
def demo_command(results: Path, broker: str | None) -> None:
    """Scan a simulated cluster (3 namespaces, 8 pods) with the real pipeline, in seconds."""
    from scanfleet.testing.demo import FLEET, NEXT_STEPS, DemoFailed, check_broker, run_demo

    if broker is not None:
        check_broker(broker)
    pods = sum(len(p) for p in FLEET.values())
    click.echo(
        f"Simulated cluster: {len(FLEET)} namespaces, {pods} pods; stand-in auditor with "
        f"real STIG/CIS sample reports; {'fleet run (worker + broker)' if broker else 'local run'}",
        err=True,
    )
    try:
        result = run_demo(results, broker=broker, on_line=click.echo)
    except DemoFailed as e:
        log = results / "demo.log"
        hint = f" (log: {log})" if log.is_file() else ""
        click.echo(f"scanfleet: error: demo failed: {e}{hint}", err=True)
        sys.exit(e.exit_code)
    click.echo(
        f"throwaway identities: {result.identities} minted, {result.leftovers} left in the cluster"
    )
    click.echo(f"HTML report: {result.html}")
    click.echo(f"run directory: {result.run_dir}  (log: {result.log})")
    click.echo(f"time: {result.seconds:.1f}s")
    click.echo("")
    click.echo(NEXT_STEPS)
    sys.exit(result.exit_code)
