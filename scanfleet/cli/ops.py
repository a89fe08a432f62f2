"""Operations commands: `janitor`, `diff`, `prune`, `runs`, `completion`.

Each validates its input first (exit 2 naming the bad value, nothing deleted), then calls
one service function. The Kubernetes client is imported only inside `janitor`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from scanfleet.cli.common import (
    bad_input_exits,
    fail,
    kubeconfig_option,
    load_settings,
    main_group,
    output_option,
    require_broker,
    resolve_run_id,
    results_dir,
)
from scanfleet.core.clock import utcnow
from scanfleet.core.errors import ExitCode
from scanfleet.core.textsafe import terminal_line
from scanfleet.runs.drift import diff_runs, format_drift
from scanfleet.runs.retention import prune
from scanfleet.store.results import (
    LocalResults,
    ResultsStore,
    is_object_store,
    list_runs,
    run_exists,
)


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
    """A run id (or `latest`) in the results store, or a run directory path."""
    p = Path(value)
    if not is_object_store(value) and p.is_dir():
        return LocalResults(p.parent), p.name
    return base, resolve_run_id(value, base)


def newly_failing(drift: Mapping[str, Any]) -> bool:
    """Something fails in RUN_B that did not in RUN_A: a control newly failing on a target,
    or a target that completed in A and errored in B."""
    totals = drift.get("totals") or {}
    if totals.get("newly_failing"):
        return True
    return any(
        (c.get("status_change") or {}).get("to") == "error" for c in drift.get("changed") or []
    )


@main_group.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the drift as JSON.")
@click.option(
    "--exit-code",
    "exit_code",
    is_flag=True,
    help="Exit 1 when something newly fails in RUN_B (as `git diff --exit-code`), else 0.",
)
@bad_input_exits
def diff_command(
    run_a: str, run_b: str, output: str | None, as_json: bool, exit_code: bool
) -> None:
    """Drift from RUN_A (older) to RUN_B: newly failing and fixed controls, targets.
    Either may be `latest`."""
    settings = load_settings()
    base = results_dir(output, settings)
    refs = [_run_ref(r, base) for r in (run_a, run_b)]
    for store, run_id in refs:
        if not run_exists(store, run_id):
            fail(f"run directory {f'{store.location}/{run_id}'!r} does not exist")
    drift = diff_runs(refs[0], refs[1])
    if as_json:
        click.echo(json.dumps(drift, indent=2))
    else:
        for line in format_drift(drift):
            click.echo(line)
    if exit_code and newly_failing(drift):
        sys.exit(ExitCode.THRESHOLD)


@main_group.command("runs")
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the runs as one JSON list.")
@bad_input_exits
def runs_command(output: str | None, as_json: bool) -> None:
    """List the runs in the results directory or s3:// location, newest first."""
    settings = load_settings()
    rows = list_runs(results_dir(output, settings))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("RUN ID", "SOURCE", "CREATED", "STATE", "TARGETS", "COMPLIANCE", "EXIT")
    table = [header] + [
        (
            r["run_id"],
            str(r["source"] or "-"),
            str(r["created_at"] or "-"),
            r["state"],
            "-" if r["targets"] is None else str(r["targets"]),
            "-" if r["compliance"] is None else f"{r['compliance']}%",
            "-" if r["exit_code"] is None else str(r["exit_code"]),
        )
        for r in rows
    ]
    widths = [max(len(terminal_line(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        cells = (terminal_line(c).ljust(w) for c, w in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


@main_group.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the shell completion script: eval "$(scanfleet completion bash)" in ~/.bashrc,
    or see README."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        fail(f"no completion for shell {shell!r}")
        return
    ctx = click.get_current_context()
    click.echo(cls(ctx.find_root().command, {}, "scanfleet", "_SCANFLEET_COMPLETE").source())


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
    output: str | None,
    as_json: bool,
) -> None:
    """Delete runs older than the retention age from the results directory and Redis."""
    settings = load_settings()
    days = older_than_days or settings.retention_days
    store = None
    if not files_only and not dry_run:
        from scanfleet.store.state import RunStore

        require_broker(settings, "nothing was pruned")  # seconds, not a minute of retries

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
