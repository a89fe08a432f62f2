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

from scanfleet.cli.common import bad_input_exits, load_settings, main_group, resolve_run_id
from scanfleet.core.errors import BadInput, ExitCode
from scanfleet.core.settings import heimdall_api_key
from scanfleet.judging.documents import Outcome, failed_controls_of, judge, unreadable_summary
from scanfleet.reports import FORMATS, write_report
from scanfleet.reports.hdf import HdfFile
from scanfleet.reports.hdf import export as export_hdf
from scanfleet.reports.heimdall import HeimdallServer, check_heimdall_url, upload_files
from scanfleet.reports.trends import trend_series, write_trend_html, write_trend_json
from scanfleet.store.files import RUN_ID_RE, read_json, report_path, run_dir, summary_files

RUN_EXIT_CODES = (ExitCode.OK, ExitCode.THRESHOLD, ExitCode.SCAN_ERROR)


def _summaries(directory: Path) -> Iterator[dict[str, Any]]:
    """The run's target summaries, one file at a time.

    A summary that cannot be read is reported as a target that could not be scanned (the
    aggregator's rule for malformed summaries), so it shows up instead of vanishing.
    """
    for path in summary_files(directory):
        try:
            data = read_json(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            data = None
            problem = f"summary file {path.name} is unreadable: {e}"
        else:
            problem = f"summary file {path.name} is not a JSON object"
        if isinstance(data, dict):
            yield data
            continue
        yield unreadable_summary(path.stem, problem)


def load_run(directory: Path, run_id: str) -> dict[str, Any]:
    """run.json of a finished run; BadInput (exit 2) saying why there is none."""
    if not directory.is_dir():
        raise BadInput(f"unknown run {run_id!r}: no directory {directory} (check --results-dir)")
    path = directory / "run.json"
    if not path.exists():
        raise BadInput(
            f"run {run_id!r} has not finished: {path} is not written yet (the run is still in "
            "progress, or it stopped before finishing); report it once it has finished"
        )
    try:
        run: object = read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"cannot read {path}: {e}") from e
    if not isinstance(run, dict) or run.get("exit_code") not in RUN_EXIT_CODES:
        raise BadInput(f"{path} is not a run summary (no exit_code of 0, 1 or 3)")
    return run


def _write_file(path: Path, fmt: str, run: dict[str, Any], directory: Path) -> None:
    """Write next to the target and rename, so a failed report never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write_report(fmt, run, lambda: _summaries(directory), f)
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
    out: Path | None, server: HeimdallServer | None, run: dict[str, Any], directory: Path
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
        run, lambda: _summaries(directory), lambda sid: report_path(directory, sid).read_bytes()
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


def sweep_runs(results_dir: Path, sweep: str, last: int) -> list[dict[str, Any]]:
    """The last `last` finished runs of `sweep` (run.json source `sweep:<name>`), oldest
    first. Newest directories are read first, and only until enough are found."""
    found: list[dict[str, Any]] = []
    try:
        names = sorted(p.name for p in results_dir.iterdir() if RUN_ID_RE.fullmatch(p.name))
    except OSError as e:
        raise BadInput(f"cannot read results directory {results_dir}: {e.strerror or e}") from e
    for name in reversed(names):
        try:
            run = read_json(results_dir / name / "run.json")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(run, dict) and run.get("source") == f"sweep:{sweep}":
            found.append(run)
            if len(found) == last:
                break
    if not found:
        raise BadInput(f"no finished run of sweep {sweep!r} in {results_dir} (check --results-dir)")
    return found[::-1]


def failed_controls_of_run(directory: Path) -> dict[str, dict[str, Any]]:
    """{control id: {title, severity, targets}} over a run's scanned targets, streamed."""
    out: dict[str, dict[str, Any]] = {}
    for summary in _summaries(directory):
        if judge(summary).outcome is Outcome.ERROR:
            continue
        for c in failed_controls_of(summary):
            entry = out.setdefault(
                c["id"], {"title": c["title"], "severity": c["severity"], "targets": 0}
            )
            entry["title"] = entry["title"] or c["title"]
            entry["targets"] += 1
    return out


def report_sweep(sweep: str, last: int, fmt: str, output: Path | None, results: Path) -> int:
    """`report --sweep NAME`: the trend page or its JSON series; the latest run's exit code."""
    if fmt not in ("html", "json"):
        raise BadInput(f"--sweep reports trends as html or json, not {fmt}")
    runs = sweep_runs(results, sweep, last)
    before = last_ = None
    if len(runs) >= 2:
        before = failed_controls_of_run(run_dir(results, runs[-2]["run_id"]))
        last_ = failed_controls_of_run(run_dir(results, runs[-1]["run_id"]))
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
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Results directory (default: $SCANFLEET_RESULTS_DIR, else ./scanfleet-results).",
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
    results_dir: Path | None,
    heimdall_url: str | None,
    sweep: str | None,
    last: int,
) -> None:
    """Report a finished run; exit with the run's exit code (0 met, 1 missed, 3 errors).
    RUN_ID may be `latest`.

    With --sweep NAME instead of RUN_ID: the sweep's compliance over its last runs."""
    settings = load_settings()
    base = results_dir if results_dir is not None else settings.results_dir
    if (run_id is None) == (sweep is None):
        raise BadInput("give a RUN_ID or --sweep NAME (one of them)")
    if sweep is not None:
        sys.exit(report_sweep(sweep, last, fmt, output, base))
    assert run_id is not None
    if heimdall_url is not None and fmt != "hdf":
        raise BadInput("--heimdall-url uploads HDF files: use it with --format hdf")
    server = heimdall_server(heimdall_url)
    run_id = resolve_run_id(run_id, base)
    directory = run_dir(base, run_id)
    run = load_run(directory, run_id)
    if fmt == "hdf":
        if output is not None and str(output) == "-":
            raise BadInput("--format hdf writes files: give --output DIR, not standard output")
        if output is None and server is None:
            raise BadInput("--format hdf needs --output DIR or --heimdall-url URL (or both)")
        write_hdf(output, server, run, directory)
    elif output is not None and output.is_dir():
        raise BadInput(f"--output {output} is a directory; {fmt} is written to a file")
    elif output is None or str(output) == "-":
        write_report(fmt, run, lambda: _summaries(directory), sys.stdout)
        sys.stdout.flush()
    else:
        try:
            _write_file(output, fmt, run, directory)
        except OSError as e:
            raise BadInput(f"cannot write the report to {output}: {e.strerror or e}") from e
    sys.exit(int(run["exit_code"]))
