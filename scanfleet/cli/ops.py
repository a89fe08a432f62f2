"""Operations commands: `janitor`, `diff`, `prune`.

Each validates its input first (exit 2 naming the bad value, nothing deleted), then calls
one service function. The Kubernetes client is imported only inside `janitor`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from scanfleet.cli.common import (
    bad_input_exits,
    fail,
    kubeconfig_option,
    load_settings,
    main_group,
    output_option,
    results_dir,
)
from scanfleet.core.clock import utcnow
from scanfleet.core.errors import ExitCode
from scanfleet.runs.drift import diff_runs, format_drift
from scanfleet.runs.retention import prune
from scanfleet.store.files import check_run_id
from scanfleet.store.results import LocalResults, ResultsStore, is_object_store


@main_group.command("janitor")
@click.option("--context", "contexts", multiple=True, help="Kubeconfig context (repeatable).")
@click.option("--all-contexts", is_flag=True, help="Every context of the kubeconfig.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@kubeconfig_option
@bad_input_exits
def janitor_command(
    contexts: tuple[str, ...],
    all_contexts: bool,
    dry_run: bool,
    as_json: bool,
    kubeconfig: str | None,
) -> None:
    """Delete expired scanfleet ServiceAccounts, Roles and RoleBindings left by killed scans."""
    if contexts and all_contexts:
        fail("--context and --all-contexts exclude each other")
    settings = load_settings()
    kcfg = kubeconfig or settings.kubeconfig
    from scanfleet.identity.janitor import (
        janitor_for_kubeconfig,  # the Kubernetes client loads slowly
    )

    report = janitor_for_kubeconfig(kcfg, contexts, all_contexts, now=utcnow(), dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        verb = "would delete" if dry_run else "deleted"
        for f in report.deleted:
            why = f"expired {f.expires_at}" if f.reason == "expired" else f.reason
            click.echo(f"{verb} {f.ref} ({why})")
        for f in report.foreign:
            click.echo(f"NOT OURS {f.ref}: {f.reason}; left alone", err=True)
        for f in report.changed:
            click.echo(f"CHANGED {f.ref}: {f.reason}", err=True)
        for f in report.warnings:
            click.echo(f"WARNING {f.ref}: {f.reason} ({f.expires_at!r}); left alone", err=True)
        for f in report.failed:
            click.echo(f"FAILED {f.ref}: {f.reason}", err=True)
        for ctx, err in report.context_errors.items():
            click.echo(f"ERROR context {ctx!r}: {err}", err=True)
        click.echo(f"total: {len(report.deleted)} {verb}, {len(report.foreign)} not ours")
    sys.exit(ExitCode.OK if report.ok else ExitCode.SCAN_ERROR)


def _run_ref(value: str, base: ResultsStore) -> tuple[ResultsStore, str]:
    """A run id in the results store, or a run directory path."""
    p = Path(value)
    if not is_object_store(value) and p.is_dir():
        return LocalResults(p.parent), p.name
    return base, check_run_id(value)


@main_group.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the drift as JSON.")
@bad_input_exits
def diff_command(run_a: str, run_b: str, output: Path | None, as_json: bool) -> None:
    """Drift from RUN_A (older) to RUN_B: newly failing and fixed controls, targets."""
    settings = load_settings()
    base = results_dir(output, settings)
    refs = [_run_ref(r, base) for r in (run_a, run_b)]
    for store, run_id in refs:
        if not store.names(run_id):
            fail(f"run directory {f'{store.location}/{run_id}'!r} does not exist")
    drift = diff_runs(refs[0], refs[1])
    if as_json:
        click.echo(json.dumps(drift, indent=2))
    else:
        for line in format_drift(drift):
            click.echo(line)


@main_group.command("prune")
@click.option(
    "--older-than-days",
    type=click.IntRange(min=1),
    default=None,
    help="Age in days (default: $SCANFLEET_RETENTION_DAYS, else 30).",
)
@click.option("--dry-run", is_flag=True, help="List what would be pruned; delete nothing.")
@click.option(
    "--files-only", is_flag=True, help="Prune the results directory only; leave Redis alone."
)
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@bad_input_exits
def prune_command(
    older_than_days: int | None,
    dry_run: bool,
    files_only: bool,
    output: Path | None,
    as_json: bool,
) -> None:
    """Delete runs older than the retention age from the results directory and Redis."""
    settings = load_settings()
    days = older_than_days or settings.retention_days
    store = None
    if not files_only and not dry_run:
        from scanfleet.store.state import RunStore

        store = RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)
    report = prune(results_dir(output, settings), days, now=utcnow(), store=store, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        verb = "would prune" if dry_run else "pruned"
        for run_id in report.pruned:
            click.echo(f"{verb} {run_id}")
        for run_id, err in report.errors.items():
            click.echo(f"FAILED {run_id}: {err}", err=True)
        click.echo(
            f"total: {len(report.pruned)} {verb}, {report.kept} kept (cutoff {report.cutoff})"
        )
    sys.exit(ExitCode.SCAN_ERROR if report.errors else ExitCode.OK)
