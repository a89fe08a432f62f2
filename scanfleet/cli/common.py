"""Shared pieces of the command line: the group, option decorators, exit handling."""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

import click

from scanfleet.core import logs
from scanfleet.core.clock import utcnow
from scanfleet.core.errors import (
    BadInput,
    ExitCode,
    ResultsUnavailable,
    SandboxUnavailable,
    ScanInterrupted,
    StoreUnavailable,
)
from scanfleet.core.settings import Settings, check_ttl
from scanfleet.scan.plan import RunPlan
from scanfleet.store.results import RUN_FILE, ResultsStore, open_results, read_json, run_exists

F = TypeVar("F", bound=Callable[..., Any])


_VERBOSITY = "scanfleet.verbosity"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scanfleet")
@click.option("-v", "--verbose", count=True, help="More log lines (-vv: debug).")
@click.option("-q", "--quiet", count=True, help="Errors only; no progress bar.")
@click.pass_context
def main_group(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Compliance scans of running containers across Kubernetes fleets."""
    ctx.meta[_VERBOSITY] = verbose - quiet


def verbosity() -> int:
    """-v count minus -q count of this invocation (0 outside a click command)."""
    ctx = click.get_current_context(silent=True)
    return int(ctx.meta.get(_VERBOSITY, 0)) if ctx is not None else 0


_NO_COLOR = "scanfleet.no_color"


def summary_color() -> bool | None:
    """click.echo's `color`: False with NO_COLOR, else None (click colours a terminal
    only, and strips the styles from a pipe or a file)."""
    ctx = click.get_current_context(silent=True)
    return False if ctx is not None and ctx.meta.get(_NO_COLOR) else None


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except BadInput as e:
        fail(str(e))
    logs.configure(
        settings.log_format,
        colors=not settings.no_color,
        verbosity=verbosity(),
    )
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[_NO_COLOR] = settings.no_color
    for url in (settings.broker_url, *settings.allowed_profiles):
        logs.remember_url(url)
    return settings


def progress_disabled() -> bool:
    """The progress bar is for a terminal: not with -q, not when stderr is a pipe or a
    file (where it would break the JSON log lines)."""
    return verbosity() < 0 or not sys.stderr.isatty()


_DURATION_PART = re.compile(r"(\d+)([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):  # type: ignore[type-arg]
    """Seconds, as a plain integer or with units: `90s`, `30m`, `1h`, `1h30m`, `2d`."""

    name = "duration"

    def __init__(self, minimum: int = 1) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            seconds = value
        else:
            text = str(value).strip().lower()
            if text.isdigit():
                seconds = int(text)
            elif text and _DURATION_PART.sub("", text) == "":
                seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
            else:
                self.fail(
                    f"{value!r} is not a duration: seconds (90) or with units (90s, 30m, 1h)",
                    param,
                    ctx,
                )
        if seconds < self.minimum:
            self.fail(f"{value!r} is shorter than {self.minimum}s", param, ctx)
        return seconds


def require_broker(settings: Settings, what: str = "nothing was queued") -> None:
    """Redis answers within seconds, or: host:port and why on stderr, exit 3 (a malformed
    URL: exit 2). Called first by the commands that need the broker."""
    from scanfleet.store.client import check_reachable

    try:
        check_reachable(settings.broker_url)
    except StoreUnavailable as e:
        click.echo(f"scanfleet: error: {e}; {what}", err=True)
        sys.exit(ExitCode.SCAN_ERROR)


def check_local_run(settings: Settings, profile: str) -> None:
    """What a run in this process needs before any identity is made: the auditor
    executable, and a local profile path that exists (BadInput, exit 2)."""
    auditor = settings.auditor
    path_env = settings.environment.get("PATH", os.defpath)
    if shutil.which(auditor, path=path_env) is None:
        raise BadInput(
            f"auditor executable {auditor!r} not found (SCANFLEET_AUDITOR, or "
            "cinc-auditor on PATH): install CINC Auditor or point SCANFLEET_AUDITOR at it"
        )
    # A path (it has a slash, or starts with . or ~) must exist here; a bare word is a
    # profile name the auditor resolves itself.
    looks_like_path = "://" not in profile and ("/" in profile or profile[:1] in ".~")
    if looks_like_path and not Path(profile).expanduser().exists():
        raise BadInput(f"profile path {profile!r} does not exist")


def check_clusters(clients: Any, contexts: Iterable[str], what: str) -> None:
    """Each context's API server answers within seconds, or: its URL and why on stderr,
    exit 3, before anything is created or queued."""
    from scanfleet.core.errors import ClusterUnavailable

    for ctx in sorted(set(contexts)):
        try:
            clients.get(ctx).probe()
        except ClusterUnavailable as e:
            click.echo(f"scanfleet: error: {e}; {what}", err=True)
            sys.exit(ExitCode.SCAN_ERROR)


def sandbox_mode(settings: Settings, what: str = "nothing was started") -> str:
    """The auditor sandbox mode scans will run in ("landlock-abi-N", or "off" when the
    operator opted out), checked before anything is created. Without Landlock and without
    SCANFLEET_SANDBOX=off: the reason on stderr and exit 3 (a scan could not run; not bad
    input), with no run directory, Redis key or cluster object made."""
    from scanfleet.sandbox.policy import mode_label

    try:
        return mode_label(settings.sandbox)
    except SandboxUnavailable as e:
        click.echo(f"scanfleet: error: [{e.kind}] {e}; {what}", err=True)
        sys.exit(ExitCode.SCAN_ERROR)


def fail(message: str) -> NoReturn:
    """Bad input: say what is wrong and exit 2. Nothing has been created or queued."""
    click.echo(f"scanfleet: error: {message}", err=True)
    sys.exit(ExitCode.BAD_INPUT)


def bad_input_exits(fn: F) -> F:
    """Turn BadInput raised anywhere during validation into exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInput as e:
            fail(str(e))
        except ResultsUnavailable as e:  # an object store that cannot be read: one line
            click.echo(f"scanfleet: error: {e}", err=True)
            sys.exit(ExitCode.SCAN_ERROR)

    return wrapper  # type: ignore[return-value]


