"""`python -m bench` stopped by a `kill` (SIGTERM) leaves nothing behind: Python's default ended it at once, and
Azurite, the stand-ins, the measured child and the working directory stayed, running and on disk."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_a_killed_benchmark_stops_its_processes_and_removes_its_working_directory(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["--records", "3000", "--profiles", "none", "--scales", "", "--big-blob-mb", "0", "--burst-mb", "0",
            "--sdk-blobs", "0", "--cpu-runs", "1", "--skip-baseline", "--no-chart", "--out", str(tmp_path / "out")]
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    children: list[psutil.Process] = []
    try:
        assert process.stdout is not None
        said = []
        for line in process.stdout:  # until a measured child runs beside Azurite and the stand-ins
            said.append(line)
            if line.startswith("==> CPU round"):
                break
        assert said and said[-1].startswith("==> CPU round"), "".join(said)
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 3, children  # Azurite, the stand-ins, the measured child (and their own)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=180)
        assert process.returncode == 130, "".join(said) + rest
        assert "Interrupted" in rest, rest
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, [(p.pid, p.cmdline()) for p in alive]
        assert list(tmp.iterdir()) == [], list(tmp.iterdir())
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    finally:
        for leftover in [*children, psutil.Process(process.pid)] if process.poll() is None else children:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
