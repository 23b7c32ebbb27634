"""The KQL of README.md, docs/*.md and what the deployment hooks print: the Sentinel queries bind against the declared tables and functions;
the Application Insights ones parse (their tables, customMetrics and the like, are not in the project's
schemas)."""

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
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    blocks = [block for page in pages for block in re.findall(r"```(?:kusto|kql)\n(.*?)```", page.read_text(), re.S)]
    # and what the deployment hooks print for the operator to paste
    hooks = sorted((REPO / "scripts" / "hooks").glob("*.sh"))
    blocks += [block for hook in hooks for block in re.findall(r"<<'KQL'\n(.*?)^KQL$", hook.read_text(), re.S | re.M)]
    assert len(blocks) >= 11
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
        if any(re.search(rf"\b{table}\b", block) for table in app_insights):
            assert all(e["code"] == "KS204" and e["snippet"] in app_insights for e in entry["errors"]), entry["errors"]
        else:
            assert entry["errors"] == [], (block, entry["errors"])
