"""Fixtures of the infrastructure checks: locate checkov and node, run checkov once per session.

Tools are required, never optional: a missing tool FAILS the test with a message saying how to install it.
- checkov: env CHECKOV_BIN, else <repo>/.venv-checkov/bin/checkov
  (python3.11 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov;
  its own venv because it pins packaging<24).
- node (>= 20): env NODE_BIN, else `node` on PATH; plus `npm ci` for @kusto/language-service-next and yaml.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any, cast

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
CHECKOV_INSTALL_HINT = (
    "checkov is required for the Bicep checks. Install it in its own venv (it pins packaging<24): "
    "`python3.11 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov` in the repo root, "
    "or point CHECKOV_BIN at an existing checkov executable."
)


def bicep_files(root: Path = INFRA) -> list[Path]:
    return sorted(root.rglob("*.bicep"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def checkov_bin() -> Path:
    env = os.environ.get("CHECKOV_BIN")
    candidate = Path(env) if env else REPO_ROOT / ".venv-checkov" / "bin" / "checkov"
    if not candidate.is_file() or not os.access(candidate, os.X_OK):
        where = f"CHECKOV_BIN={env}" if env else str(candidate)
        pytest.fail(f"checkov not found ({where}). {CHECKOV_INSTALL_HINT}", pytrace=False)
    return candidate


@pytest.fixture(scope="session")
def checkov_python(checkov_bin: Path) -> Path:
    """The interpreter checkov runs on (for parsing with its own pycep)."""
    first = checkov_bin.read_text(errors="replace").splitlines()[0] if checkov_bin.stat().st_size else ""
    candidates = [checkov_bin.parent / "python", checkov_bin.parent / "python3"]
    if first.startswith("#!"):
        candidates.insert(0, Path(first[2:].strip().split()[0]))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    pytest.fail(f"cannot find the Python interpreter of {checkov_bin}. {CHECKOV_INSTALL_HINT}", pytrace=False)


def run_checkov(checkov_bin: Path, directory: Path) -> dict[str, Any]:
    """Run checkov's Bicep framework on a directory and return its JSON report (a dict)."""
    proc = subprocess.run(
        [str(checkov_bin), "-d", str(directory), "--framework", "bicep", "--skip-download", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        check=False,
    )
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(
            f"checkov printed no JSON report (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    if isinstance(report, list):  # several frameworks: keep bicep
        report = next((r for r in report if r.get("check_type") == "bicep"), {})
    if report.get("check_type") != "bicep":
        pytest.fail(f"checkov produced no bicep report for {directory}: {proc.stdout[-2000:]}")
    return cast("dict[str, Any]", report)


@pytest.fixture(scope="session")
def checkov_report(checkov_bin: Path) -> dict[str, Any]:
    return run_checkov(checkov_bin, INFRA)


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = os.environ.get("NODE_BIN") or shutil.which("node")
    if not node:
        pytest.fail("node (>= 20) is required for the KQL checks: install Node.js 20 and run `npm ci`.", pytrace=False)
    if not (REPO_ROOT / "node_modules" / "@kusto" / "language-service-next").is_dir():
        pytest.fail("@kusto/language-service-next is missing: run `npm ci` in the repo root.", pytrace=False)
    return node


def run_kql_check(node: str, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = subprocess.run(
        [node, str(REPO_ROOT / "tools" / "kql" / "check.mjs"), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    return proc.returncode, report, proc.stderr


@cache
def _content(node: str, root: str) -> dict[str, Any]:
    proc = subprocess.run(
        [node, str(REPO_ROOT / "tools" / "kql" / "sentinel-content.mjs"), "--root", root],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"the Sentinel content does not load:\n{proc.stderr}"
    content: dict[str, Any] = json.loads(proc.stdout)
    return content


def sentinel_content(node: str, root: Path = REPO_ROOT) -> dict[str, Any]:
    """The files under sentinel/ as {kind: [{file, doc}]}, read by tools/kql/sentinel-content.mjs (the same YAML
    reader the KQL check uses). Kinds: analytics, hunting, parsers (YAML), workbooks, dataconnectors (JSON)."""
    return copy.deepcopy(_content(node, str(root)))
