"""Results on disk: run ids, the run directory, atomic JSON files (SPEC §4).

`DIR/<run_id>/` holds `<scan_id>.report.json` (the auditor's raw report, byte for byte,
rewritten by scanfleet), `<scan_id>.json` (the target summary) and `run.json` (the run
summary). Files are written to a temporary name and renamed, so a reader never sees half a
file and a redelivered scan replaces its summary instead of adding a second one.

Results are private: directories 0700, files 0600, whatever the umask. For a volume shared
with a reader group, SCANFLEET_RESULTS_GROUP_READ=1 makes them 0750 / 0640 (group read,
never group or world write). The caller passes the `Modes` (`result_modes(settings...)`);
this module never reads the environment.

What it must never do: write a credential; follow a symlink or open a FIFO that the auditor
left where its report should be (`copy_report`).
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanfleet.core.errors import BadInput

RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
_COPY_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Modes:
    """The permission bits of result directories and files."""

    directory: int = 0o700
    file: int = 0o600


PRIVATE = Modes()
GROUP_READ = Modes(0o750, 0o640)


def result_modes(group_read: bool) -> Modes:
    """0700/0600, or 0750/0640 with group read enabled (`Settings.results_group_read`)."""
    return GROUP_READ if group_read else PRIVATE


def make_dir(path: Path, modes: Modes = PRIVATE) -> None:
    """Create `path` (and missing parents) with the results' directory mode.

    A directory this call creates gets the mode; an existing `path` is set to it too (a
    run directory made by an older version); existing parents are left as they are.
    """
    dir_mode = modes.directory
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    for p in (*missing, path):
        if stat.S_IMODE(p.stat().st_mode) != dir_mode:
            os.chmod(p, dir_mode)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_RE.fullmatch(run_id):
        raise BadInput(f"invalid run id {run_id!r}: expected YYYYMMDDTHHMMSSZ-xxxxxx")
    return run_id


def run_dir(results_dir: Path, run_id: str) -> Path:
    return results_dir / check_run_id(run_id)


def report_path(directory: Path, scan_id: str) -> Path:
    return directory / f"{scan_id}.report.json"


def summary_path(directory: Path, scan_id: str) -> Path:
    return directory / f"{scan_id}.json"


def write_json(path: Path, data: Any, modes: Modes = PRIVATE) -> None:
    """Atomically write JSON (temp file in the same directory, then rename)."""
    make_dir(path.parent, modes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
        os.chmod(tmp, modes.file)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_report(source: Path, path: Path, modes: Modes = PRIVATE) -> None:
    """Rewrite the auditor's report at `source` to `path`, atomically, with the file mode.

    `source` lies in a directory the auditor could write: it must be a regular file with
    one link, opened without following a symlink and without blocking on a FIFO;
    otherwise ValueError.
    """
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"{source.name} cannot be opened ({e.strerror})") from e
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise ValueError(f"{source.name} is not a plain file")
        make_dir(path.parent, modes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := os.read(src, _COPY_CHUNK):
                    out.write(chunk)
            os.chmod(tmp, modes.file)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        os.close(src)


def read_json(path: Path) -> Any:
    with path.open() as f:
        return json.load(f)


def summary_files(directory: Path) -> Iterator[Path]:
    """Target summary files of a run directory (not reports, run.json or a sweep run's
    drift.json), sorted."""
    for p in sorted(directory.glob("*.json")):
        if p.name in ("run.json", "drift.json") or p.name.endswith(".report.json"):
            continue
        if p.name.startswith("."):
            continue
        yield p


def iter_summaries(directory: Path) -> Iterator[dict[str, Any]]:
    """Stream the target summaries of a run, one parsed file at a time."""
    for p in summary_files(directory):
        data = read_json(p)
        if isinstance(data, dict):
            yield data
