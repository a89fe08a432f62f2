"""Shared pieces of the command line: the group, option decorators, exit handling."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from scanfleet.core import logs
from scanfleet.core.clock import utcnow
from scanfleet.core.errors import (
    BadInput,
    ExitCode,
    ResultsUnavailable,
    SandboxUnavailable,
    ScanInterrupted,
)
from scanfleet.core.settings import Settings, check_ttl
from scanfleet.scan.auditor import clear_stop, request_stop
from scanfleet.scan.plan import RunPlan
from scanfleet.store.results import RUN_FILE, ResultsStore, open_results, read_json

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="scanfleet")
def main_group() -> None:
    """Compliance scans of running containers across Kubernetes fleets."""


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except BadInput as e:
        fail(str(e))
    logs.configure(settings.log_format)
    for url in (settings.broker_url, *settings.allowed_profiles):
        logs.remember_url(url)
    return settings


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


def fail(message: str) -> Any:
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
                type=int,
                default=None,
                help="Scan token lifetime in seconds (600..86400; default 3600).",
            ),
            click.option(
                "--timeout",
                type=int,
                default=None,
                help="Auditor timeout in seconds (default 1800).",
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

    def read(self) -> Any:
        return read_json(self.results, self.run_id, RUN_FILE)


def results_dir(output: str | Path | None, settings: Settings) -> ResultsStore:
    """The results store of `--output`/`--results-dir`, else SCANFLEET_RESULTS_DIR's."""
    return open_results(output, settings)


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM/SIGINT raise ScanInterrupted once in the main thread, so clean-up runs.

    A second signal while cleaning up is ignored: clean-up is bounded by API timeouts,
    and abandoning it would leave RBAC objects behind.
    """
    fired = False

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        request_stop()  # audits running in other threads stop too
        raise ScanInterrupted(f"interrupted by {signal.Signals(signum).name}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        clear_stop()
