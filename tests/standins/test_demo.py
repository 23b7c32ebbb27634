"""The Quick start demo (``scripts/demo.sh`` runs ``python -m standins.demo``), end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.usefixtures("clean_environment")
def test_demo_runs_the_quick_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "standins.demo", "--records", "2000", "--out", str(tmp_path / "demo")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every alert exactly once: yes" in done.stdout
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["rows"]["Custom-IRMAlerts"] > 0
