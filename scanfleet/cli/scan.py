"""`scanfleet scan`: a run of one target, executed in-process; and `print_run`.

The Kubernetes client is imported inside the command only: importing this module (as
`--help`, `--version` and `status` do) must never load kubernetes or celery.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

from scanfleet.cli.common import (
    ScanArgs,
    bad_input_exits,
    check_clusters,
    check_local_run,
    emit_json,
    interruptible,
    kubeconfig_option,
    load_settings,
    main_group,
    output_option,
    results_dir,
    sandbox_mode,
    scan_options,
    summary_color,
)
from scanfleet.core.targets import parse_target
from scanfleet.core.textsafe import terminal_line


@main_group.command("scan")
@click.argument("target")
@scan_options
@click.option("--context", default=None, help="Kubeconfig context (default: current).")
@kubeconfig_option
@output_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print run.json (one JSON document, with run_id) instead of the run id and a summary.",
)
@bad_input_exits
def scan_command(
    target: str,
    scan: ScanArgs,
    context: str | None,
    kubeconfig: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Scan NAMESPACE/POD[/CONTAINER] with a throwaway least-privilege identity."""
    settings = load_settings()
    scan.limits(settings)  # bad flags are reported before the kubeconfig is read
    # Loaded here, not at import: `--help`, `--version` and `status` stay fast.
    from scanfleet.kube.client import ClientCache
    from scanfleet.kube.kubeconfig import choose_contexts
    from scanfleet.profiles.fetch import fetch_config, pin_for_run
    from scanfleet.runs.local import run_local
    from scanfleet.scan.auditor import Host

    kcfg = kubeconfig or settings.kubeconfig
    ctx = choose_contexts(kcfg, [context] if context else [], False)[0]
    tgt = parse_target(target, ctx)
    plan = scan.plan(settings, "scan")
    check_local_run(settings, scan.profile)
    mode = sandbox_mode(settings)
    clients = ClientCache(kcfg)
    clients.get(ctx)
    check_clusters(clients, [ctx], "nothing was created")
    # A URL profile: fetched once, here, before any identity (BadInput: exit 2).
    plan = pin_for_run(plan, fetch_config(settings))
    if not as_json:
        click.echo(plan.run_id)  # alone on the first line: `RUN=$(scanfleet scan ... | head -1)`
    host = Host.from_settings(settings)
    with interruptible(host.stop):
        run = run_local(
            clients, plan, [tgt], results_dir(output, settings), sandbox=mode, host=host
        )
    print_run(run, as_json)
    sys.exit(int(run["exit_code"]))


def _echo(text: str, head: str = "", **style: Any) -> None:
    """A line for a terminal: auditor- and cluster-derived text cannot move the cursor,
    rewrite the title, hide text or add hyperlinks (textsafe.terminal_line). `head`, a
    word of ours, is coloured with `style` on a terminal (not with NO_COLOR, not in a pipe)."""
    prefix = click.style(head, **style) + " " if head else ""
    click.echo(prefix + terminal_line(text), color=summary_color())


def threshold_applied(run: Mapping[str, Any]) -> bool:
    """Whether the run judged its targets against a threshold. Runs written before
    run.json said so (`threshold_applied`) count as having one, as they were shown."""
    return bool(run.get("threshold_applied", True))


def print_run(run: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        emit_json(run)
        return
    t = run["targets"]
    judged = (
        f"met threshold: {t['passed']}  missed: {t['failed']}"
        if threshold_applied(run)
        else "no threshold applied"
    )
    _echo(f"targets: {t['total']}  completed: {t['completed']}  errors: {t['error']}  {judged}")
    c = run["counts"]
    _echo(
        "controls: "
        + "  ".join(
            f"{s}: {c[s]['total']}" for s in ("passed", "failed", "skipped", "no_impact", "error")
        )
        + f"  compliance: {run['compliance']}%"
    )
    for ft in run.get("failing_targets", []):
        ref = f"{ft['context']}:{ft['namespace']}/{ft['pod']}/{ft['container']}"
        for failure in ft.get("failures", []):
            _echo(f"{ref}: {failure}", "FAIL", fg="red", bold=True)
    for et in run.get("error_targets", []):
        ref = f"{et['context']}:{et['namespace']}/{et['pod']}/{et.get('container') or '*'}"
        err = et.get("error") or {}
        _echo(f"{ref}: [{err.get('kind')}] {err.get('message')}", "ERROR", fg="yellow", bold=True)
    fleet = run.get("fleet_threshold") or {}
    for failure in fleet.get("failures", []) or []:
        _echo(f"{failure}", "FLEET FAIL:", fg="red", bold=True)
    code = int(run["exit_code"])
    verdict = {0: ("OK", "green"), 1: ("THRESHOLD NOT MET", "red"), 3: ("SCAN ERRORS", "yellow")}
    word, colour = verdict.get(code, ("", "white"))
    line = terminal_line(f"results: {run['run_id']}  exit code: {code}")
    click.echo(f"{line}  {click.style(word, fg=colour, bold=True)}", color=summary_color())
