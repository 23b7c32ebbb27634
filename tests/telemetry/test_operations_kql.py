"""The KQL of docs/operations.md: the Sentinel queries bind against the declared tables; the Application
Insights ones parse (their tables, customMetrics and the like, are not in the project's schemas)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_operations_kql() -> None:
    node = shutil.which("node")
    assert node is not None and (REPO / "node_modules").is_dir(), "node and `npm ci` are needed for the KQL checker"
    section = (REPO / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```kusto\n(.*?)```", section, re.S)
    assert len(blocks) >= 9
    args = [arg for i, block in enumerate(blocks) for arg in ("--query", f"q{i}={block}")]
    proc = subprocess.run(
        [node, str(REPO / "tools" / "kql" / "check.mjs"), "--json", "--only-extra", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(proc.stdout)["report"]
    assert len(report) == len(blocks)
    app_insights = {"customMetrics", "traces", "requests", "dependencies", "exceptions"}
    for entry, block in zip(report, blocks, strict=True):
        if "IRMConnectorHealth_CL" in block:
            assert entry["errors"] == [], (block, entry["errors"])
        else:
            assert all(e["code"] == "KS204" and e["snippet"] in app_insights for e in entry["errors"]), entry["errors"]
