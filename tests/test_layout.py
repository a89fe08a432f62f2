"""Rules of the package's shape that a reader relies on (docs/LAYOUT.md; lint-imports
enforces the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scanfleet"


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_only_settings_reads_the_environment() -> None:
    readers = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in ("environ", "getenv", "environb"):
                readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")  # type: ignore[attr-defined]
    assert readers, "the check must see settings.py's own read"
    assert {r.split(":")[0] for r in readers} == {"settings.py"}, readers



def test_no_module_is_over_400_lines() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
