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

from scanfleet.cli.common import RESULTS_LOCATION, bad_input_exits, load_settings, main_group
from scanfleet.core.errors import BadInput, ExitCode, ResultsUnavailable
from scanfleet.judging.documents import unreadable_summary
from scanfleet.reports import FORMATS, write_report
from scanfleet.store.files import check_run_id
from scanfleet.store.results import RUN_FILE, ResultsStore, open_results, read_json, summary_names

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
        if not results.names(run_id):
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


@main_group.command("report")
@click.argument("run_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    show_default=True,
    help="json: run.json plus every target summary; markdown: a CI job summary or ticket; "
    "junit: a testsuite per cluster; html: one self-contained page.",
)
@click.option(
    "--output",
    "output",
    type=click.Path(dir_okay=False, path_type=Path, allow_dash=True),
    default=None,
    help="File to write (default: standard output).",
)
@click.option(
    "--results-dir",
    type=RESULTS_LOCATION,
    default=None,
    help="Results directory or s3://bucket/prefix "
    "(default: $SCANFLEET_RESULTS_DIR, else ./scanfleet-results).",
)
@bad_input_exits
def report_command(run_id: str, fmt: str, output: Path | None, results_dir: str | None) -> None:
    """Report a finished run; exit with the run's exit code (0 met, 1 missed, 3 errors)."""
    settings = load_settings()
    results = open_results(results_dir, settings)
    run = load_run(results, run_id)
    if output is None or str(output) == "-":
        write_report(fmt, run, lambda: _summaries(results, run_id), sys.stdout)
        sys.stdout.flush()
    else:
        try:
            _write_file(output, fmt, run, results, run_id)
        except OSError as e:
            raise BadInput(f"cannot write the report to {output}: {e.strerror or e}") from e
    sys.exit(int(run["exit_code"]))
