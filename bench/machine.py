"""The machine a run came from."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def source_version() -> str:
    """The commit the measured code is at (``+changes`` when the checkout differs from it): results from an
    older version would otherwise pass for the current one's."""
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                                check=True, timeout=30).stdout.strip()  # fmt: skip
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "irm_connector", "function_app.py", "host.json", "bench",
             "standins", ":!bench/results"],
            cwd=repo, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + (" +changes" if changed else "")


def machine_info() -> dict[str, Any]:
    import psutil

    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "os": f"{platform.system()} {platform.release()}",
        "source": source_version(),
    }
