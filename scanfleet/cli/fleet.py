"""`scanfleet submit`, `scanfleet status`, `scanfleet worker`: the fleet's entry points.

`submit` validates everything before it creates or queues anything (bad input: exit 2),
resolves the targets (explicit, or discovery), then either runs them in-process (`--local`)
or creates the run in Redis, prints the run id alone on stdout's first line and queues
fan-out chunks of at most `CHUNK_SIZE` targets (workers turn each chunk into scan tasks, so
10,000 targets are 20 small messages for the submitter). `--wait` follows the run with a
progress bar on stderr and exits with the run's exit code (SPEC §5).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import structlog
from tqdm import tqdm

from scanfleet.cli.common import (
    RESULTS_LOCATION,
    Duration,
    FinishedRun,
    ScanArgs,
    bad_input_exits,
    check_clusters,
    check_local_run,
    emit_json,
    fail,
    interruptible,
    kubeconfig_option,
    load_settings,
    main_group,
    metrics_port_option,
    output_option,
    progress_disabled,
    require_broker,
    resolve_run_id,
    results_dir,
    sandbox_mode,
    scan_options,
)
from scanfleet.cli.scan import print_run
from scanfleet.core.errors import BadInput, ExitCode, ScanError, StoreUnavailable
from scanfleet.core.settings import Settings
from scanfleet.core.targets import Target, load_targets_file, parse_target
from scanfleet.scan.plan import RunPlan
from scanfleet.store.results import ResultsStore
from scanfleet.store.state import RunStore

if TYPE_CHECKING:
    from scanfleet.kube.client import ClientCache
    from scanfleet.runs.discovery import Entry, Scope

POLL_SECONDS = 0.5


@main_group.command("submit")
@click.argument("targets", nargs=-1)
@click.option(
    "--targets-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON list of {context, namespace, pod, container}.",
)
@click.option("--context", "contexts", multiple=True, help="Kubeconfig context (repeatable).")
@click.option("--all-contexts", is_flag=True, help="Every context of the kubeconfig.")
@click.option("--namespace", "-n", "namespaces", multiple=True, help="Discover in N (repeatable).")
@click.option("--all-namespaces", "-A", is_flag=True, help="Discover in every namespace.")
@click.option(
    "--exclude-namespace", "exclude_namespaces", multiple=True, help="Skip N (repeatable)."
)
@click.option("--selector", "-l", default=None, help="Label selector for discovered pods.")
@scan_options
@click.option(
    "--fleet-threshold",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Fleet threshold file (SPEC §6).",
)
@click.option("--dedupe-images", is_flag=True, help="Scan one container per image ID.")
@click.option("--wait", is_flag=True, help="Follow the run; exit with its exit code.")
@click.option("--local", is_flag=True, help="Run in-process with threads; no broker.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 512),
    default=4,
    show_default=True,
    help="Threads for --local.",
)
@kubeconfig_option
@output_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON document (run.json, or the status of a queued run; with run_id) "
    "instead of the run id and a summary.",
)
@bad_input_exits
def submit_command(
    targets: tuple[str, ...],
    targets_file: Path | None,
    contexts: tuple[str, ...],
    all_contexts: bool,
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    exclude_namespaces: tuple[str, ...],
    selector: str | None,
    scan: ScanArgs,
    fleet_threshold: Path | None,
    dedupe_images: bool,
    wait: bool,
    local: bool,
    concurrency: int,
    kubeconfig: str | None,
    output: str | None,
    as_json: bool,
) -> None:
    """Scan many containers: TARGET... / --targets-file, or discovery over namespaces."""
    settings = load_settings()
    scan.limits(settings)  # bad flags are reported before the kubeconfig is read
    # Loaded here, not at import: `--help`, `--version` and `status` stay fast.
    from scanfleet.kube.client import ClientCache
    from scanfleet.kube.kubeconfig import choose_contexts
    from scanfleet.runs.discovery import Scope

    kcfg = kubeconfig or settings.kubeconfig
    chosen = choose_contexts(kcfg, contexts, all_contexts)
    explicit = _explicit_targets(targets, targets_file, kcfg, chosen)
    scope: Scope | None = None
    if explicit:
        if namespaces or all_namespaces or exclude_namespaces or selector:
            raise BadInput(
                "explicit targets and discovery options (--namespace, --all-namespaces, "
                "--exclude-namespace, --selector) exclude each other"
            )
    else:
        scope = Scope(chosen, namespaces, all_namespaces, exclude_namespaces, selector)
    plan = scan.plan(
        settings, "submit", fleet_threshold=fleet_threshold, dedupe_images=dedupe_images
    )
    if local:
        check_local_run(settings, scan.profile)
    else:
        require_broker(settings)  # seconds, not a minute, before any discovery
    mode = sandbox_mode(settings) if local else None  # the workers check their own
    clients = ClientCache(kcfg)
    wanted = {t.context for t in explicit} | set(chosen)
    for ctx in wanted:
        clients.get(ctx)  # a context the client cannot load is bad input, before anything
    check_clusters(clients, wanted, "nothing was queued")
    entries = _find_entries(clients, scope, explicit, dedupe_images)
    out = results_dir(output, settings)
    if local:
        _run_local(
            clients=clients,
            plan=plan,
            entries=entries,
            out=out,
            concurrency=concurrency,
            settings=settings,
            as_json=as_json,
            sandbox=mode,
        )
    else:
        _run_fleet(
            plan=plan,
            entries=entries,
            out=out if output is not None else None,
            settings=settings,
            wait=wait,
            as_json=as_json,
        )


def _find_entries(
    clients: ClientCache, scope: Scope | None, explicit: list[Target], dedupe_images: bool
) -> list[Entry]:
    """Discovery over `scope`, or the explicit targets resolved; exit 2 when discovery
    matches nothing, exit 3 when the API cannot say."""
    from scanfleet.runs.discovery import dedupe_images as dedupe_by_image
    from scanfleet.runs.discovery import discover, resolve

    try:
        if scope is not None:
            check_namespaces(clients, scope)
            entries = discover(clients, scope)
            if not entries:
                raise BadInput(f"no running pods matched {describe_scope(scope)}; nothing queued")
        else:
            entries = resolve(clients, explicit, need_images=dedupe_images)
    except ScanError as e:
        click.echo(f"scanfleet: error: finding targets failed, nothing queued: {e}", err=True)
        sys.exit(ExitCode.SCAN_ERROR)
    return dedupe_by_image(entries) if dedupe_images else entries


def check_namespaces(clients: ClientCache, scope: Scope) -> None:
    """Every namespace named with --namespace exists in every chosen context (BadInput,
    exit 2, naming it): a typo must not scan nothing and succeed."""
    for ctx in scope.contexts:
        kube = clients.get(ctx)
        for ns in dict.fromkeys(scope.namespaces):
            if kube.namespace_exists(ns) is False:
                raise BadInput(
                    f"no running pods matched: namespace {ns!r} does not exist in context "
                    f"{ctx!r}; nothing queued"
                )


def describe_scope(scope: Scope) -> str:
    """Discovery's scope in words, for "no running pods matched ..."."""
    where = (
        "every namespace"
        if scope.all_namespaces
        else "namespace " + ", ".join(repr(n) for n in scope.namespaces)
    )
    if scope.exclude_namespaces:
        where += " except " + ", ".join(repr(n) for n in scope.exclude_namespaces)
    what = f"selector {scope.selector!r} in " if scope.selector else ""
    ctxs = ", ".join(repr(c) for c in scope.contexts)
    return f"{what}{where} of context {ctxs}"


