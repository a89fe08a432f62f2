"""`scanfleet report RUN_ID`: a finished run's results as json, markdown, junit or html.

Reads `DIR/<run_id>/run.json` and streams the target summaries next to it; never holds
all summaries at once. The exit code is the run's own (SPEC §5: 0, 1 or 3), given after
the report is written, so a CI step can publish the report and fail on the same command.
Exit 2, writing nothing, for a malformed or unknown run id or a run that has not finished.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from scanfleet.cli.common import (
    RESULTS_LOCATION,
    bad_input_exits,
    load_settings,
    main_group,
    resolve_run_id,
)
from scanfleet.core.errors import BadInput, ExitCode, ResultsUnavailable
from scanfleet.core.settings import heimdall_api_key
from scanfleet.judging.documents import Outcome, failed_controls_of, judge, unreadable_summary
from scanfleet.reports import FORMATS, write_report
from scanfleet.reports.hdf import HdfFile
from scanfleet.reports.hdf import export as export_hdf
from scanfleet.reports.heimdall import HeimdallServer, check_heimdall_url, upload_files
from scanfleet.reports.trends import trend_series, write_trend_html, write_trend_json
from scanfleet.store.files import check_run_id
from scanfleet.store.results import (
    RUN_FILE,
    ResultsStore,
    open_results,
    read_json,
    run_exists,
    summary_names,
)

RUN_EXIT_CODES = (ExitCode.OK, ExitCode.THRESHOLD, ExitCode.SCAN_ERROR)


def _summaries(results: ResultsStore, run_id: str) -> Iterator[dict[str, Any]]:
    """The run's target summaries, one object at a time.

    A summary that cannot be read is reported as a target that could not be scanned (the
    aggregator's rule for malformed summaries), so it shows up instead of vanishing.
    """
    for name, body in results.read_many(run_id, summary_names(results.names(run_id))):
        try:
            if isinstance(body, Exception):
                raise body
            data = json.loads(body)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ResultsUnavailable) as e:
            data = None
            problem = f"summary file {name} is unreadable: {e}"
        else:
            problem = f"summary file {name} is not a JSON object"
        if isinstance(data, dict):
            yield data
            continue
        yield unreadable_summary(name.removesuffix(".json"), problem)


def load_run(results: ResultsStore, run_id: str) -> dict[str, Any]:
    """run.json of a finished run; BadInput (exit 2) saying why there is none."""
    where = f"{results.location}/{check_run_id(run_id)}"
    try:
        if not run_exists(results, run_id):
            raise BadInput(f"unknown run {run_id!r}: no directory {where} (check --results-dir)")
        run: object = read_json(results, run_id, RUN_FILE)
    except FileNotFoundError:
        raise BadInput(
            f"run {run_id!r} has not finished: {where}/{RUN_FILE} is not written yet (the run "
            "is still in progress, or it stopped before finishing); report it once it has "
            "finished"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"cannot read {where}/{RUN_FILE}: {e}") from e
    # ResultsUnavailable (a store that cannot be read) is no bad input: exit 3, one line.
    if not isinstance(run, dict) or run.get("exit_code") not in RUN_EXIT_CODES:
        raise BadInput(f"{where}/{RUN_FILE} is not a run summary (no exit_code of 0, 1 or 3)")
    return run


def _write_file(
    path: Path, fmt: str, run: dict[str, Any], results: ResultsStore, run_id: str
) -> None:
    """Write next to the target and rename, so a failed report never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write_report(fmt, run, lambda: _summaries(results, run_id), f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def heimdall_server(url: str | None) -> HeimdallServer | None:
    """`--heimdall-url` with the key from the environment; BadInput before anything is sent."""
    if url is None:
        return None
    base = check_heimdall_url(url)
    key = heimdall_api_key()
    if key is None:
        raise BadInput(
            "--heimdall-url needs an API key: set SCANFLEET_HEIMDALL_API_KEY or "
            "SCANFLEET_HEIMDALL_API_KEY_FILE (never a flag)"
        )
    return HeimdallServer(base, key)


def write_hdf(
    out: Path | None,
    server: HeimdallServer | None,
    run: dict[str, Any],
    results: ResultsStore,
    run_id: str,
) -> None:
    """`--format hdf`: one file per scanned target into `out` and/or uploaded to `server`;
    stderr says what was written and uploaded. Upload failures never change the exit code."""
    if out is not None:
        if out.exists() and not out.is_dir():
            raise BadInput(f"--format hdf writes a directory: {out} is a file")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BadInput(f"cannot create {out}: {e.strerror or e}") from e
    written, problems = 0, []

    def on_file(item: HdfFile) -> None:
        nonlocal written
        if item.data is None:
            problems.append(f"{item.name}: {item.problem}")
        elif out is not None:
            try:
                _write_bytes(out / item.name, item.data)
            except OSError as e:
                raise BadInput(f"cannot write {out / item.name}: {e.strerror or e}") from e
            written += 1

    files = export_hdf(
        run,
        lambda: _summaries(results, run_id),
        lambda sid: results.read_bytes(run_id, f"{sid}.report.json"),
    )
    if server is None:
        for item in files:
            on_file(item)
    else:
        source = str(run.get("source") or "")
        sweep = source.removeprefix("sweep:") if source.startswith("sweep:") else None
        result = upload_files(server, files, str(run.get("run_id")), sweep, on_file)
        for line in result.lines():
            click.echo(line, err=True)
    if out is not None:
        click.echo(f"wrote {written} HDF file{'' if written == 1 else 's'} to {out}", err=True)
    if problems:
        click.echo(f"{len(problems)} target(s) have no HDF file:", err=True)
        for line in problems[:20]:
            click.echo(f"  {line}", err=True)
        if len(problems) > 20:
            click.echo(f"  … and {len(problems) - 20} more", err=True)


def sweep_runs(results: ResultsStore, sweep: str, last: int) -> list[dict[str, Any]]:
    """The last `last` finished runs of `sweep` (run.json source `sweep:<name>`), oldest
    first. Newest runs are read first, and only until enough are found."""
    found: list[dict[str, Any]] = []
    try:
        names = results.run_ids()
    except OSError as e:
        raise BadInput(
            f"cannot read results directory {results.location}: {e.strerror or e}"
        ) from e
    for name in reversed(names):
        try:
            run = read_json(results, name, RUN_FILE)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ResultsUnavailable):
            continue
        if isinstance(run, dict) and run.get("source") == f"sweep:{sweep}":
            found.append(run)
            if len(found) == last:
                break
    if not found:
        raise BadInput(
            f"no finished run of sweep {sweep!r} in {results.location} (check --results-dir)"
        )
    return found[::-1]


def failed_controls_of_run(results: ResultsStore, run_id: str) -> dict[str, dict[str, Any]]:
    """{control id: {title, severity, targets}} over a run's scanned targets, streamed."""
    out: dict[str, dict[str, Any]] = {}
    for summary in _summaries(results, run_id):
        if judge(summary).outcome is Outcome.ERROR:
            continue
        for c in failed_controls_of(summary):
            entry = out.setdefault(
                c["id"], {"title": c["title"], "severity": c["severity"], "targets": 0}
            )
            entry["title"] = entry["title"] or c["title"]
            entry["targets"] += 1
    return out


def report_sweep(
    sweep: str, last: int, fmt: str, output: Path | None, results: ResultsStore
) -> int:
    """`report --sweep NAME`: the trend page or its JSON series; the latest run's exit code."""
    if fmt not in ("html", "json"):
        raise BadInput(f"--sweep reports trends as html or json, not {fmt}")
    runs = sweep_runs(results, sweep, last)
    before = last_ = None
    if len(runs) >= 2:
        before = failed_controls_of_run(results, str(runs[-2]["run_id"]))
        last_ = failed_controls_of_run(results, str(runs[-1]["run_id"]))
    series = trend_series(sweep, runs, before, last_)
    writer = write_trend_html if fmt == "html" else write_trend_json
    if output is None or str(output) == "-":
        writer(series, sys.stdout)
        sys.stdout.flush()
    else:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            with output.open("w", encoding="utf-8", newline="\n") as f:
                writer(series, f)
        except OSError as e:
            raise BadInput(f"cannot write the report to {output}: {e.strerror or e}") from e
    return int(runs[-1].get("exit_code") or 0)


@main_group.command("report")
@click.argument("run_id", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice((*FORMATS, "hdf")),
    default="json",
    show_default=True,
    help="json: run.json plus every target summary; markdown: a CI job summary or ticket; "
    "junit: a testsuite per cluster; html: one self-contained page; hdf: one Heimdall "
    "file per target into the --output directory.",
)
@click.option(
    "--output",
    "output",
    type=click.Path(path_type=Path, allow_dash=True),
    default=None,
    help="File to write (default: standard output); for hdf, the directory to write.",
)
@click.option(
    "--results-dir",
    type=RESULTS_LOCATION,
    default=None,
    help="Results directory or s3://bucket/prefix "
    "(default: $SCANFLEET_RESULTS_DIR, else ./scanfleet-results).",
)
@click.option(
    "--heimdall-url",
    default=None,
    help="With --format hdf: upload each target's file to this Heimdall server (API key "
    "from $SCANFLEET_HEIMDALL_API_KEY or the file $SCANFLEET_HEIMDALL_API_KEY_FILE names).",
)
@click.option(
    "--sweep",
    default=None,
    help="Instead of RUN_ID: the trend of this sweep's last runs (html or json).",
)
@click.option(
    "--last",
    type=click.IntRange(2, 1000),
    default=10,
    show_default=True,
    help="With --sweep: how many of its latest runs.",
)
@bad_input_exits
def report_command(
    run_id: str | None,
    fmt: str,
    output: Path | None,
    results_dir: str | None,
    heimdall_url: str | None,
    sweep: str | None,
    last: int,
) -> None:
    """Report a finished run; exit with the run's exit code (0 met, 1 missed, 3 errors).
    RUN_ID may be `latest`. --results-dir may be a directory or s3://bucket/prefix.

    With --sweep NAME instead of RUN_ID: the sweep's compliance over its last runs."""
    settings = load_settings()
    if (run_id is None) == (sweep is None):
        raise BadInput("give a RUN_ID or --sweep NAME (one of them)")
    results = open_results(results_dir, settings)
    if sweep is not None:
        sys.exit(report_sweep(sweep, last, fmt, output, results))
    assert run_id is not None
    if heimdall_url is not None and fmt != "hdf":
        raise BadInput("--heimdall-url uploads HDF files: use it with --format hdf")
    server = heimdall_server(heimdall_url)
    run_id = resolve_run_id(run_id, results)
    run = load_run(results, run_id)
    if fmt == "hdf":
        if output is not None and str(output) == "-":
            raise BadInput("--format hdf writes files: give --output DIR, not standard output")
        if output is None and server is None:
            raise BadInput("--format hdf needs --output DIR or --heimdall-url URL (or both)")
        write_hdf(output, server, run, results, run_id)
    elif output is not None and output.is_dir():
        raise BadInput(f"--output {output} is a directory; {fmt} is written to a file")
    elif output is None or str(output) == "-":
        write_report(fmt, run, lambda: _summaries(results, run_id), sys.stdout)
        sys.stdout.flush()
    else:
        try:
            _write_file(output, fmt, run, results, run_id)
        except OSError as e:
            raise BadInput(f"cannot write the report to {output}: {e.strerror or e}") from e
    sys.exit(int(run["exit_code"]))
