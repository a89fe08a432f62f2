"""The error tree of scanfleet, its result-file error kinds, and its exit codes.

    ScanfleetError
    ├── BadInput                 exit 2, raised before anything is created or queued
    │   ├── ThresholdFileError   a threshold / fleet-threshold file is malformed
    │   └── SweepsFileError      a sweeps file is malformed
    ├── ScanError                one target could not be scanned; `kind` goes to error.kind
    │   ├── TargetNotFound       target_not_found
    │   ├── ClusterForbidden     forbidden
    │   ├── ClusterApiError      api_error
    │   │   ├── ClusterUnavailable   api_error, retryable (connection, 5xx, 429 after retries)
    │   │   ├── ObjectChanged        api_error: a delete's UID precondition failed (409)
    │   │   └── ForeignObject        api_error: a same-named object is not scanfleet's
    │   ├── AuditorMissing       auditor_missing
    │   ├── SandboxUnavailable   sandbox_unavailable (no Landlock, or a policy refused)
    │   ├── AuditorFailed        auditor_exit
    │   ├── ScanTimeout          timeout
    │   ├── InvalidReport        invalid_report
    │   ├── TargetChanged        target_changed (the pod was replaced during the scan)
    │   ├── ScanInterrupted      interrupted
    │   ├── Rejected             rejected: a worker refused the plan (policy.py)
    │   │   └── ProfileMismatch  rejected: this worker's profile bytes differ from the run's
    │   │                        pinned sha256 (profiles.py)
    │   └── ProfileUnavailable   profile_unavailable: a URL profile could not be downloaded,
    │                            read or vendored (download.py, archives.py)
    └── FleetBusy                the fleet cannot take this scan right now (retryable)
        ├── StoreUnavailable     Redis could not be reached (after the client's retries)
        └── NoSlot               the cluster is at its concurrency cap
            └── SlotBusy         this very scan holds a live lease elsewhere

Every leaf says its `kind` and whether it is `retryable`; the drivers decide retries from
those two attributes alone (see `clock.RETRY_DELAYS`). Messages say what failed and on
which target; they never carry a token, a kubeconfig or a whole API payload. Library
exceptions are wrapped at the adapter (`raise ... from e`). This module imports nothing.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorKind(StrEnum):
    """`error.kind` of a target summary (SPEC §4)."""

    TARGET_NOT_FOUND = "target_not_found"
    FORBIDDEN = "forbidden"
    API_ERROR = "api_error"
    AUDITOR_MISSING = "auditor_missing"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"
    AUDITOR_EXIT = "auditor_exit"
    TIMEOUT = "timeout"
    INVALID_REPORT = "invalid_report"
    INTERRUPTED = "interrupted"
    TARGET_CHANGED = "target_changed"
    REJECTED = "rejected"
    PROFILE_UNAVAILABLE = "profile_unavailable"
    RESULTS_UNWRITABLE = "results_unwritable"


class ExitCode(IntEnum):
    """Process exit codes (SPEC §5), the only definition."""

    OK = 0
    THRESHOLD = 1
    BAD_INPUT = 2
    SCAN_ERROR = 3


class ScanfleetError(Exception):
    """Root of every scanfleet error."""

    kind: str = "error"
    retryable: bool = False


class BadInput(ScanfleetError):
    """Invalid user input; nothing has been created or queued (exit code 2)."""

    kind = "bad_input"


class ThresholdFileError(BadInput):
    """A threshold or fleet-threshold file is invalid."""


class SweepsFileError(BadInput):
    """A sweeps file is invalid."""


class ScanError(ScanfleetError):
    """A scan of one target could not complete. Only its leaves are raised."""

    kind: ErrorKind

    def __init__(self, *args: object) -> None:
        if type(self) is ScanError:
            raise TypeError("raise a ScanError leaf, which says its kind")
        super().__init__(*args)


class TargetNotFound(ScanError):
    kind = ErrorKind.TARGET_NOT_FOUND


class ClusterForbidden(ScanError):
    kind = ErrorKind.FORBIDDEN


class ClusterApiError(ScanError):
    kind = ErrorKind.API_ERROR


class ClusterUnavailable(ClusterApiError):
    """The API could not be reached or kept failing after retries; worth retrying later."""

    retryable = True


class ObjectChanged(ClusterApiError):
    """A delete's UID precondition failed: another object has the name now (HTTP 409)."""


class ForeignObject(ClusterApiError):
    """An object of a scan's name exists but is not scanfleet's: it is never deleted."""


class AuditorMissing(ScanError):
    kind = ErrorKind.AUDITOR_MISSING


class SandboxUnavailable(ScanError):
    """The auditor sandbox cannot be applied here; the auditor was not started."""

    kind = ErrorKind.SANDBOX_UNAVAILABLE


class AuditorFailed(ScanError):
    kind = ErrorKind.AUDITOR_EXIT


class ScanTimeout(ScanError):
    kind = ErrorKind.TIMEOUT


class InvalidReport(ScanError):
    kind = ErrorKind.INVALID_REPORT


class ScanInterrupted(ScanError):
    kind = ErrorKind.INTERRUPTED


class TargetChanged(ScanError):
    """The pod was deleted or replaced (another UID under its name) while it was scanned."""

    kind = ErrorKind.TARGET_CHANGED


class Rejected(ScanError):
    """A worker refused to run what the plan (read from Redis) asked for: nothing ran."""

    kind = ErrorKind.REJECTED


class ProfileMismatch(Rejected):
    """This worker fetched other bytes than the run's pinned digest: nothing runs."""

    def __init__(self, message: str, pinned: str | None = None) -> None:
        super().__init__(message)
        self.pinned = pinned
        """The run's pinned sha256 (what its summaries record)."""


class ProfileUnavailable(ScanError):
    """A URL profile could not be downloaded, read as an archive or vendored. `scan` and
    `submit --local` turn it into BadInput (exit 2); on a worker it is the target's result."""

    kind = ErrorKind.PROFILE_UNAVAILABLE


class FleetBusy(ScanfleetError):
    """The fleet cannot take this scan now; the scan itself has not started."""

    retryable = True


class StoreUnavailable(FleetBusy):
    """Redis could not be reached (after retries)."""

    kind = "store_unavailable"


class NoSlot(FleetBusy):
    """The cluster is at its concurrency cap right now; try again shortly."""

    kind = "no_slot"


class SlotBusy(NoSlot):
    """This very scan holds a live lease: another delivery of it is running."""

    kind = "slot_busy"


class ResultsUnwritable(ScanError):
    """The results store refused a write (permission denied, timed out after its retries):
    the target's result is an error of this kind; the run still finalizes."""

    kind = ErrorKind.RESULTS_UNWRITABLE


class ResultsUnavailable(ScanfleetError):
    """The results store could not be read (permission denied, unreachable, timed out)."""

    kind = "results_unavailable"