def _explicit_targets(
    targets: tuple[str, ...], targets_file: Path | None, kcfg: str, chosen: Sequence[str]
) -> list[Target]:
    """TARGET... (in every chosen context) and --targets-file entries, validated."""
    from scanfleet.kube.kubeconfig import list_contexts

    out = [parse_target(text, ctx) for text in targets for ctx in chosen]
    if targets_file is not None:
        default = chosen[0] if len(chosen) == 1 else None
        from_file = load_targets_file(targets_file, default)
        known, _current = list_contexts(kcfg)
        for t in from_file:
            if t.context not in known:
                raise BadInput(
                    f"targets file {str(targets_file)!r}: context {t.context!r} not found in "
                    f"kubeconfig {kcfg!r}"
                )
        out += from_file
    return list(dict.fromkeys(out))


def _run_local(
    *,
    clients: ClientCache,
    plan: RunPlan,
    entries: list[Entry],
    out: ResultsStore,
    concurrency: int,
    settings: Settings,
    as_json: bool,
    sandbox: str | None,
) -> None:
    from scanfleet.profiles.fetch import fetch_config, pin_for_run
    from scanfleet.runs.local import run_local
    from scanfleet.scan.auditor import Host

    # A URL profile: fetched once for the run, before any identity (BadInput: exit 2).
    plan = pin_for_run(plan, fetch_config(settings))
    host = Host.from_settings(settings)
    if not as_json:
        click.echo(plan.run_id)
    total = sum(e.size() for e in entries)
    with tqdm(
        total=total,
        file=sys.stderr,
        unit="target",
        desc=plan.run_id,
        disable=progress_disabled(),
    ) as bar:

        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        with interruptible(host.stop):
            run = run_local(
                clients,
                plan,
                [],
                out,
                concurrency=concurrency,
                entries=entries,
                cluster_concurrency=settings.cluster_concurrency,
                progress=progress,
                sandbox=sandbox,
                host=host,
            )
    print_run(run, as_json)
    sys.exit(int(run["exit_code"]))


