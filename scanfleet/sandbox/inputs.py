"""Input and waiver files: the operator's, never Redis's.

A plan names files the auditor reads (`RunPlan.input_files`, `--input-file F`,
`--waiver-file F`, `--input-file=F`); the sandbox grants each of them read. A plan read from
Redis may have been written by anyone who can write Redis, so a worker grants only files
that lie under `SCANFLEET_ALLOWED_INPUTS` (absolute path prefixes, resolved, so a symlink
cannot lead out; default: none) and are regular files (a directory is never granted).
`scan` and `submit --local` take what their own command line names (the operator typed it
on this machine); the sandbox still refuses a directory and anything inside HOME, /proc,
the results, another scan's directory or the broker URL file (`scanfleet.sandbox.policy`).

What it must never do:
- grant anything because the plan says so: a worker checks every path before any auditor
  starts (`check_plan_inputs`, a `rejected` error otherwise);
- read a file's content, or name anything but the offending path in a message.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from scanfleet.core.policy import ALLOWED_FLAGS, PolicyViolation

FILE_FLAGS = ("--input-file", "--waiver-file")
ALLOWED_INPUTS_ENV = "SCANFLEET_ALLOWED_INPUTS"


def file_arguments(args: Sequence[str]) -> list[str]:
    """The values of every file-taking auditor argument: `--input-file A B`,
    `--waiver-file=C`, ... (a flag that takes values takes every argument up to the next
    flag, as InSpec's option parser does)."""
    found: list[str] = []
    collecting = False
    for arg in args:
        if arg.startswith("-"):
            name, eq, value = arg.partition("=")
            collecting = name in FILE_FLAGS and not eq
            if name in FILE_FLAGS and eq:
                found.append(value)
            elif name not in FILE_FLAGS and ALLOWED_FLAGS.get(name):
                collecting = False
            continue
        if collecting:
            found.append(arg)
    return found


def plan_inputs(input_files: Iterable[str | Path], extra_args: Sequence[str]) -> list[str]:
    """Every file the auditor is told to read besides its profile."""
    return [*map(str, input_files), *file_arguments(extra_args)]


def regular_file(path: str) -> bool:
    """`path` (symlinks followed) is a regular file."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_plan_inputs(
    input_files: Iterable[str | Path], extra_args: Sequence[str], allowed: Sequence[Path]
) -> None:
    """PolicyViolation naming the first input or waiver file that is not an existing
    regular file under one of the `allowed` prefixes (both sides resolved)."""
    roots = [os.path.realpath(p) for p in allowed]
    for f in plan_inputs(input_files, extra_args):
        if not f or not os.path.isabs(f) or any(c in f for c in "\n\r\0"):
            raise PolicyViolation(f"input file {f!r} is not an absolute path")
        real = os.path.realpath(f)
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            where = ", ".join(map(str, allowed)) or "none set"
            raise PolicyViolation(
                f"input file {f!r} is not under {ALLOWED_INPUTS_ENV} ({where}) on this worker"
            )
        if not regular_file(real):
            raise PolicyViolation(
                f"input file {f!r} is not a regular file (a directory is never granted)"
            )
