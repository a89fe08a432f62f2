"""A target summary (SPEC §6) built from a few controls, for the judging and store tests."""

from __future__ import annotations

from typing import Any

from scanfleet.judging.report import Control, Counts, control_ids


def summary(
    n: int,
    controls: list[Control] | None = None,
    *,
    context: str = "c1",
    namespace: str = "ns",
    image: str | None = "img:1",
    passed: bool | None = True,
    error: dict[str, str] | None = None,
    covered_by: str | None = None,
) -> dict[str, Any]:
    done = error is None
    controls = controls or []
    return {
        "scan_id": f"s{n:05d}",
        "run_id": "r",
        "target": {
            "context": context,
            "namespace": namespace,
            "pod": f"pod-{n:05d}",
            "container": "app",
            "image": image,
            "image_id": "sha256:abc",
        },
        "status": "completed" if done else "error",
        "error": error,
        "covered_by": covered_by,
        "counts": Counts.from_controls(controls).to_dict() if done else None,
        "compliance": Counts.from_controls(controls).compliance if done else None,
        "threshold": {"passed": passed if done else None, "failures": [] if passed else ["x"]},
        "cleanup": "complete",
        "controls": control_ids(controls) if done else None,
    }
