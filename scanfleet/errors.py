"""The error tree of scanfleet. Every error a caller can act on is one of these.

    ScanfleetError
    ├── BadInput                 exit 2, raised before anything is created or queued
    │   ├── ThresholdFileError   a threshold / fleet-threshold file is malformed
    │   └── SweepsFileError      a sweeps file is malformed
    └── ScanError                one target could not be scanned; `kind` goes to error.kind
        ├── TargetNotFound       target_not_found
        ├── ClusterForbidden     forbidden
        ├── ClusterApiError      api_error
        │   └── ClusterUnavailable   api_error, retryable (connection, 5xx, 429 after retries)
        ├── AuditorMissing       auditor_missing
        ├── SandboxUnavailable   sandbox_unavailable (no Landlock, or a policy refused)
        ├── AuditorFailed        auditor_exit
        ├── ScanTimeout          timeout
        ├── InvalidReport        invalid_report
        ├── ScanInterrupted      interrupted
        └── Rejected             rejected: a worker refused the plan (policy.py)

Messages say what failed and on which target; they never carry a token, a kubeconfig or a
whole API payload. Library exceptions are wrapped at the adapter (`raise ... from e`).
"""

from __future__ import annotations


class ScanfleetError(Exception):
    """Root of every scanfleet error."""


class BadInput(ScanfleetError):
    """Invalid user input; nothing has been created or queued (exit code 2)."""


class ThresholdFileError(BadInput):
    """A threshold or fleet-threshold file is invalid."""


class SweepsFileError(BadInput):
    """A sweeps file is invalid."""


class ScanError(ScanfleetError):
    """A scan of one target could not complete. `kind` is the result file's error.kind."""

    kind = "api_error"


class TargetNotFound(ScanError):
    kind = "target_not_found"


class ClusterForbidden(ScanError):
    kind = "forbidden"


class ClusterApiError(ScanError):
    kind = "api_error"


class ClusterUnavailable(ClusterApiError):
    """The API could not be reached or kept failing after retries; worth retrying later."""


class AuditorMissing(ScanError):
    kind = "auditor_missing"


class SandboxUnavailable(ScanError):
    """The auditor sandbox cannot be applied here; the auditor was not started."""

    kind = "sandbox_unavailable"


class AuditorFailed(ScanError):
    kind = "auditor_exit"


class ScanTimeout(ScanError):
    kind = "timeout"


class InvalidReport(ScanError):
    kind = "invalid_report"


class ScanInterrupted(ScanError):
    kind = "interrupted"


class Rejected(ScanError):
    """A worker refused to run what the plan (read from Redis) asked for: nothing ran."""

    kind = "rejected"


ERROR_KINDS = (
    "target_not_found",
    "forbidden",
    "api_error",
    "auditor_missing",
    "sandbox_unavailable",
    "auditor_exit",
    "timeout",
    "invalid_report",
    "interrupted",
    "rejected",
)
