"""The project's own checks: ruff over the code, mypy over app/ (the style guide's contract)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff():
    result = run("ruff", "check", "app", "model", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_app():
    result = run("mypy", "app", "--ignore-missing-imports")
    assert result.returncode == 0, result.stdout + result.stderr