def kubeconfig_option(fn: F) -> F:
    return click.option(
        "--kubeconfig",
        type=click.Path(dir_okay=False),
        default=None,
        help="Admin kubeconfig (default: $KUBECONFIG, then ~/.kube/config).",
    )(fn)


def metrics_port_option(fn: F) -> F:
    return click.option(
        "--metrics-port",
        type=click.IntRange(0, 65535),
        default=None,
        help="Serve Prometheus /metrics on this port; 0: off (default: $SCANFLEET_METRICS_PORT).",
    )(fn)


RESULTS_LOCATION = click.Path(file_okay=False)
"""A results directory or `s3://bucket/prefix`, as given (a str: a Path would fold `//`)."""


def output_option(fn: F) -> F:
    return click.option(
        "--results-dir",
        "--output",
        "output",
        type=RESULTS_LOCATION,
        default=None,
        help="Results directory or s3://bucket/prefix "
        "(default: $SCANFLEET_RESULTS_DIR, else ./scanfleet-results).",
    )(fn)


@dataclass(frozen=True)
class ScanArgs:
    """The options `scan` and `submit` share, as one value (`scan_options` builds it)."""

    profile: str
    threshold: Path | None
    input_files: tuple[Path, ...]
    auditor_args: tuple[str, ...]
    token_ttl: int | None
    timeout: int | None

    def limits(self, settings: Settings) -> tuple[int, int]:
        """Token TTL and scan timeout: flags over the environment, checked together."""
        ttl = self.token_ttl if self.token_ttl is not None else settings.token_ttl
        timeout = self.timeout if self.timeout is not None else settings.scan_timeout
        check_ttl(ttl, timeout)
        return ttl, timeout

    def plan(
        self,
        settings: Settings,
        source: str,
        *,
        fleet_threshold: Path | None = None,
        dedupe_images: bool = False,
    ) -> RunPlan:
        """The run's plan, validated (BadInput before anything is created or queued)."""
        ttl, timeout = self.limits(settings)
        return RunPlan.new(
            source=source,
            profile=self.profile,
            now=utcnow(),
            auditor=settings.auditor,
            token_ttl=ttl,
            timeout=timeout,
            threshold=self.threshold,
            fleet_threshold=fleet_threshold,
            input_files=self.input_files,
            extra_args=self.auditor_args,
            dedupe_images=dedupe_images,
            allowed_profiles=settings.allowed_profiles,
        )


