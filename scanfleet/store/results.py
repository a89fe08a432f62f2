"""Where results live: a directory (the default) or an object store (`s3://bucket/prefix`).

One layout whatever the backend (SPEC §4): `<run_id>/<scan_id>.report.json`,
`<run_id>/<scan_id>.json`, `<run_id>/run.json`, `<run_id>/drift.json`. Every reader and
writer of results goes through a `ResultsStore`, chosen from SCANFLEET_RESULTS_DIR (or
`--results-dir`/`--output`) by `open_results`:

- `LocalResults`: the directory of `store.files` (atomic renames, the `files.Modes` the
  settings ask for: 0700/0600, or 0750/0640 with SCANFLEET_RESULTS_GROUP_READ);
- `S3Results` (`store.s3results`): one whole PUT per object (never a multipart half), the
  bucket's default private ACL, credentials from the client library's default chain. Its
  client library is imported only when an `s3://` location is opened, so commands on local
  results never pay for it.

A scan's auditor writes its report into a local directory (`staging`); `publish` then puts
it in place: for a directory that is the run directory itself (nothing to move), for an
object store a private scratch directory, uploaded and removed.

Errors: a refused or timed-out write raises `ResultsUnwritable` (an error kind of the
target's result); a refused read `ResultsUnavailable`; a missing object FileNotFoundError.
Messages never carry a credential (the location is printed without any).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from scanfleet.core.errors import BadInput, ResultsUnavailable
from scanfleet.core.policy import PolicyViolation
from scanfleet.core.settings import Settings
from scanfleet.store import files

S3_SCHEME = "s3://"
RUN_FILE = "run.json"
RUN_FILE_READERS = 8
"""run.json reads in flight at once when listing runs (`list_runs`)."""


class ResultsStore(Protocol):
    """The results of every run, by run id and object name (`<scan_id>.json`, ...)."""

    location: str
    """Where, for messages and Redis (no credential): a resolved path or `s3://b/prefix`."""

    def staging(self, run_id: str) -> Path:
        """A local directory where a scan of this run may write its report."""
        ...

    def publish(self, run_id: str, name: str, path: Path) -> None:
        """Put the staged file `path` in place as `name` (ResultsUnwritable)."""
        ...

    def write_json(self, run_id: str, name: str, data: Any) -> None:
        """Write one JSON object whole, replacing any previous one (ResultsUnwritable)."""
        ...

    def read_bytes(self, run_id: str, name: str) -> bytes:
        """FileNotFoundError if absent; ResultsUnavailable if it cannot be read."""
        ...

    def read_many(
        self, run_id: str, names: Iterable[str]
    ) -> Iterator[tuple[str, bytes | OSError | ResultsUnavailable]]:
        """(name, body) in the order of `names`; a read that failed gives its exception
        (FileNotFoundError for a missing object) instead of raising it. An object store
        reads ahead concurrently (a run's summaries at finalize, report and posture)."""
        ...

    def exists(self, run_id: str, name: str) -> bool: ...

    def names(self, run_id: str) -> list[str]:
        """The object names of a run, sorted ([] for an unknown run)."""
        ...

    def run_ids(self) -> list[str]:
        """The run ids that have results, sorted (oldest first)."""
        ...

    def delete_run(self, run_id: str) -> None:
        """Remove every object of a run (batched for an object store)."""
        ...


def is_object_store(location: str | Path) -> bool:
    return str(location).startswith(S3_SCHEME)


def open_results(location: str | Path | None, settings: Settings) -> ResultsStore:
    """The store at `location` (a directory or `s3://bucket/prefix`); None: the settings'."""
    if location is not None:
        raw = str(location)
    else:
        raw = settings.results_url or str(settings.results_dir)
    if is_object_store(raw):
        from scanfleet.store.s3results import S3Results  # the S3 client only when needed

        return S3Results.from_url(raw, endpoint=settings.s3_endpoint, timeout=settings.s3_timeout)
    if "://" in raw:
        raise BadInput(f"results location {raw!r}: only a directory or s3://bucket/prefix")
    return LocalResults(Path(raw), files.result_modes(settings.results_group_read))


def as_results(value: ResultsStore | Path, modes: files.Modes = files.PRIVATE) -> ResultsStore:
    """A store as it is; a directory (callers and tests that pass a Path) as LocalResults
    with these file modes."""
    return LocalResults(value, modes) if isinstance(value, Path) else value


def within(requested: str, root: str) -> bool:
    """`requested` is `root` or lies under it (both locations as `ResultsStore.location`)."""
    if is_object_store(requested) != is_object_store(root):
        return False
    if is_object_store(root):
        return requested.rstrip("/") == root.rstrip("/") or requested.startswith(
            root.rstrip("/") + "/"
        )
    return Path(requested).resolve().is_relative_to(Path(root).resolve())


def check_results_location(
    requested: str | None, own: ResultsStore, settings: Settings
) -> ResultsStore:
    """The store a run names (its submitter's location), if it lies within the worker's
    own (`own`, from SCANFLEET_RESULTS_DIR); else PolicyViolation (see core.policy)."""
    if not requested or requested == own.location:
        return own
    if not within(requested, own.location):
        raise PolicyViolation(
            f"results location {requested!r} is outside this worker's "
            f"SCANFLEET_RESULTS_DIR {own.location!r}"
        )
    return open_results(requested, settings)


def run_exists(store: ResultsStore, run_id: str) -> bool:
    """The run is in the store: its directory (empty while its first scans run), or
    objects under its prefix (an object store has no empty directories)."""
    if isinstance(store, LocalResults):
        return store.run_path(run_id).is_dir()
    return bool(store.names(run_id))


def read_json(store: ResultsStore, run_id: str, name: str) -> Any:
    return json.loads(store.read_bytes(run_id, name))


def summary_names(names: Iterable[str]) -> list[str]:
    """Target summary names among a run's objects (not reports, not run.json), sorted."""
    return sorted(
        n
        for n in names
        if n.endswith(".json")
        and n not in (RUN_FILE, "drift.json")
        and not n.endswith(".report.json")
        and not n.startswith(".")
    )


def iter_summaries(store: ResultsStore, run_id: str) -> Iterator[dict[str, Any]]:
    """Stream the target summaries of a run, one parsed object at a time."""
    for _name, body in store.read_many(run_id, summary_names(store.names(run_id))):
        if isinstance(body, FileNotFoundError):  # pruned or replaced meanwhile
            continue
        if isinstance(body, Exception):
            raise body
        data = json.loads(body)
        if isinstance(data, dict):
            yield data


class LocalResults:
    """Results in a directory (`store.files`): atomic renames, `modes` on every directory
    and file it writes (`files.result_modes`)."""

    def __init__(self, root: Path, modes: files.Modes = files.PRIVATE) -> None:
        self.root = root
        self.modes = modes
        self.location = str(root.resolve())

    def run_path(self, run_id: str) -> Path:
        return files.run_dir(self.root, run_id)

    def staging(self, run_id: str) -> Path:
        d = self.run_path(run_id)
        files.make_dir(d, self.modes)
        return d

    def publish(self, run_id: str, name: str, path: Path) -> None:
        target = self.run_path(run_id) / name
        if path.resolve() != target.resolve():
            files.copy_report(path, target, self.modes)

    def write_json(self, run_id: str, name: str, data: Any) -> None:
        files.write_json(self.run_path(run_id) / name, data, self.modes)

    def read_bytes(self, run_id: str, name: str) -> bytes:
        return (self.run_path(run_id) / name).read_bytes()

    def read_many(
        self, run_id: str, names: Iterable[str]
    ) -> Iterator[tuple[str, bytes | OSError | ResultsUnavailable]]:
        for name in names:
            try:
                yield name, self.read_bytes(run_id, name)
            except OSError as e:
                yield name, e

    def exists(self, run_id: str, name: str) -> bool:
        return (self.run_path(run_id) / name).is_file()

    def names(self, run_id: str) -> list[str]:
        d = self.run_path(run_id)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if files.RUN_ID_RE.fullmatch(p.name) and p.is_dir() and not p.is_symlink()
        )

    def delete_run(self, run_id: str) -> None:
        shutil.rmtree(self.run_path(run_id))


