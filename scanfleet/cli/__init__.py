"""The `scanfleet` command line: a click group; each area's commands live in a submodule.

Entry points configure logging once; everything below them only logs. Bad input is a
`BadInput` (or click usage error) → exit 2 with a message naming the bad value, raised
before anything is created or queued.
"""

from __future__ import annotations

import sys

import click

from scanfleet.cli.common import main_group


def main() -> None:
    import scanfleet.cli.demo  # noqa: F401  (register `scanfleet demo`)
    from scanfleet.cli import fleet, ops, report, sandbox, scan, sweeps  # noqa: F401  (register)
    from scanfleet.sandbox.policy import harden_process

    # Non-dumpable: no process can read this one's /proc/<pid>/environ or mem without
    # CAP_SYS_PTRACE; Celery's forked children inherit it (exec resets it for the auditor).
    harden_process()
    try:
        main_group(prog_name="scanfleet")
    except click.exceptions.Exit as e:  # pragma: no cover - click handles in standalone
        sys.exit(e.exit_code)


__all__ = ["main", "main_group"]
