"""Rules of the package's shape that a reader relies on (docs/LAYOUT.md; lint-imports
enforces the layers)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import ROOT

PACKAGE = ROOT / "scanfleet"


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
    assert {r.split(":")[0] for r in readers} == {"core/settings.py"}, readers


def test_settings_hands_out_a_snapshot_never_the_live_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing below settings can read the environment through it: no function of
    settings.py returns `os.environ`, and `Settings.environment` is a copy."""
    import os

    from scanfleet.core.settings import Settings

    tree = ast.parse((PACKAGE / "core" / "settings.py").read_text())
    handed_out = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Return)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "environ"
    ]
    assert handed_out == []
    monkeypatch.setenv("SCANFLEET_LAYOUT_PROBE", "before")
    settings = Settings.from_env()
    monkeypatch.setenv("SCANFLEET_LAYOUT_PROBE", "after")
    assert settings.environment is not os.environ
    assert settings.environment["SCANFLEET_LAYOUT_PROBE"] == "before"
    assert "SCANFLEET_LAYOUT_PROBE" not in repr(settings)


def test_the_version_is_written_once() -> None:
    """pyproject.toml takes it from scanfleet.__version__; `scanfleet --version` reads the
    installed metadata, which setuptools built from it."""
    from importlib.metadata import version

    import scanfleet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    assert version("scanfleet") == scanfleet.__version__


def test_make_pre_commit_and_ci_run_the_same_linters() -> None:
    import yaml

    def recipe(target: str) -> list[str]:
        lines = (ROOT / "Makefile").read_text().splitlines()
        start = lines.index(f"{target}:") + 1
        body = []
        for line in lines[start:]:
            if not line.startswith("\t"):
                break
            body.append(line.strip().removeprefix("$(BIN)/"))
        return body

    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"][0]["hooks"]
    pre_commit = [h["entry"].removeprefix(".venv/bin/") for h in hooks]
    ci = (ROOT / ".ci" / "run").read_text().split("# Static checks")[1].split("\n\n")[0]
    ci_checks = [line.split("#")[0].strip() for line in ci.splitlines()[1:]]
    assert recipe("lint") == pre_commit == ci_checks
    assert recipe("test-fast") == ['python -m pytest -m "not slow"']


def test_every_module_lives_in_a_package() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"] or top == ["__init__.py"], top


def test_every_package_is_a_layer_of_the_import_contract() -> None:
    """A new package must be placed in the layers (lint-imports then covers its modules)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c.get("containers") == ["scanfleet"])
    named = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages == named


def test_every_package_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), init


def test_no_test_module_imports_another() -> None:
    """What tests share lives in tests/support: a test module imported by another runs its
    tests' module-level code twice and ties unrelated suites together."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[1] in {"support", ".node"}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("tests.") and not name.startswith("tests.support"):
                    offenders.append(f"{rel}: {name}")
    assert offenders == []