def latest_run_id(results: ResultsStore) -> str | None:
    """The newest run id in the store (what `latest` names on the command line)."""
    ids = results.run_ids()
    return ids[-1] if ids else None


def list_runs(results: ResultsStore) -> list[dict[str, Any]]:
    """One row per run, newest first: run_id, source, created_at, state ("finished" once
    run.json is written, else "unfinished": running, or stopped before finishing;
    "unreadable"), targets (total), compliance and exit_code (None until finished).
    An object store reads the runs' run.json files with its read-ahead."""
    ids = list(reversed(results.run_ids()))
    bodies = _run_files(results, ids)
    rows: list[dict[str, Any]] = []
    for run_id in ids:
        row: dict[str, Any] = {
            "run_id": run_id,
            "source": None,
            "created_at": _created(run_id),
            "state": "unfinished",
            "targets": None,
            "compliance": None,
            "exit_code": None,
        }
        body = bodies.get(run_id)
        run: Any = None
        if isinstance(body, FileNotFoundError) or body is None:
            pass
        elif isinstance(body, Exception):
            row["state"] = "unreadable"
        else:
            try:
                run = json.loads(body)
            except ValueError:
                row["state"] = "unreadable"
        if isinstance(run, dict):
            targets = run.get("targets")
            row.update(
                source=run.get("source"),
                created_at=run.get("created_at"),
                state="finished",
                targets=targets.get("total") if isinstance(targets, dict) else None,
                compliance=run.get("compliance"),
                exit_code=run.get("exit_code"),
            )
        rows.append(row)
    return rows


def _run_files(
    results: ResultsStore, run_ids: list[str]
) -> dict[str, bytes | OSError | ResultsUnavailable]:
    """Each run's run.json body (or the error reading it), a few reads at a time: an
    object store's `runs` is not one round trip after the other."""

    def one(run_id: str) -> bytes | OSError | ResultsUnavailable:
        try:
            return results.read_bytes(run_id, RUN_FILE)
        except (OSError, ResultsUnavailable) as e:
            return e

    with ThreadPoolExecutor(max_workers=RUN_FILE_READERS) as pool:
        return dict(zip(run_ids, pool.map(one, run_ids), strict=True))


def _created(run_id: str) -> str:
    """The creation time a run id carries (YYYYMMDDTHHMMSSZ-...), RFC 3339."""
    d = run_id
    return f"{d[0:4]}-{d[4:6]}-{d[6:8]}T{d[9:11]}:{d[11:13]}:{d[13:15]}Z"