def _run_fleet(
    *,
    plan: RunPlan,
    entries: list[Entry],
    out: ResultsStore | None,
    settings: Settings,
    wait: bool,
    as_json: bool,
) -> None:
    store = RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)
    total = sum(e.size() for e in entries)
    try:
        store.ping()
    except StoreUnavailable as e:
        click.echo(f"scanfleet: error: {e}; nothing queued", err=True)
        sys.exit(ExitCode.SCAN_ERROR)

    def created() -> None:
        if as_json:
            return  # one JSON document at the end, which holds the run id
        click.echo(plan.run_id)  # alone on the first line, once `status` can find the run
        sys.stdout.flush()

    try:
        from scanfleet.runs.fleet import submit_run
        from scanfleet.scan.auditor import Host
        from scanfleet.worker.app import create_app, fan_out_publisher  # --local never builds it

        submit_run(
            store,
            plan,
            entries,
            fan_out_publisher(create_app(settings)),
            results_dir=out,
            fallback_results_dir=results_dir(None, settings),
            created=created,
            host=Host.from_settings(settings),
        )
    except StoreUnavailable as e:
        click.echo(f"scanfleet: error: {e}", err=True)
        sys.exit(ExitCode.SCAN_ERROR)
    if not wait:
        if as_json:
            status = store.status(plan.run_id)
            emit_json(status.to_dict() if status else {"run_id": plan.run_id})
        return
    run = follow(store, plan.run_id, total)
    print_run(run, as_json)
    sys.exit(int(run["exit_code"]))


def follow(store: RunStore, run_id: str, total: int) -> dict[str, Any]:
    """Progress bar on stderr until the run is finalized; returns run.json's body."""
    with tqdm(
        total=total, file=sys.stderr, unit="target", desc=run_id, disable=progress_disabled()
    ) as bar:
        while True:
            try:
                status = store.status(run_id)
                if status is not None:
                    bar.update(status.done - bar.n)
                    bar.set_postfix(running=status.running, errors=status.error, refresh=False)
                    if status.finished:
                        result = store.result(run_id)
                        if result is not None:
                            return dict(result)
            except StoreUnavailable:
                bar.set_postfix_str("waiting for Redis", refresh=True)
            time.sleep(POLL_SECONDS)


@main_group.command("status")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the status document as JSON.")
@click.option(
    "--results-dir",
    "results_location",
    type=RESULTS_LOCATION,
    default=None,
    help="Where to look for run.json of runs Redis does not know "
    "(`scan`, `submit --local`; a directory or s3://bucket/prefix; "
    "default: $SCANFLEET_RESULTS_DIR).",
)
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Follow the run until it finishes, then print its summary and exit with its exit code.",
)
@click.option(
    "--interval",
    type=Duration(),
    default=2,
    show_default=True,
    help="Seconds between two looks with --watch (2, 10s, 1m).",
)
@bad_input_exits
def status_command(
    run_id: str, as_json: bool, results_location: str | None, watch: bool, interval: int
) -> None:
    """State counts of a run while it runs; its summary once it is done. RUN_ID may be
    `latest`."""
    try:
        _status(run_id, as_json, results_location, watch, interval)
    except KeyboardInterrupt:
        # Ctrl-C ends the watch, not the run: no traceback, and not click's "Aborted!"
        # (exit 1) when it lands before the first look (connecting, resolving `latest`).
        click.echo(f"stopped watching run {run_id} (it goes on)", err=True)
        sys.exit(130)