def scan_options(fn: F) -> F:
    """Options shared by `scan` and `submit`, handed to the command as `scan: ScanArgs`."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        profile: str,
        threshold: Path | None,
        input_files: tuple[Path, ...],
        auditor_args: tuple[str, ...],
        token_ttl: int | None,
        timeout: int | None,
        **kwargs: Any,
    ) -> Any:
        scan = ScanArgs(profile, threshold, input_files, auditor_args, token_ttl, timeout)
        return fn(*args, scan=scan, **kwargs)

    command: Any = wrapper
    for opt in reversed(
        [
            click.option("--profile", required=True, help="InSpec profile: path, URL or name."),
            click.option(
                "--threshold",
                type=click.Path(dir_okay=False, path_type=Path),
                default=None,
                help="Target threshold file (SAF CLI format).",
            ),
            click.option(
                "--input-file",
                "input_files",
                multiple=True,
                type=click.Path(dir_okay=False, path_type=Path),
                help="InSpec input file (repeatable).",
            ),
            click.option(
                "--auditor-arg",
                "auditor_args",
                multiple=True,
                help="Extra argument passed to the auditor as is (repeatable), e.g. "
                "--auditor-arg=--controls --auditor-arg=SV-230221.",
            ),
            click.option(
                "--token-ttl",
                type=Duration(),
                default=None,
                help="Scan token lifetime: seconds or 30m, 1h (600..86400 s; default 1h).",
            ),
            click.option(
                "--timeout",
                type=Duration(),
                default=None,
                help="Auditor timeout: seconds or 90s, 30m, 1h (default 30m).",
            ),
        ]
    ):
        command = opt(command)
    return command  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FinishedRun:
    """A run's run.json in a results store (written once the run has finished)."""

    results: ResultsStore
    run_id: str

    def exists(self) -> bool:
        return self.results.exists(self.run_id, RUN_FILE)

    def started(self) -> bool:
        """The run exists in the store: its directory (empty while its first scans run), or
        objects under its prefix (an object store has no empty directories)."""
        return run_exists(self.results, self.run_id)

    def read(self) -> Any:
        return read_json(self.results, self.run_id, RUN_FILE)


def results_dir(output: str | Path | None, settings: Settings) -> ResultsStore:
    """The results store of `--output`/`--results-dir`, else SCANFLEET_RESULTS_DIR's."""
    return open_results(output, settings)


def resolve_run_id(value: str, base: ResultsStore | Path) -> str:
    """A RUN_ID argument: a run id, or `latest` (the newest run in the results store)."""
    from scanfleet.store.files import check_run_id
    from scanfleet.store.results import as_results, latest_run_id

    if value == "latest":
        results = as_results(base)
        found = latest_run_id(results)
        if found is None:
            raise BadInput(
                f"no runs in {results.location} (check --results-dir or SCANFLEET_RESULTS_DIR)"
            )
        return found
    return check_run_id(value)


def emit_json(document: Any) -> None:
    """The one JSON document of a `--json` command, alone on stdout."""
    import json

    click.echo(json.dumps(document, indent=2))  # ensure_ascii: escapes, never raw controls


@contextmanager
def interruptible(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT raise ScanInterrupted once in the main thread, so clean-up runs, and
    set `stop` (the run's `Host.stop`) so audits in other threads end too.

    A second signal while cleaning up is ignored: clean-up is bounded by API timeouts,
    and abandoning it would leave RBAC objects behind.
    """
    fired = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        stop.set()  # audits running in other threads stop too
        raise ScanInterrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