def _status(
    run_id: str, as_json: bool, results_location: str | None, watch: bool, interval: int
) -> None:
    settings = load_settings()
    results = results_dir(results_location, settings)
    run_id = resolve_run_id(run_id, results)
    finished = FinishedRun(results, run_id)
    from scanfleet.store.client import check_reachable

    store: RunStore | None = None
    try:
        check_reachable(settings.broker_url)  # seconds, not a minute of retries
        store = RunStore.from_url(settings.broker_url, settings.key_prefix, settings.retention_days)
    except StoreUnavailable as e:
        # A local run (`scan`, `submit --local`) never touches Redis; its files say all.
        if not finished.started():
            click.echo(f"scanfleet: error: {e}", err=True)
            sys.exit(ExitCode.SCAN_ERROR)
    while True:
        shown = _show_status(store, run_id, finished, as_json, final=not watch)
        if not watch:
            return
        if shown is not None:
            sys.exit(int(shown))
        time.sleep(interval)  # --watch: poll at the operator's interval


def _show_status(
    store: RunStore | None, run_id: str, finished: FinishedRun, as_json: bool, *, final: bool
) -> int | None:
    """Print the run's summary once it is done (its exit code returned), or, while it
    runs, its state counts (printed only when `final`; None returned)."""
    status = result = None
    if store is not None:
        try:
            status = store.status(run_id)
            result = store.result(run_id) if status is not None and status.finished else None
        except StoreUnavailable as e:
            if not finished.started():
                click.echo(f"scanfleet: error: {e}", err=True)
                sys.exit(ExitCode.SCAN_ERROR)
    if status is None:
        return _show_files(run_id, finished, as_json, final=final)
    if result is not None:
        if as_json:
            emit_json({**status.to_dict(), "run": result})
        else:
            print_run(result, False)
        return int(result.get("exit_code", ExitCode.SCAN_ERROR))
    if final and as_json:
        emit_json(status.to_dict())
    elif final:
        d = status.to_dict()
        click.echo(
            f"run {run_id}: {d['state']}  total: {d['total']}  queued: {d['queued']}  "
            f"running: {d['running']}  completed: {d['completed']}  errors: {d['error']}"
        )
    return None


def _show_files(run_id: str, finished: FinishedRun, as_json: bool, *, final: bool) -> int | None:
    """A run Redis does not know (`scan`, `submit --local`): its run.json says all."""
    if finished.exists():
        run = finished.read()
        if as_json:
            emit_json({"run_id": run_id, "state": "finished", "run": run})
        else:
            print_run(run, False)
        return int(run.get("exit_code", ExitCode.SCAN_ERROR))
    if not finished.started():
        fail(f"run {run_id!r} not found (unknown, or older than the retention period)")
    if final and as_json:
        emit_json({"run_id": run_id, "state": "running"})
    elif final:
        click.echo(f"run {run_id}: running (a local run: counts once it finishes)")
    return None


@main_group.command("worker")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(1, 512),
    default=None,
    help="Worker processes (default: number of CPUs).",
)
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level.")
@metrics_port_option
@bad_input_exits
def worker_command(concurrency: int | None, loglevel: str, metrics_port: int | None) -> None:
    """Run a Celery worker (prefork) for scanfleet's tasks."""
    settings = load_settings()  # configures logging, once, before Celery starts
    _worker_sandbox(settings)
    # Unreachable, or a refused login (Celery would retry it forever): exit 3 in seconds.
    require_broker(settings, "the worker did not start")
    from scanfleet.worker import exporter

    exporter.worker_starting(settings, metrics_port)
    from scanfleet.worker.app import QUEUE, create_app

    argv = [
        "worker",
        "--pool=prefork",
        f"--loglevel={loglevel}",
        f"--queues={QUEUE}",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    create_app(settings).worker_main(argv)


def _worker_sandbox(settings: Settings) -> None:
    """Before the pool forks: refuse to start without the sandbox (exit 3) unless opted
    out, and clear what dead workers left (stale scan dirs, their orphaned auditors)."""
    from scanfleet.sandbox.policy import activate
    from scanfleet.sandbox.reaper import reap_stale

    sandbox_mode(settings, "the worker did not start")
    mode = activate(settings.sandbox)  # logs sandbox.off / sandbox.partial
    removed = reap_stale()
    structlog.get_logger(__name__).info(
        "worker.sandbox", sandbox=mode, stale_scan_dirs_removed=len(removed)
    )
